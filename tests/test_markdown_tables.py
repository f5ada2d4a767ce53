"""The one markdown table and the cells every report shares: shape, escaping, refused ragged rows, and the scorer's own
intervals (real `score` output, never hand-written keys) in a cell."""

import pytest

from sft_router.evaluation.markdown_tables import markdown_table, metric_cell, number_cell, percent_cell, span_cell
from sft_router.evaluation.scoring import score

CALL = '{"tool_name": "set_alarm", "arguments": {"time": "7点"}}'
WRONG = '{"tool_name": "set_alarm", "arguments": {"time": "8点"}}'
REPLY = "好的。"
REFERENCES = [CALL, CALL, REPLY, CALL]


def test_table_has_header_separator_and_one_line_per_row():
    table = markdown_table(["model", "rows"], [["baseline", 4], ["finetuned", 0.5]])
    assert table.splitlines() == ["| model | rows |", "|---|---|", "| baseline | 4 |", "| finetuned | 0.5 |"]


def test_a_pipe_in_a_cell_is_escaped_so_the_row_keeps_its_columns():
    table = markdown_table(["tool", "description"], [["`a|b`", "x | y"]])
    assert table.splitlines()[2] == "| `a\\|b` | x \\| y |"


def test_alignment_marks_the_separator():
    assert markdown_table(["a", "b", "c"], [], align=["left", "right", None]).splitlines()[1] == "|:---|---:|---|"


@pytest.mark.parametrize("row", [["only one"], ["one", "two", "three"]])
def test_a_row_of_the_wrong_width_is_refused(row):
    with pytest.raises(ValueError, match="cells for 2 columns"):
        markdown_table(["a", "b"], [["fine", "row"], row])


def test_metric_cell_shows_the_scorers_interval_beside_the_figure():
    metrics, _ = score([CALL, WRONG, REPLY, CALL], REFERENCES)
    low, high = metrics["exact_match_rate_ci95"]
    assert metric_cell(metrics, "exact_match_rate") == f"0.750 [{low:.3f}, {high:.3f}]"
    assert low < 0.75 < high
    assert metric_cell(metrics, "average_argument_f1", digits=2).startswith("0.67 [")


def test_metric_cell_without_an_interval_shows_the_figure_alone():
    metrics, _ = score([CALL, WRONG, REPLY, CALL], REFERENCES)
    assert "tool_name_accuracy_ci95" not in metrics
    assert metric_cell(metrics, "tool_name_accuracy") == "1.000"
    assert (
        metric_cell(metrics, "no_such_metric") == "-"
        and metric_cell(metrics, "no_such_metric", missing="n/a") == "n/a"
    )


def test_percent_cell_scales_the_figure_and_its_interval():
    metrics, _ = score([CALL, CALL, REPLY, CALL], REFERENCES)
    assert percent_cell(metrics, "exact_match_rate") == "100.0 [100.0, 100.0]"
    assert percent_cell({"simple_python": 0.616}, "simple_python") == "61.6"


def test_number_and_span_cells_fall_back_when_empty():
    assert number_cell(None) == "-" and number_cell(0.25) == "0.250" and number_cell(1, digits=1) == "1.0"
    assert span_cell(None) == "-" and span_cell((0.1, 0.4), digits=2) == "[0.10, 0.40]"
