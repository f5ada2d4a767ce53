"""The results tables come from the run files: wall times from manifests, metrics from metrics.json."""

from __future__ import annotations

import json

from sft_router.results import BEGIN, END, replace_block, results_table, run_summary


def test_table_reads_wall_times_and_metrics_from_the_run(tiny_run):
    run = tiny_run / "runs/tiny"
    summary = run_summary(run)
    table = results_table(summary)
    adapter = json.loads((run / "adapter/manifest.json").read_text())  # the whole stage: loading and training
    finetuned = json.loads((run / "eval/finetuned/metrics.json").read_text())
    assert f"adapter {adapter['wall_time_s']:.0f}s" in table and "CPU cores" in table
    assert table.index("dataset ") < table.index("adapter ") < table.index("merged ") < table.index("eval ")
    assert f"| finetuned | {finetuned['exact_match_rate']:.3f}" in table
    assert "make publish RECIPE=recipes/tiny/router.yaml" in table
    low, high = finetuned["exact_match_rate_ci95"]
    assert f"{finetuned['exact_match_rate']:.3f} [{low:.3f}, {high:.3f}]" in table
    assert "| lookup | " in table and "| handwritten | 24 | " in table  # the control and every evaluated split


def test_block_is_replaced_in_place_keeping_the_prose(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Recipe\n\nProse.\n")
    replace_block(readme, "first")
    replace_block(readme, "second")
    text = readme.read_text()
    assert text.startswith("# Recipe\n\nProse.\n") and text.count(BEGIN) == 1 and text.count(END) == 1
    assert "second" in text and "first" not in text


def test_the_published_and_laptop_runs_are_shown_first(tmp_path):
    from sft_router.results import shown_order

    names = ["tiny", "gemma-3-270m-demo", "gemma-3-270m-laptop", "a-contributed-recipe", "gemma-3-270m-it"]
    assert [p.name for p in sorted((tmp_path / n for n in names), key=shown_order)] == [
        "gemma-3-270m-it", "gemma-3-270m-laptop", "a-contributed-recipe", "gemma-3-270m-demo", "tiny"]  # fmt: skip
