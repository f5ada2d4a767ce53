"""Card rendering shared by the card and publish stages: the model and dataset cards from the Jinja templates,
with numbers read from the run's files.

The model card (model_card/template.md) and the GGUF card (model_card/gguf.md) carry the run's metrics as a table
and as `model-index`, and embed the run's figures, copied beside each card so that the card folder is what the
repo receives.

Usage: from sft_router.release.card_rendering import render_model_card  (the stage is `python -m sft_router.card`)
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sft_router.core.config import repo_ids
from sft_router.core.errors import UsageError
from sft_router.core.run_folder import library_versions, read_manifest
from sft_router.datagen.catalog import load_catalog
from sft_router.evaluation.markdown_tables import markdown_table, number_cell, span_cell
from sft_router.evaluation.scoring import interval

HEADLINE = [
    ("exact_match_rate", "exact match"),
    ("tool_name_accuracy", "tool name acc."),
    ("average_argument_f1", "argument F1"),
    ("no_call_accuracy", "no-call acc."),
    ("json_valid_rate_strict", "JSON valid (strict)"),
    ("exact_match_rate_strict", "exact match (strict)"),
]
HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "max_length",
    "seed",
)


def read_metrics(recipe) -> dict[str, dict]:
    """Metrics of every evaluated variant (baseline, finetuned, gguf ...) from runs/<name>/eval/."""
    eval_dir = recipe.stage_dir("eval")
    if not (eval_dir / "manifest.json").is_file():
        raise UsageError(f"no finished evaluation in {eval_dir}: run `make eval RECIPE={recipe.path}` first")
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(eval_dir.glob("*/metrics.json"))}


def metrics_table(metrics: dict[str, dict]) -> str:
    """The headline figures alone (their intervals go in `intervals_table`, so this table stays narrow)."""
    rows = [
        [name, *(number_cell(values.get(key)) for key, _ in HEADLINE), values.get("total_samples", "-")]
        for name, values in metrics.items()
    ]
    return markdown_table(["model", *(label for _, label in HEADLINE), "rows"], rows)


def intervals_table(metrics: dict[str, dict]) -> str:
    """Bootstrap 95% intervals of the headline metrics that some metrics file carries intervals for ("" if none)."""
    keys = [(key, label) for key, label in HEADLINE if any(interval(v, key) for v in metrics.values())]
    if not keys:
        return ""
    rows = [[name, *(span_cell(interval(values, key)) for key, _ in keys)] for name, values in metrics.items()]
    return markdown_table(["model", *(label for _, label in keys)], rows)


def splits_table(recipe) -> str:
    """Exact match of every variant on every evaluated split, from the eval manifest."""
    return split_exact_match_table((read_manifest(recipe.stage_dir("eval")) or {}).get("split_metrics") or {})


def split_exact_match_table(by_split: dict[str, dict[str, dict]]) -> str:
    """One row per split, one column per variant (an eval manifest's `split_metrics`); "" for the test split alone."""
    if len(by_split) < 2:
        return ""
    variants = list(dict.fromkeys(name for metrics in by_split.values() for name in metrics))
    rows = [
        [split, next(iter(metrics.values()))["total_samples"]]
        + [number_cell(metrics.get(v, {}).get("exact_match_rate")) for v in variants]
        for split, metrics in by_split.items()
    ]
    return markdown_table(["split", "rows", *variants], rows)


def hyperparameters_table(recipe) -> str:
    model = recipe.model
    values = [getattr(recipe.training, key) for key in HYPERPARAMETERS]
    rows = [(key, getattr(value, "value", value)) for key, value in zip(HYPERPARAMETERS, values)]  # enums by value
    rows += [
        ("lora_r", model.lora_r),
        ("lora_alpha", model.lora_alpha),
        ("lora_dropout", model.lora_dropout),
        ("lora_target_modules", ", ".join(model.lora_target_modules or [])),
    ]
    return markdown_table(["hyperparameter", "value"], rows)


def eval_results(recipe, values: dict, label_suffix: str = ""):
    """The model-index entries of one variant's metrics, so the Hub shows them on the model page."""
    from huggingface_hub import EvalResult

    dataset_id = repo_ids(recipe)["dataset"]
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=dataset_id,
            dataset_name="tool routing (test split)",
            dataset_split="test",
            metric_type=key,
            metric_name=label + label_suffix,
            metric_value=round(values[key], 4),
        )
        for key, label in HEADLINE
        if key in values
    ]


def bfcl_eval_results(recipe, runtime: str = ""):
    """One model-index entry per BFCL category the fine-tuned model was scored on (dataset "BFCL v4", split = the
    category); none unless it was scored under `runtime` (a prefix: "llama.cpp" for the GGUF's card)."""
    from huggingface_hub import EvalResult

    from sft_router.evaluation.bfcl import BFCL_DATASET_ID, read_bfcl

    metrics = read_bfcl(recipe.stage_dir("eval")).get("finetuned")
    if not metrics or not metrics["runtime"].startswith(runtime):
        return []
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=BFCL_DATASET_ID,
            dataset_name="BFCL v4",
            dataset_split=category,
            metric_type="accuracy",
            metric_name=f"BFCL {category} accuracy ({metrics['runtime']})",
            metric_value=round(scores["accuracy"], 4),
        )
        for category, scores in metrics["categories"].items()
    ]


def bfcl_card_values(recipe) -> dict:
    """What model_card/partials/bfcl.md shows: the table ("" when BFCL was not run, and the cards leave the section
    out), the sample size and the cited model."""
    from sft_router.evaluation.bfcl import REFERENCE_MODEL, bfcl_table, read_bfcl

    results = read_bfcl(recipe.stage_dir("eval"))
    return {
        "bfcl_table": bfcl_table(results) if results else "",
        "bfcl_limit": recipe.eval.bfcl_limit,
        "bfcl_reference": REFERENCE_MODEL,
    }


def card_images(recipe) -> dict[str, Path]:
    """The figures a card embeds, by their name in the repo, when the run made them."""
    sources = {
        "comparison.png": recipe.stage_dir("eval") / "comparison.png",
        "training_curves.png": recipe.stage_dir("adapter") / "training_curves.png",
        "bfcl.png": recipe.stage_dir("eval") / "bfcl" / "bfcl.png",
    }
    return {name: path for name, path in sources.items() if path.is_file()}


def save_card(recipe, card, folder: Path) -> None:
    """README.md and the figures it embeds, side by side as in the repo it describes."""
    folder.mkdir(parents=True, exist_ok=True)
    card.save(folder / "README.md")
    for name, source in card_images(recipe).items():
        if f"]({name})" in card.text:
            shutil.copyfile(source, folder / name)


SERVE_URL = "http://127.0.0.1:8000/v1"  # `make serve`'s default address


def base_model_text(recipe) -> str:
    """What the run was fine-tuned from, in words: a built-in base says how it was made, a Hub base gives its id."""
    from sft_router.modeling.base_models import ABOUT

    name, hub_id = recipe.model.model_name_or_path, recipe.publish.base_model_id
    if name not in ABOUT:
        return f"`{hub_id or name}`"
    return f"`{name}`, {ABOUT[name]}" + (f" (on the Hub: `{hub_id}`)" if hub_id else "")


def card_family(recipe):
    """The family of the merged model the cards describe (families.py): its licence, tag, terms and turns."""
    from sft_router.modeling.families import family_of

    merged = recipe.stage_dir("merged")
    if not (merged / "config.json").is_file():
        raise UsageError(f"no merged model at {merged}: run `make merge RECIPE={recipe.path}` first")
    return family_of(merged)


def _shared_template_values(recipe, metrics: dict[str, dict]) -> dict:
    from sft_router.core.router_format import published_system_prompt

    ids = repo_ids(recipe)
    gguf_manifest = read_manifest(recipe.stage_dir("gguf")) or {}
    return {
        "model_repo_id": ids["model"],
        "gguf_repo_id": ids["gguf"],
        "dataset_repo_id": ids["dataset"],
        "base_model": base_model_text(recipe),
        **family_values(card_family(recipe)),
        "recipe_path": recipe.path.as_posix(),
        "run_name": recipe.name,
        "test_rows": next(iter(metrics.values()))["total_samples"] if metrics else 0,
        "metrics_table": metrics_table(metrics),
        "intervals_table": intervals_table(metrics),
        "splits_table": splits_table(recipe),
        "hyperparameters_table": hyperparameters_table(recipe),
        "images": sorted(card_images(recipe)),
        "system_prompt": published_system_prompt(recipe.data, load_catalog(recipe.data.catalog).tools.values()),
        "llama_cpp_commit": gguf_manifest.get("llama_cpp_commit"),
        "llama_cpp_python": gguf_manifest.get("llama_cpp_python"),
        "n_ctx": gguf_manifest.get("n_ctx"),
        "adapter_base": adapter_base(recipe),
        "local_dir": ids["gguf"].split("/")[-1],
        "serve_url": SERVE_URL,
        "versions": ", ".join(f"{k} {v}" for k, v in library_versions().items()),
        **bfcl_card_values(recipe),
    }


def family_values(family) -> dict:
    """The template values that name the base's family: its terms, and its prompt format (a partial per family)."""
    turns = Path("model_card/partials/turns") / f"{family.name}.md"
    return {
        "family_name": family.display_name,
        "terms_name": family.terms_name,
        "terms_url": family.terms_url,
        "prompt_turns": turns.read_text().rstrip("\n"),
    }


def model_card_data(recipe, metrics: dict[str, dict] | None = None):
    """The model repo's card metadata; also the README the GGUF converter reads its `general.*` metadata from."""
    from huggingface_hub import ModelCardData

    ids = repo_ids(recipe)
    return ModelCardData(
        base_model=recipe.publish.base_model_id or None,
        datasets=[ids["dataset"]],
        license=card_family(recipe).hub_license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[card_family(recipe).name, "tool-calling", "function-calling", "router", "lora", "trl", "sft"],
        language=["zh", "en"],
        model_name=ids["model"],
        eval_results=(eval_results(recipe, (metrics or {}).get("finetuned", {})) + bfcl_eval_results(recipe)) or None,
    )


def converter_metadata(recipe) -> str:
    """The YAML a README must hold for llama.cpp's converter to write the GGUF's general.* keys: the model card's
    metadata, plus the name, basename and finetune it would otherwise guess from the folder's name."""
    import yaml

    data = model_card_data(recipe).to_dict()
    data |= {
        "model_name": recipe.publish.model_repo,
        "basename": adapter_base(recipe).split("/")[-1],
        "finetune": "router",
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).strip()


PARTIAL = re.compile(r'\{% include "([\w.]+)" %\}')


def card_template(path: str) -> str:
    """A card template with its `{% include "x.md" %}` lines replaced by model_card/partials/x.md (huggingface_hub
    renders a template string without a loader, so includes are resolved here)."""
    text = Path(path).read_text()
    return PARTIAL.sub(lambda m: (Path(path).parent / "partials" / m.group(1)).read_text().rstrip("\n"), text)


def adapter_base(recipe) -> str:
    """What adapter/adapter_config.json names as its base: the Hub id, else the recipe's declared base."""
    return recipe.publish.base_model_id or recipe.model.model_name_or_path


def render_model_card(recipe, metrics: dict[str, dict]):
    from huggingface_hub import ModelCard

    ids = repo_ids(recipe)
    values = _shared_template_values(recipe, metrics)
    return ModelCard.from_template(
        model_card_data(recipe, metrics),
        template_str=card_template("model_card/template.md"),
        repo_id=ids["model"],
        **values,
    )


def render_gguf_card(recipe, metrics: dict[str, dict]):
    """The GGUF repo's card: its own model-index holds the GGUF's metrics when `make eval` scored the GGUF."""
    from huggingface_hub import ModelCard, ModelCardData

    ids = repo_ids(recipe)
    data = ModelCardData(
        base_model=ids["model"],
        base_model_relation="quantized",
        datasets=[ids["dataset"]],
        license=card_family(recipe).hub_license,
        library_name="gguf",
        pipeline_tag="text-generation",
        tags=["gguf", "llama.cpp", "ollama", card_family(recipe).name, "tool-calling", "function-calling", "router"],
        language=["zh", "en"],
        model_name=ids["gguf"],
        eval_results=eval_results(recipe, metrics.get("gguf", {}), " (GGUF Q8_0)")
        + bfcl_eval_results(recipe, "llama.cpp")
        or None,
    )
    values = _shared_template_values(recipe, metrics)
    files = sorted(p.name for p in recipe.stage_dir("gguf").glob("*.gguf"))
    return ModelCard.from_template(
        data, template_str=card_template("model_card/gguf.md"), repo_id=ids["gguf"], gguf_files=files, **values
    )


def render_dataset_card(recipe):
    """The dataset card: every count on it is read from the dataset manifest, the tool list from its catalog."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from sft_router.datagen.catalog import labelling_rules

    manifest = read_manifest(recipe.stage_dir("dataset"))
    if manifest is None or "mix" not in manifest:
        raise UsageError(f"no dataset in {recipe.stage_dir('dataset')}: run `make data RECIPE={recipe.path}` first")
    catalog = load_catalog(manifest["catalog"])
    data = DatasetCardData(
        license="apache-2.0",
        language=["zh", "en"],
        task_categories=["text-generation"],
        size_categories=[_size_category(sum(manifest["rows"].values()))],
        tags=["tool-calling", "function-calling", "synthetic", "router"],
        pretty_name="Tool routing scenarios",
    )
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
        variety_table=dataset_variety_table(manifest),
        mix_table=dataset_mix_table(manifest),
        scene_size=manifest["scene_size"],
        scenes_table=dataset_scenes_table(manifest),
        pools_table=dataset_pools_table(manifest),
        noise_table=dataset_noise_table(manifest),
        unseen_tools=", ".join(f"`{name}`" for name in manifest["unseen_tools"]),
        procedural_share=manifest["procedural_share"],
        procedural_calls=manifest["mix"]["train"]["procedural_calls"],
        max_distractors=manifest["max_distractors"],
        rules=labelling_rules(manifest["catalog"]),
        content_sha256=manifest["content_sha256"],
    )


def _size_category(rows: int) -> str:
    return "n<1K" if rows < 1_000 else "1K<n<10K" if rows < 10_000 else "10K<n<100K"


def dataset_splits_table(manifest: dict) -> str:
    from sft_router.datagen.catalog import KINDS

    rows = []
    for split, count in manifest["rows"].items():
        mix = manifest["mix"][split]
        kinds = [mix["kind"][kind] for kind in KINDS]
        rows.append([split, count, *kinds, f"{mix['no_call_share']:.2f}", mix["rows_with_unseen_values"]])
    return markdown_table(["split", "rows", *KINDS, "no-call share", "unseen values"], rows)


def _share(part: int, whole: int) -> str:
    return f"{part} ({part / whole:.0%})" if whole else "0"


def dataset_variety_table(manifest: dict) -> str:
    """Per split: distinct templates and messages, calls with a value never in train or a confusable tool beside the
    target, and how many tools the prompts show."""
    header = [
        "split",
        "distinct templates",
        "distinct messages",
        "calls with an unseen value",
        "calls beside a confusable tool",
        "tools per prompt (min-max, mean)",
    ]
    return markdown_table(
        header, [_variety_row(split, rows, manifest["mix"][split]) for split, rows in manifest["rows"].items()]
    )


def _variety_row(split: str, rows: int, mix: dict) -> list:
    calls = mix["kind"]["call"] + mix["kind"]["image_call"]
    sizes = {int(size): count for size, count in mix["tool_list_sizes"].items()}
    mean = sum(size * count for size, count in sizes.items()) / max(sum(sizes.values()), 1)
    return [
        split,
        mix["distinct_templates"],
        _share(mix["distinct_messages"], rows),
        _share(mix["call_rows_with_unseen_values"], calls),
        _share(mix["calls_with_confusable_distractor"], calls),
        f"{min(sizes, default=0)}-{max(sizes, default=0)}, {mean:.1f}",
    ]


def dataset_mix_table(manifest: dict) -> str:
    """Per split: how many prompts show one tool, two to five, or more, and the call arguments of each kind."""
    from sft_router.datagen.catalog import ARGUMENT_TYPES

    header = ["split", "prompts with 1 tool", "2-5 tools", "6+ tools", "call arguments: " + ", ".join(ARGUMENT_TYPES)]
    table = []
    for split, rows in manifest["rows"].items():
        mix = manifest["mix"][split]
        sizes = {int(size): count for size, count in mix["tool_list_sizes"].items()}
        buckets = [
            sum(c for s, c in sizes.items() if s == 1),
            sum(c for s, c in sizes.items() if 2 <= s <= 5),
            sum(c for s, c in sizes.items() if s > 5),
        ]
        kinds = mix.get("argument_types", {})
        total = sum(kinds.values())
        arguments = ", ".join(f"{kinds.get(kind, 0) / total:.0%}" if total else "0" for kind in ARGUMENT_TYPES)
        table.append([split, *(_share(count, rows) for count in buckets), arguments])
    return markdown_table(header, table)


def dataset_scenes_table(manifest: dict) -> str:
    """Per split: how many scenes, and how many of them have each number of rows."""
    rows = []
    for split, count in manifest["rows"].items():
        mix = manifest["mix"][split]
        sizes = ", ".join(f"{size} ({scenes})" for size, scenes in mix["rows_per_scene"].items())
        rows.append([split, count, mix["scenes"], sizes])
    return markdown_table(["split", "rows", "scenes", "rows per scene (scenes)"], rows)


def dataset_pools_table(manifest: dict) -> str:
    rows = [[f"`{name}`", sizes["zh"], sizes["en"]] for name, sizes in manifest["pool_sizes"].items()]
    return markdown_table(["pool", "zh", "en"], rows)


def dataset_noise_table(manifest: dict) -> str:
    """Each rate the recipe set and how many rows of each split the rule changed."""
    splits = list(manifest["noise_applied"])
    rows = []
    for key, rate in manifest["rates"].items():
        rule = key.removeprefix("noise_").removesuffix("_rate")
        if key in ("no_call_share", "procedural_share"):
            continue
        rows.append(
            [rule.replace("_", " "), rate, *(manifest["noise_applied"][split].get(rule, 0) for split in splits)]
        )
    return markdown_table(["rule", "rate", *splits], rows)


def dataset_language_table(manifest: dict) -> str:
    rows = [[split, mix["lang"]["zh"], mix["lang"]["en"]] for split, mix in manifest["mix"].items()]
    return markdown_table(["split", "zh", "en"], rows)


def dataset_tools_table(manifest: dict, catalog) -> str:
    splits = list(manifest["mix"])
    rows = []
    for name, tool in catalog.tools.items():
        required = tool["parameters"].get("required", [])
        optional = [arg for arg in tool["parameters"].get("properties", {}) if arg not in required]
        counts = [manifest["mix"][split]["tool"].get(name, 0) for split in splits]
        rows.append(
            [f"`{name}`", tool["domain"], ", ".join(required), ", ".join(optional), tool["description"], *counts]
        )
    return markdown_table(["tool", "domain", "required", "optional", "description", *splits], rows)
