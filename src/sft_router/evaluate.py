"""Score the base model, the fine-tuned model and the no-model lookup on every evaluated split, side by side.

The recipe's `eval_splits` names the splits (`test` first; see sft_router.evaluation.eval_data). The test split's
variants (baseline, finetuned, the GGUF's and `lookup`, see sft_router.evaluation.lookup) write
runs/<name>/eval/<variant>/{metrics.json,predictions.jsonl}, where the cards and results tables read them; every other
split writes runs/<name>/eval/<split>/<variant>/. The fine-tuned model is scored on every split as users run it, its
GGUF under llama.cpp (`gguf`, `gguf_grammar`, see sft_router.evaluation.gguf_eval); `finetuned`, the same model under
transformers, on the test split only, where the share of answers identical to the GGUF's is the agreement figure
(`gguf_agreement` in the manifest, a note in comparison.md); without a scored GGUF, `finetuned` covers every split. The
variants (sft_router.evaluation.variants) are built once and asked for every split and for BFCL, so no model is loaded
twice. Then runs/<name>/eval/comparison.md (per split: a table of every variant with bootstrap intervals, per-tool F1
and confusion tables) and comparison.png (a bar chart of the test split). When the recipe sets `bfcl_categories`, BFCL
v4 is scored too (sft_router.evaluation.bfcl, into runs/<name>/eval/bfcl/) and its table joins comparison.md.
Generation (sft_router.modeling.loading.generate) is batched greedy decoding with the KV cache, stopping at
<end_of_turn>, scene by scene (rows sharing one system prompt): a scene's prompt prefix is prefilled once;
`eval_batch_size` and `eval_max_new_tokens` come from the recipe.

Usage: python -m sft_router.evaluate --config recipes/tiny/router.yaml
       python -m sft_router.evaluate --predictions PRED.jsonl --references REF.jsonl   (prints metrics JSON)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from sft_router.core.errors import UsageError, one_line_errors
from sft_router.core.run_folder import stage_output
from sft_router.evaluation.eval_data import HEADLINE_SPLIT, load_eval_splits
from sft_router.evaluation.markdown_tables import markdown_table, metric_cell, number_cell
from sft_router.evaluation.scoring import interval, label_order, metric_definitions, score, write_variant
from sft_router.modeling.prompts import PromptSet, prompt_set

# (metrics.json key, label) in the order the comparison table and chart show them.
COMPARED = [
    ("exact_match_rate", "exact match"),
    ("tool_name_accuracy", "tool name accuracy"),
    ("average_argument_f1", "argument F1"),
    ("average_argument_precision", "argument precision"),
    ("average_argument_recall", "argument recall"),
    ("json_valid_rate", "JSON valid (lenient)"),
    ("json_valid_rate_strict", "JSON valid (strict)"),
    ("exact_match_rate_strict", "exact match (strict)"),
    ("no_call_accuracy", "no-call accuracy"),
    ("false_call_rate", "false-call rate"),
    ("missed_call_rate", "missed-call rate"),
]
CHARTED = [
    "exact_match_rate",
    "tool_name_accuracy",
    "average_argument_f1",
    "json_valid_rate",
    "exact_match_rate_strict",
    "no_call_accuracy",
]
NA = "n/a"  # the comparison page's cell for a figure a variant does not have
PREDICTION_FIELDS = ("text", "output")  # `output`: a predictions.jsonl written here
REFERENCE_FIELDS = ("text", "expected")  # `expected`: a predictions.jsonl; a test-split row gives its completion
LOOKUP_NOTE = (
    "`lookup` is no model: the nearest train messages (character n-grams) pick the tool and a dictionary of "
    "train slot values fills the arguments (sft_router.evaluation.lookup); what a model scores above it, it did not "
    "recall from train."
)


def split_dir(out: Path, split: str) -> Path:
    """Where a split's variants go: the test split's at eval/<variant>/ (cards, results tables), others below it."""
    return out if split == HEADLINE_SPLIT else out / split


def variants_of_split(variants: dict, split: str) -> list[str]:
    """The variants a split is scored with. Where the GGUF is scored, it is the fine-tuned model on every split (what
    users run), and transformers scores the fine-tuned model on the test split only: the agreement figure."""
    gguf_scored = "gguf" in variants
    return [name for name in variants if not (name == "finetuned" and gguf_scored and split != HEADLINE_SPLIT)]


def score_split(variants: dict, names: list[str], prompts: PromptSet, out: Path) -> dict[str, dict]:
    """Each named variant's answers to one split, scored and written under `out`, in the variants' order."""
    return {name: write_variant(out / name, prompts.rows, variants[name].answer(prompts)) for name in names}


def agreement(out: Path) -> dict | None:
    """How many test answers the GGUF (free decoding) and transformers' fine-tuned model give identically."""
    files = [out / name / "predictions.jsonl" for name in ("gguf", "finetuned")]
    if not all(path.is_file() for path in files):
        return None
    gguf, finetuned = (read_jsonl_texts(str(path), ("output",)) for path in files)
    same = sum(a == b for a, b in zip(gguf, finetuned))
    return {"identical": same, "rows": len(gguf), "rate": same / max(len(gguf), 1)}


def agreement_note(figure: dict) -> str:
    return (
        "`gguf` is the fine-tuned model as users run it (its GGUF under llama.cpp), scored on every split; "
        f"`finetuned` (transformers) is scored on `{HEADLINE_SPLIT}`, where {figure['identical']} of "
        f"{figure['rows']} answers ({figure['rate']:.0%}) are identical to the GGUF's."
    )


def score_variants(variants: dict, tokenizer, splits: dict[str, list[dict]], out: Path, limit: int):
    """Metrics by split, then by variant: each split rendered once and asked of every variant that scores it."""
    results = {}
    for split, rows in splits.items():
        prompts = prompt_set(tokenizer, rows, limit, split)
        results[split] = score_split(variants, variants_of_split(variants, split), prompts, split_dir(out, split))
    return results


def run_eval(recipe) -> dict[str, dict[str, dict]]:
    """Metrics by split, then by variant; the lookup is scored last, beside the models."""
    started = time.time()
    from sft_router.evaluation.bfcl import run_bfcl, selected_cases  # BFCL v4 with its checker, when the recipe asks
    from sft_router.evaluation.variants import build_variants
    from sft_router.modeling.loading import load_tokenizer

    adapter = recipe.stage_dir("adapter")
    if not (adapter / "manifest.json").is_file():
        raise UsageError(f"no finished adapter at {adapter}: run `make train RECIPE={recipe.path}` first")
    notes: list[str] = []
    splits = load_eval_splits(recipe, notes)
    bfcl_cases = selected_cases(recipe) if recipe.eval.bfcl_categories else {}  # a bad category fails before decoding
    tokenizer = load_tokenizer(recipe)
    variants = build_variants(recipe, tokenizer)
    if "gguf" not in variants:
        print(
            f"eval: the GGUF in {recipe.stage_dir('gguf')} is not scored (not converted, or SFT_ROUTER_GGUF_EVAL=skip)"
        )
    rows_per_split = {split: len(rows) for split, rows in splits.items()}
    with stage_output(recipe, "eval", started, test_rows=len(splits[HEADLINE_SPLIT]), split_rows=rows_per_split) as (
        out,
        facts,
    ):
        results = score_variants(variants, tokenizer, splits, out, recipe.eval.eval_max_new_tokens)
        facts["gguf_agreement"] = agreement(out)
        bfcl = run_bfcl(recipe, tokenizer, variants, out / "bfcl", bfcl_cases) if bfcl_cases else {}
        page_notes = notes + ([agreement_note(facts["gguf_agreement"])] if facts["gguf_agreement"] else [])
        write_comparison(out, results, page_notes, bfcl)
        facts["metrics"] = {name: headline(metrics) for name, metrics in results[HEADLINE_SPLIT].items()}
        facts["bfcl"] = {name: metrics["categories"] for name, metrics in bfcl.items()}
        facts["split_metrics"] = {
            split: {name: headline(metrics) for name, metrics in variants.items()}
            for split, variants in results.items()
        }
        facts["skipped_splits"] = notes
    return results


def headline(metrics: dict) -> dict:
    """The scalar metrics (what a manifest or a one-line summary carries)."""
    return {key: value for key, value in metrics.items() if isinstance(value, int | float)}


def metrics_comparison_table(results: dict[str, dict]) -> str:
    """Markdown table, one column per variant; exact match and argument F1 carry their 95% intervals."""
    rows = [[label, *(metric_cell(m, key, missing=NA) for m in results.values())] for key, label in COMPARED]
    rows.append(["samples", *(metrics["total_samples"] for metrics in results.values())])
    return markdown_table(["metric", *results], rows)


def per_tool_table(results: dict[str, dict]) -> str:
    """Tool-selection F1 per expected tool (support from the first variant), one column per variant."""
    first = next(iter(results.values()))
    tools = [tool for tool, scores in first["per_tool"].items() if scores["support"]]
    rows = [
        [
            tool,
            first["per_tool"][tool]["support"],
            *(number_cell(metrics["per_tool"].get(tool, {}).get("f1", 0.0)) for metrics in results.values()),
        ]
        for tool in tools
    ]
    return markdown_table(["expected tool", "support", *(f"{name} F1" for name in results)], rows)


def confusion_markdown(confusion: dict[str, dict[str, int]]) -> str:
    predicted = label_order(label for row in confusion.values() for label in row)
    rows = [[expected, *(row.get(label, 0) for label in predicted)] for expected, row in confusion.items()]
    return markdown_table(["expected \\ predicted", *predicted], rows)


def split_markdown(split: str, results: dict[str, dict]) -> str:
    """One split's section: every variant's metrics, tool selection per expected tool, a confusion table each."""
    first = next(iter(results.values()))
    parts = [
        f"## Split `{split}`: {first['total_samples']} rows ({first['call_samples']} expecting a tool call, "
        f"{first['no_call_samples']} a reply)",
        metrics_comparison_table(results),
        f"### Tool selection per expected tool (`{split}`)",
        per_tool_table(results),
        *(
            f"### Confusion: {name} on `{split}` (rows expected, columns predicted)\n\n"
            f"{confusion_markdown(metrics['confusion'])}"
            for name, metrics in results.items()
        ),
    ]
    return "\n\n".join(parts)


def overview_table(by_split: dict[str, dict[str, dict]]) -> str:
    """Exact match (with its interval) of every variant on every split, one row per split."""
    variants = list(dict.fromkeys(name for results in by_split.values() for name in results))
    rows = [
        [
            f"`{split}`",
            next(iter(results.values()))["total_samples"],
            *(metric_cell(results.get(name, {}), "exact_match_rate", missing=NA) for name in variants),
        ]
        for split, results in by_split.items()
    ]
    return markdown_table(["split", "rows", *variants], rows)


def comparison_markdown(by_split: dict[str, dict[str, dict]], notes: list[str] = ()) -> str:
    """The comparison page: exact match per split first, then each split in full, then the metric definitions."""
    first = next(iter(by_split[next(iter(by_split))].values()))
    bootstrap = first["bootstrap"]
    variants = list(dict.fromkeys(name for results in by_split.values() for name in results))
    parts = [
        f"# Evaluation: {' vs '.join(variants)}",
        f"Splits: {', '.join(f'`{split}`' for split in by_split)}. Headline numbers use the lenient parse; brackets "
        f"are {bootstrap['method']} bootstrap {bootstrap['confidence']:.0%} intervals ({bootstrap['resamples']} "
        f"resamples, seed {bootstrap['seed']}). {LOOKUP_NOTE}",
        *(f"Note: {note}" for note in notes),
        "## Exact match per split",
        overview_table(by_split),
        *(split_markdown(split, results) for split, results in by_split.items()),
        "## How each metric is computed",
        "\n".join(f"- {line}" for line in metric_definitions()),
    ]
    return "\n\n".join(parts) + "\n"


def plot_comparison(results: dict[str, dict], path: Path) -> None:
    """Grouped bar chart of the charted metrics, one bar per variant, with the bootstrap intervals drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = dict(COMPARED)
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(results)
    for index, (name, metrics) in enumerate(results.items()):
        xs = [position + (index - (len(results) - 1) / 2) * width for position in range(len(CHARTED))]
        values = [metrics.get(key, 0.0) for key in CHARTED]
        errors = [_error_bar(metrics, key) for key in CHARTED]
        axes.bar(xs, values, width, label=name, yerr=list(zip(*errors)), capsize=3)
    axes.set_xticks(range(len(CHARTED)), [labels[key] for key in CHARTED], rotation=20, ha="right")
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("score (lenient parse unless marked strict)")
    axes.set_title("Test split; error bars: bootstrap 95% intervals", fontsize=10)
    axes.legend(loc="upper center", ncols=len(results), frameon=False)
    figure.savefig(path, dpi=120)


def _error_bar(metrics: dict, key: str) -> tuple[float, float]:
    """Distances from the value down and up to its interval; NaN (no bar drawn) for a metric without one."""
    span = interval(metrics, key)
    if span is None:
        return math.nan, math.nan
    low, high = span
    return max(metrics[key] - low, 0.0), max(high - metrics[key], 0.0)


def write_comparison(out: Path, by_split: dict[str, dict[str, dict]], notes: list[str] = (), bfcl: dict | None = None):
    """comparison.md over every split and variant scored (BFCL's table too, when it ran), and comparison.png of the
    test split."""
    from sft_router.evaluation.bfcl import bfcl_section

    page = comparison_markdown(by_split, notes) + (f"\n{bfcl_section(bfcl)}" if bfcl else "")
    (out / "comparison.md").write_text(page, encoding="utf-8")
    plot_comparison(by_split[HEADLINE_SPLIT], out / "comparison.png")


def read_jsonl_texts(path: str, fields: tuple[str, ...] = ("text",)) -> list[str]:
    """The first of `fields` present on each line; a test-split row (from `make data`) gives its completion.

    Lines end at "\\n" only: a JSON string may hold U+2028 or other characters `str.splitlines()` would split at.
    A line that is not a JSON object with a text field fails naming the file and line; blank lines are skipped.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc}): pass an existing JSONL file") from exc
    texts = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if raw.strip():
            texts.append(_line_text(raw, fields, f"{path}:{number}"))
    return texts


def _line_text(raw: bytes, fields: tuple[str, ...], where: str) -> str:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise UsageError(f"{where}: not a JSON line ({reason}); fix or remove the line") from exc
    if not isinstance(record, dict):
        raise UsageError(f"{where}: a JSON {_json_kind(record)}, not an object; give each line a `{fields[0]}`")
    field = next((name for name in fields if name in record), None)
    text = record[field] if field is not None else _completion_text(record)
    if text is None:
        raise UsageError(f"{where}: no `{fields[0]}` field; give each line one")
    if not isinstance(text, str):
        raise UsageError(f"{where}: `{field or 'completion'}` is a JSON {_json_kind(text)}, not a string; fix it")
    return text


def _json_kind(value) -> str:
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return kinds.get(type(value), "null")


def _completion_text(record: dict):
    """The assistant text of a test-split row's `completion` (a list of messages), else None."""
    completion = record.get("completion")
    if not isinstance(completion, list) or not completion or not isinstance(completion[0], dict):
        return None
    return completion[0].get("content")


def score_files(predictions: str, references: str) -> dict:
    pred, ref = read_jsonl_texts(predictions, PREDICTION_FIELDS), read_jsonl_texts(references, REFERENCE_FIELDS)
    try:
        if not ref:
            raise ValueError("no references")
        metrics, _ = score(pred, ref)
    except ValueError as exc:
        raise UsageError(f"cannot score {predictions} against {references}: {exc}") from exc
    return metrics


def score_files_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m sft_router.evaluate", description="Score a predictions file.")
    parser.add_argument("--predictions", required=True, help="JSONL, raw model output in `text` on each line")
    parser.add_argument("--references", required=True, help="JSONL, expected `text` on each line, or the test split")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown arguments {unknown}: give only --predictions PRED.jsonl --references REF.jsonl")
    print(json.dumps(score_files(args.predictions, args.references), ensure_ascii=False))


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--predictions" in argv or "--references" in argv:
        score_files_main(argv)
        return
    from sft_router.core.config import parse_recipe  # imports TRL: only the model path pays for it

    (recipe,) = parse_recipe(argv)
    for split, results in run_eval(recipe).items():
        for name, metrics in results.items():
            print(
                f"eval {split} {name}: exact_match={metric_cell(metrics, 'exact_match_rate', missing=NA)} "
                f"arg_f1={metric_cell(metrics, 'average_argument_f1', missing=NA)}"
            )
    if recipe.eval.bfcl_categories:
        from sft_router.evaluation.bfcl import show

        show(recipe)
    print(f"comparison: {recipe.stage_dir('eval') / 'comparison.md'}")


if __name__ == "__main__":
    main()
