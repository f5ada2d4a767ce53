"""Write each recipe's results table from its run files, never by hand: recipes/README.md and recipes/<name>/README.md.

For every run under runs/ whose recipe exists, the table gives the command, the machine, the wall time of
each stage (from the stage manifests) and the headline metrics with their bootstrap intervals (from
runs/<name>/eval/*/metrics.json; every variant, the no-model `lookup` too), then exact match on every evaluated
split (the eval manifest), and BFCL v4 accuracy when the run scored it (runs/<name>/eval/bfcl/). The tables
sit between marker comments, so the prose around them stays.

Usage: python -m sft_router.results            (after `make all`, `make demo` or `make smoke`)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sft_router.core.run_folder import read_manifest
from sft_router.core.stages import STAGES
from sft_router.evaluation.bfcl import bfcl_table, read_bfcl
from sft_router.evaluation.markdown_tables import markdown_table, metric_cell
from sft_router.release.card_rendering import split_exact_match_table

METRICS = (
    ("exact_match_rate", "exact match"),
    ("average_argument_f1", "argument F1"),
    ("tool_name_accuracy", "tool acc."),
    ("no_call_accuracy", "no-call acc."),
)
BEGIN, END = "<!-- results:begin (python -m sft_router.results) -->", "<!-- results:end -->"


def run_summary(run_dir: Path) -> dict | None:
    manifests = {stage: read_manifest(run_dir / stage) for stage in STAGES}
    first = next((m for m in manifests.values() if m), None)
    if first is None:
        return None
    eval_dir = run_dir / "eval"
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sorted(eval_dir.glob("*/metrics.json"))}
    return {
        "run": run_dir.name,
        "recipe": first["recipe"],
        "machine": first.get("hardware") or first.get("machine", "?"),
        "wall": {stage: m["wall_time_s"] for stage, m in manifests.items() if m},
        "metrics": metrics,
        "split_metrics": (manifests["eval"] or {}).get("split_metrics") or {},
        "bfcl": read_bfcl(eval_dir),
    }


def metrics_interval_table(metrics: dict[str, dict]) -> str:
    """Every variant's headline metrics, each with its bootstrap interval."""
    rows = [
        [variant, *(metric_cell(values, key) for key, _ in METRICS), values.get("total_samples", "-")]
        for variant, values in metrics.items()
    ]
    return markdown_table(["model", *(label for _, label in METRICS), "rows"], rows)


def results_table(summary: dict) -> str:
    wall = ", ".join(f"{stage} {seconds:.0f}s" for stage, seconds in summary["wall"].items())
    lines = [
        f"`make publish RECIPE={summary['recipe']}` on {summary['machine']}; wall time: {wall}.",
        "",
        metrics_interval_table(summary["metrics"]),
    ]
    splits = split_exact_match_table(summary.get("split_metrics") or {})
    if splits:
        lines += ["", "Exact match on every evaluated split:", "", splits]
    if summary.get("bfcl"):  # BFCL v4 accuracy (%) with intervals, beside FunctionGemma's cited figures
        lines += [
            "",
            "BFCL v4, graded by BFCL's own checker (accuracy %, bootstrap 95% intervals):",
            "",
            bfcl_table(summary["bfcl"]),
        ]
    return "\n".join(lines)


def replace_block(path: Path, block: str) -> None:
    text = path.read_text() if path.is_file() else ""
    new = f"{BEGIN}\n{block}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: new, text) if pattern.search(text) else f"{text.rstrip()}\n\n{new}\n")


# The order recipes/README.md shows runs in: the published model, the laptop router, then the rest by name.
FIRST = ("gemma-3-270m-it", "gemma-3-270m-laptop")


def shown_order(run_dir: Path) -> tuple[int, str]:
    return (FIRST.index(run_dir.name) if run_dir.name in FIRST else len(FIRST), run_dir.name)


def main() -> None:
    runs = map(run_summary, sorted(Path("runs").glob("*"), key=shown_order))
    summaries = [s for s in runs if s and s["metrics"] and Path(s["recipe"]).is_file()]  # evaluated runs only
    blocks = []
    for summary in summaries:
        table = results_table(summary)
        replace_block(Path(summary["recipe"]).parent / "README.md", f"## Results\n\n{table}")
        blocks.append(f"### {summary['run']}\n\n{table}")
    if not summaries:
        blocks.append("No finished runs yet. The published recipe's numbers await a GPU run.")
    replace_block(Path("recipes/README.md"), "## Results\n\n" + "\n\n".join(blocks))
    print(f"results: {len(summaries)} run(s) written to recipes/README.md and each recipe's README.md")


if __name__ == "__main__":
    main()
