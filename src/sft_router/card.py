"""Render the model and dataset cards from the Jinja templates, with numbers read from the run's files.

Usage: python -m sft_router.card --config recipes/tiny/router.yaml
       (writes runs/<name>/card/README.md and runs/<name>/card/dataset/README.md)
"""

from __future__ import annotations

import json
import os

from sft_router.config import parse_recipe
from sft_router.errors import UsageError, one_line_errors
from sft_router.run import library_versions, read_manifest, stage_output

HEADLINE = [
    ("exact_match_rate", "exact match"),
    ("tool_name_accuracy", "tool name acc."),
    ("average_argument_f1", "argument F1"),
    ("no_call_accuracy", "no-call acc."),
    ("json_valid_rate_strict", "JSON valid (strict)"),
    ("exact_match_rate_strict", "exact match (strict)"),
]
HYPERPARAMETERS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "max_length", "seed")  # fmt: skip


def namespace(recipe) -> str:
    return os.environ.get("HUB_NAMESPACE") or recipe.publish.hub_namespace or "your-namespace"


def repo_ids(recipe) -> dict[str, str]:
    ns = namespace(recipe)
    publish = recipe.publish
    return {"model": f"{ns}/{publish.model_repo}", "gguf": f"{ns}/{publish.gguf_repo}",
            "dataset": f"{ns}/{publish.dataset_repo}"}  # fmt: skip


def read_metrics(recipe) -> dict[str, dict]:
    """Metrics of every evaluated variant (baseline, finetuned, gguf ...) from runs/<name>/eval/."""
    eval_dir = recipe.stage_dir("eval")
    if not (eval_dir / "manifest.json").is_file():
        raise UsageError(f"no finished evaluation in {eval_dir}: run `make eval RECIPE={recipe.path}` first")
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(eval_dir.glob("*/metrics.json"))}


def metrics_table(metrics: dict[str, dict]) -> str:
    header = "| model | " + " | ".join(label for _, label in HEADLINE) + " | rows |"
    lines = [header, "|" + "---|" * (len(HEADLINE) + 2)]
    for name, values in metrics.items():
        cells = " | ".join(f"{values.get(key, float('nan')):.3f}" for key, _ in HEADLINE)
        lines.append(f"| {name} | {cells} | {values['total_samples']} |")
    return "\n".join(lines)


def hyperparameters_table(recipe) -> str:
    model = recipe.model
    rows = [(key, getattr(recipe.training, key)) for key in HYPERPARAMETERS]
    rows += [("lora_r", model.lora_r), ("lora_alpha", model.lora_alpha), ("lora_dropout", model.lora_dropout),
             ("lora_target_modules", ", ".join(model.lora_target_modules or []))]  # fmt: skip
    return "\n".join(["| hyperparameter | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def eval_results(recipe, metrics: dict):
    from huggingface_hub import EvalResult

    finetuned = metrics.get("finetuned", {})
    dataset_id = repo_ids(recipe)["dataset"]
    return [
        EvalResult(task_type="text-generation", dataset_type=dataset_id, dataset_name="tool routing (test split)",
                   dataset_split="test", metric_type=key, metric_name=label, metric_value=round(finetuned[key], 4))
        for key, label in HEADLINE if key in finetuned
    ]  # fmt: skip


def render_model_card(recipe, metrics: dict[str, dict]):
    from huggingface_hub import ModelCard, ModelCardData

    ids = repo_ids(recipe)
    data = ModelCardData(
        base_model=recipe.publish.base_model_id,
        datasets=[ids["dataset"]],
        license="gemma",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gemma3", "tool-calling", "function-calling", "router", "lora", "trl", "sft", "gguf"],
        language=["zh", "en"],
        model_name=ids["model"],
        eval_results=eval_results(recipe, metrics),
    )
    return ModelCard.from_template(
        data,
        template_path="model_card/template.md",
        repo_id=ids["model"],
        gguf_repo_id=ids["gguf"],
        base_model_id=recipe.publish.base_model_id,
        recipe_path=recipe.path.as_posix(),
        run_name=recipe.name,
        test_rows=next(iter(metrics.values()))["total_samples"] if metrics else 0,
        metrics_table=metrics_table(metrics),
        hyperparameters_table=hyperparameters_table(recipe),
        versions=", ".join(f"{k} {v}" for k, v in library_versions().items()),
    )


def render_dataset_card(recipe):
    """The dataset card: every count on it is read from the dataset manifest, the tool list from its catalog."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from sft_router.data import load_catalog

    manifest = read_manifest(recipe.stage_dir("dataset"))
    if manifest is None or "mix" not in manifest:
        raise UsageError(f"no dataset in {recipe.stage_dir('dataset')}: run `make data RECIPE={recipe.path}` first")
    catalog = load_catalog(manifest["catalog"])
    data = DatasetCardData(license="apache-2.0", language=["zh", "en"], task_categories=["text-generation"],
                           size_categories=[_size_category(sum(manifest["rows"].values()))],
                           tags=["tool-calling", "function-calling", "synthetic", "router"],
                           pretty_name="Tool routing scenarios")  # fmt: skip
    return DatasetCard.from_template(
        data,
        template_path="dataset_card/template.md",
        repo_id=repo_ids(recipe)["dataset"],
        recipe_path=recipe.path.as_posix(),
        seed=manifest["dataset_seed"],
        tool_count=manifest["tools"],
        domain_count=len(manifest["domains"]),
        domains=", ".join(manifest["domains"]),
        image_marker=manifest["image_marker"],
        leaks=manifest["leaks"],
        no_call_share=manifest["no_call_share"],
        splits_table=dataset_splits_table(manifest),
        language_table=dataset_language_table(manifest),
        tools_table=dataset_tools_table(manifest, catalog),
        content_sha256=manifest["content_sha256"],
    )


def _size_category(rows: int) -> str:
    return "n<1K" if rows < 1_000 else "1K<n<10K" if rows < 10_000 else "10K<n<100K"


def dataset_splits_table(manifest: dict) -> str:
    from sft_router.data import KINDS

    header = "| split | rows | " + " | ".join(KINDS) + " | no-call share | unseen values |"
    lines = [header, "|" + "---|" * (len(KINDS) + 4)]
    for split, rows in manifest["rows"].items():
        mix = manifest["mix"][split]
        kinds = " | ".join(str(mix["kind"][kind]) for kind in KINDS)
        lines.append(f"| {split} | {rows} | {kinds} | {mix['no_call_share']:.2f} | {mix['rows_with_unseen_values']} |")
    return "\n".join(lines)


def dataset_language_table(manifest: dict) -> str:
    lines = ["| split | zh | en |", "|---|---|---|"]
    for split, mix in manifest["mix"].items():
        lines.append(f"| {split} | {mix['lang']['zh']} | {mix['lang']['en']} |")
    return "\n".join(lines)


def dataset_tools_table(manifest: dict, catalog) -> str:
    splits = list(manifest["mix"])
    lines = ["| tool | domain | required | optional | description | " + " | ".join(splits) + " |",
             "|" + "---|" * (5 + len(splits))]  # fmt: skip
    for name, tool in catalog.tools.items():
        required = tool["parameters"].get("required", [])
        optional = [arg for arg in tool["parameters"].get("properties", {}) if arg not in required]
        counts = " | ".join(str(manifest["mix"][split]["tool"].get(name, 0)) for split in splits)
        lines.append(f"| `{name}` | {tool['domain']} | {', '.join(required)} | {', '.join(optional)} | "
                     f"{tool['description']} | {counts} |")  # fmt: skip
    return "\n".join(lines)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    (recipe,) = parse_recipe(argv)
    metrics = read_metrics(recipe)
    model_card, dataset_card = render_model_card(recipe, metrics), render_dataset_card(recipe)
    with stage_output(recipe, "card") as (out, _):
        model_card.save(out / "README.md")
        (out / "dataset").mkdir()
        dataset_card.save(out / "dataset" / "README.md")
    print(f"card: {recipe.stage_dir('card') / 'README.md'}")


if __name__ == "__main__":
    main()
