"""The scorer on hand-worked cases; it never raises, whatever the model emits."""

from __future__ import annotations

import pytest

from sft_router.scoring import aggregate, parse_lenient, parse_strict, score_prediction

CALL = '{"tool_name": "get_calendar_events", "arguments": {"date": "今天"}}'


def test_seed_prediction_with_output_prefix_is_right_leniently_not_strictly():
    sample = score_prediction('output：{"tool_name": "get_calendar_events", "arguments": {"date": "今天"}}', CALL)
    assert sample["exact_match"] and not sample["exact_match_strict"]


def test_python_dict_quoting_and_key_order_are_forgiven():
    pred = "{'arguments': {'date': '今天'}, 'tool_name': 'get_calendar_events'}"
    assert parse_strict(pred) is None
    assert score_prediction(pred, CALL)["exact_match"]


def test_extra_argument_halves_precision():
    pred = '{"tool_name": "get_calendar_events", "arguments": {"date": "今天", "time": "3pm"}}'
    sample = score_prediction(pred, CALL)
    assert (sample["argument_precision"], sample["argument_recall"], sample["exact_match"]) == (0.5, 1.0, False)


def test_wrong_tool_with_right_arguments_scores_zero():
    sample = score_prediction('{"tool_name": "create_calendar_event", "arguments": {"date": "今天"}}', CALL)
    assert (sample["tool_correct"], sample["argument_f1"], sample["exact_match"]) == (False, 0.0, False)


def test_no_call_expected_and_a_call_made():
    sample = score_prediction(CALL, "你好！有什么可以帮你的吗？")
    metrics = aggregate([sample])
    assert (
        metrics["false_call_rate"] == 1.0 and metrics["no_call_accuracy"] == 0.0 and metrics["exact_match_rate"] == 0
    )


def test_call_expected_and_prose_or_nothing_given():
    metrics = aggregate([score_prediction("好的，我来查一下。", CALL), score_prediction("", CALL)])
    assert metrics["missed_call_rate"] == 1.0 and metrics["average_argument_f1"] == 0.0


@pytest.mark.parametrize("text", ["{", "}{", "{'a': {", '```json\n{"tool_name": 1}\n```', "{" * 5000, "\x00"])
def test_parsers_never_raise(text):
    assert parse_lenient(text) is None and parse_strict(text) is None
