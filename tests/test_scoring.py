"""The scorer on hand-worked cases; it never raises, whatever the model emits."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_router.evaluation.scoring import (
    SEED_KEYS,
    bootstrap_interval,
    metric_definitions,
    parse_lenient,
    parse_strict,
    score,
    score_prediction,
)

CALL = '{"tool_name": "get_calendar_events", "arguments": {"date": "今天"}}'
TWO_ARGS = '{"tool_name": "create_calendar_event", "arguments": {"title": "开会", "time": "3pm"}}'
REPLY = "你好！有什么可以帮你的吗？"


def scores(prediction: str, reference: str) -> tuple:
    sample = score_prediction(prediction, reference)
    return sample["argument_precision"], sample["argument_recall"], sample["argument_f1"], sample["exact_match"]


def test_seed_prediction_with_output_prefix_is_right_leniently_not_strictly():
    metrics, _ = score(['output：{"tool_name": "get_calendar_events", "arguments": {"date": "今天"}}'], [CALL])
    assert metrics["exact_match_rate"] == 1.0 and metrics["exact_match_rate_strict"] == 0.0
    assert metrics["json_valid_rate"] == 1.0 and metrics["json_valid_rate_strict"] == 0.0


def test_key_order_and_python_dict_quoting_are_forgiven():
    pred = "{'arguments': {'time': '3pm', 'title': '开会'}, 'tool_name': 'create_calendar_event'}"
    assert parse_strict(pred) is None
    assert scores(pred, TWO_ARGS) == (1.0, 1.0, 1.0, True)
    assert score_prediction(pred, TWO_ARGS)["exact_match_strict"] is False


def test_reference_in_the_seeds_python_dict_quoting_is_a_call():
    assert scores(CALL, "{'tool_name': 'get_calendar_events', 'arguments': {'date': '今天'}}")[3] is True


def test_extra_argument_halves_precision():
    pred = '{"tool_name": "get_calendar_events", "arguments": {"date": "今天", "time": "3pm"}}'
    assert scores(pred, CALL) == (0.5, 1.0, pytest.approx(2 / 3), False)


def test_missing_argument_halves_recall():
    pred = '{"tool_name": "create_calendar_event", "arguments": {"title": "开会"}}'
    assert scores(pred, TWO_ARGS) == (1.0, 0.5, pytest.approx(2 / 3), False)


def test_one_wrong_value_of_two_and_types_are_kept():
    pred = '{"tool_name": "create_calendar_event", "arguments": {"title": "开会", "time": "4pm"}}'
    assert scores(pred, TWO_ARGS) == (0.5, 0.5, 0.5, False)
    number = '{"tool_name": "set_timer", "arguments": {"minutes": 3}}'
    assert scores('{"tool_name": "set_timer", "arguments": {"minutes": "3"}}', number)[3] is False
    assert scores('{"tool_name": "set_timer", "arguments": {"minutes": 3}}', number)[3] is True


def test_no_arguments_on_both_sides_is_a_full_match():
    assert scores('{"tool_name": "list_tasks"}', '{"tool_name": "list_tasks", "arguments": {}}') == (1, 1, 1, True)


def test_wrong_tool_with_right_arguments_scores_zero():
    sample = score_prediction('{"tool_name": "create_calendar_event", "arguments": {"date": "今天"}}', CALL)
    assert (sample["tool_correct"], sample["argument_f1"], sample["exact_match"]) == (False, 0.0, False)


def test_no_call_expected_and_a_call_made():
    metrics, samples = score([CALL], [REPLY])
    assert (metrics["false_call_rate"], metrics["no_call_accuracy"], metrics["exact_match_rate"]) == (1.0, 0.0, 0.0)
    assert metrics["confusion"] == {"none": {"get_calendar_events": 1}} and metrics["call_samples"] == 0


def test_call_expected_and_prose_given():
    metrics, _ = score(["好的，我来查一下今天的日程。"], [CALL])
    assert (metrics["missed_call_rate"], metrics["average_argument_f1"], metrics["exact_match_rate"]) == (1, 0, 0)
    assert metrics["tool_name_accuracy"] == 0.0 and metrics["confusion"] == {"get_calendar_events": {"none": 1}}


def test_a_malformed_call_is_an_invalid_attempt_not_a_reply_nor_a_miss():
    broken = '{"tool_name": "get_calendar_events", "arguments": {"date": '
    metrics, samples = score([broken, broken, "Output: ```json\n{'tool'"], [REPLY, CALL, REPLY])
    assert [s["call_attempted"] for s in samples] == [True, True, True]
    assert [s["exact_match"] for s in samples] == [False, False, False] and metrics["tool_name_accuracy"] == 0
    assert (metrics["false_call_rate"], metrics["missed_call_rate"], metrics["json_valid_rate"]) == (1.0, 0.0, 0.0)
    assert metrics["confusion"] == {"get_calendar_events": {"invalid": 1}, "none": {"invalid": 2}}


def test_empty_output_is_never_right():
    metrics, samples = score(["", "  "], [CALL, REPLY])
    assert [s["exact_match"] for s in samples] == [False, False]
    assert metrics["missed_call_rate"] == 1.0 and metrics["no_call_accuracy"] == 1.0  # no call, but no reply either


def test_reply_expected_and_reply_given_is_right_whatever_the_wording():
    assert score_prediction("您好，请问需要什么帮助？", REPLY)["exact_match"] is True


@pytest.mark.parametrize(
    "text",
    [
        f"Output: {CALL}",
        f"输出： {CALL}",
        f"```json\n{CALL}\n```",
        f"Sure! Here is the call:\n```\n{CALL}\n```\nLet me know.",
        f"I'll check that for you. {CALL} Hope that's what you wanted {{",
        f"{CALL}}}<end_of_turn>",
        f"Assistant: Output: {CALL}\n{CALL.replace('今天', '明天')}",
        '{"tool_name": "get_calendar_events", "arguments": {"date": "今天"}, "note": "{not a brace}"}',
        "{'tool_name': 'get_calendar_events', 'arguments': {'date': '今天'}}",
        f"```json\n{CALL}",  # fence never closed
    ],
)
def test_lenient_parse_finds_the_call_in_labelled_fenced_or_prose_output(text):
    assert parse_lenient(text) == {"tool_name": "get_calendar_events", "arguments": {"date": "今天"}}


@pytest.mark.parametrize(
    "text",
    ["{", "}{", "{'a': {", '```json\n{"tool_name": 1}\n```', "{" * 5000, "\x00", '{"tool_name": "a", "arguments": []}',
     "{'tool_name': 'a', 'arguments': {'x': {1, 2}}}", "{'tool_name': 'a', 'arguments': {1: 2}}", "[" * 100_000,
     "{'tool_name': 'a', 'arguments': {'x': '\\ud800'}}"],
)  # fmt: skip
def test_parsers_never_raise_and_reject_what_is_not_a_call(text):
    assert parse_lenient(text) is None and parse_strict(text) is None


def test_pathological_outputs_parse_fast():
    start = time.perf_counter()
    for text in ["{" * 100_000, '{"a":' * 50_000, "{'tool_name': " + "(" * 3000, "x" * 10**6, "```" * 30_000]:
        assert parse_lenient(text) is None
    assert time.perf_counter() - start < 5.0


# A small hand-made set: (prediction, reference), worked out by hand below.
A = '{"tool_name": "A", "arguments": {"x": 1}}'
B = '{"tool_name": "B", "arguments": {"x": 1, "y": 2}}'
HAND_SET = [
    (A, A),  # right
    ('{"tool_name": "B", "arguments": {"x": 1}}', A),  # wrong tool, right arguments
    ('{"tool_name": "B", "arguments": {"x": 1, "y": 3}}', B),  # right tool, one of two values wrong
    (B, "hello"),  # call made where a reply was expected
    ("hi there", "hello"),  # right reply
    ("let me see", B),  # prose where a call was expected
    (f"output：{A}", A),  # right, leniently
]


def test_aggregate_on_a_hand_made_set_with_seed_keys_first():
    metrics, _ = score(*zip(*HAND_SET))
    assert tuple(metrics)[: len(SEED_KEYS)] == SEED_KEYS
    assert metrics["exact_match_rate"] == pytest.approx(3 / 7) and metrics["exact_match_rate_strict"] == 2 / 7
    assert metrics["tool_name_accuracy"] == pytest.approx(4 / 7) and metrics["total_samples"] == 7
    assert metrics["average_argument_f1"] == pytest.approx((1 + 0 + 0.5 + 0 + 1) / 5)
    assert metrics["average_argument_precision"] == pytest.approx(0.5)
    assert (metrics["missed_call_rate"], metrics["false_call_rate"], metrics["json_valid_rate"]) == (0.2, 0.5, 0.8)
    assert (metrics["call_samples"], metrics["no_call_samples"], metrics["parse"]) == (5, 2, "lenient")


def test_per_tool_scores_and_confusion_on_the_hand_made_set():
    metrics, _ = score(*zip(*HAND_SET))
    per_tool = metrics["per_tool"]
    assert list(per_tool) == ["A", "B", "none"]
    assert per_tool["A"] == {"support": 3, "predicted": 2, "precision": 1.0, "recall": pytest.approx(2 / 3),
                             "f1": pytest.approx(0.8), "exact_match_rate": pytest.approx(2 / 3)}  # fmt: skip
    assert per_tool["B"] == {"support": 2, "predicted": 3, "precision": pytest.approx(1 / 3), "recall": 0.5,
                             "f1": pytest.approx(0.4), "exact_match_rate": 0.0}  # fmt: skip
    assert (per_tool["none"]["precision"], per_tool["none"]["recall"], per_tool["none"]["exact_match_rate"]) == (
        0.5,
        0.5,
        0.5,
    )
    assert metrics["confusion"] == {"A": {"A": 2, "B": 1}, "B": {"B": 1, "none": 1}, "none": {"B": 1, "none": 1}}


def test_a_tool_only_ever_predicted_has_zero_recall_and_no_support():
    metrics, _ = score(['{"tool_name": "made_up", "arguments": {}}'], [CALL])
    assert metrics["per_tool"]["made_up"] == {"support": 0, "predicted": 1, "precision": 0.0, "recall": 0.0,
                                              "f1": 0.0, "exact_match_rate": 0.0}  # fmt: skip


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    values = [0.0, 0.5, 1.0, 0.25, 0.8, 1.0, 0.0, 0.66, 1.0, 0.4, 0.9, 0.1]
    low, high = bootstrap_interval(values, resamples=1000, seed=0)
    assert 0.0 <= low < sum(values) / len(values) < high <= 1.0
    assert bootstrap_interval(values, seed=0) == [low, high] and bootstrap_interval(values, seed=1) != [low, high]
    assert bootstrap_interval([1, 1, 1]) == [1.0, 1.0] and bootstrap_interval([]) == [0.0, 0.0]
    assert high - low > bootstrap_interval(values * 20)[1] - bootstrap_interval(values * 20)[0]  # narrows with n


def test_metrics_carry_intervals_around_their_point_estimates():
    metrics, _ = score(*zip(*HAND_SET))
    for key in ("exact_match_rate", "average_argument_f1"):
        low, high = metrics[f"{key}_ci95"]
        assert low <= metrics[key] <= high and low < high
    assert metrics["bootstrap"] == {"resamples": 1000, "seed": 0, "confidence": 0.95, "method": "percentile"}


def test_every_metric_key_is_documented():
    metrics, _ = score(*zip(*HAND_SET))
    documented = " ".join(line.split(":", 1)[0] for line in metric_definitions())
    undocumented = [key for key in metrics if key not in documented and key not in ("parse", "bootstrap")]
    assert not undocumented


# Property tests: nothing the model can emit makes the scorer raise, and a call survives any wrapping.
NAMES = st.text(min_size=1, max_size=20).filter(lambda s: s == s.strip())
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
CALLS = st.fixed_dictionaries(
    {"tool_name": NAMES, "arguments": st.dictionaries(st.text(max_size=12), VALUES, max_size=5)}
)
PROSE = st.text(alphabet=st.characters(blacklist_characters="{}`"), max_size=40)
WRAPPERS = st.sampled_from(["", "output：", "Output: ", "答案: ", "Sure, here it is: "])


def render(call: dict, style: str) -> str:
    return repr(call) if style == "python" else json.dumps(call, ensure_ascii=style == "ascii")


def assert_is_a_call_or_none(parsed):
    assert parsed is None or (isinstance(parsed["tool_name"], str) and isinstance(parsed["arguments"], dict))
    json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # what predictions.jsonl stores


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_scorer_never_raises_on_arbitrary_text(prediction, reference):
    sample = score_prediction(prediction, reference)
    assert_is_a_call_or_none(sample["parsed"])
    assert_is_a_call_or_none(parse_strict(prediction))


@settings(max_examples=500, deadline=None)
@given(CALLS, st.sampled_from(["json", "ascii", "python"]), st.data())
def test_scorer_never_raises_on_mutated_calls(call, style, data):
    text = render(call, style)
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    mutation = data.draw(st.sampled_from(["insert", "delete", "truncate", "repeat", "swap"]))
    junk = data.draw(st.text(max_size=10))
    mutated = {
        "insert": text[:start] + junk + text[start:],
        "delete": text[:start] + text[end:],
        "truncate": text[:start],
        "repeat": text[:end] + text[start:],
        "swap": text[end:] + text[:start],
    }[mutation]
    sample = score_prediction(mutated, text)
    assert_is_a_call_or_none(sample["parsed"])
    assert sample["expected_tool"] == call["tool_name"]


@settings(max_examples=500, deadline=None)
@given(CALLS, st.sampled_from(["json", "ascii", "python"]), WRAPPERS, PROSE, st.booleans())
def test_a_call_in_any_wrapping_scores_as_an_exact_match(call, style, label, trailing, fenced):
    body = render(call, style)
    text = label + (f"```json\n{body}\n```" if fenced else body) + trailing
    assert parse_lenient(text) == call
    assert score_prediction(text, json.dumps(call))["exact_match"] is True
