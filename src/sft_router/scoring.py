"""Pure-Python scoring of router outputs, shared by `make eval`, the `evaluate` module and any predictions file.

A reference is either a tool call (JSON object text with `tool_name` and `arguments`) or a reply (any
other text). Predictions are parsed two ways: strictly (the whole output is one JSON call) and
leniently (leading labels such as `output：`, code fences, prose around the object, Python-dict
quoting). Headline metrics use the lenient parse. Nothing here raises on any model output.

How each metric is computed (the seed's names keep the seed's meaning):
- exact_match_rate: share of samples where the prediction is right: for a call, same tool name and the
  same arguments (same keys, equal values, key order ignored); for a reply, no call was made (the
  wording of replies is not scored).
- tool_name_accuracy: share of samples with the right tool, counting "no call" as a tool of its own.
- average_argument_precision/recall/f1: means over samples where a call was expected. Per sample,
  precision = correct (key, value) pairs / predicted pairs, recall = correct pairs / expected pairs,
  both 1.0 when both sides have no arguments; a call of the wrong tool or no call scores 0.
- json_valid_rate(_strict): share of call-expected samples whose output parses as a call.
- no_call_accuracy: share of reply-expected samples answered without a call; false_call_rate = 1 - that.
- missed_call_rate: share of call-expected samples answered without any call.
"""

from __future__ import annotations

import ast
import json
import re

LABEL = re.compile(r"^\s*(?:output|answer|response|assistant|model|输出|回答|答案)\s*[:：]\s*", re.IGNORECASE)
FENCE = re.compile(r"```(?:json|python)?\s*(.*?)```", re.DOTALL)


def _as_call(obj) -> dict | None:
    if isinstance(obj, dict) and isinstance(obj.get("tool_name"), str) and obj["tool_name"]:
        arguments = obj.get("arguments", {})
        if isinstance(arguments, dict):
            return {"tool_name": obj["tool_name"], "arguments": arguments}
    return None


def parse_strict(text: str) -> dict | None:
    """The whole output is exactly one JSON object of the call shape."""
    try:
        return _as_call(json.loads(text))
    except (ValueError, TypeError, RecursionError):
        return None


def _objects(text: str):
    """Every balanced {...} substring, outermost first, ignoring braces inside quoted strings."""
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        depth, quote, escaped = 0, None, False
        for end in range(start, len(text)):
            ch = text[end]
            if quote:
                escaped, quote = (not escaped and ch == "\\"), (None if ch == quote and not escaped else quote)
                continue
            if ch in "\"'":
                quote = ch
            depth += (ch == "{") - (ch == "}")
            if depth == 0:
                yield text[start : end + 1]
                break


def _load(candidate: str):
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(candidate)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def parse_lenient(text: str) -> dict | None:
    """Find the call in labelled, fenced, prose-wrapped or Python-quoted output."""
    if not isinstance(text, str):
        return None
    text = LABEL.sub("", text.strip(), count=1)
    fenced = FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    try:
        for candidate in [*candidates, text, *_objects(text)]:
            call = _as_call(_load(candidate.strip()))
            if call:
                return call
    except RecursionError:
        return None
    return None


def parse_reference(text: str) -> dict | None:
    """The expected call, or None when the reference is a reply."""
    return parse_strict(text) or parse_lenient(text)


def _canonical(value) -> str:
    if isinstance(value, str):
        value = value.strip()
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def argument_scores(predicted: dict, expected: dict) -> tuple[float, float, float]:
    pred = {(k, _canonical(v)) for k, v in predicted.items()}
    gold = {(k, _canonical(v)) for k, v in expected.items()}
    if not pred and not gold:
        return 1.0, 1.0, 1.0
    correct = len(pred & gold)
    precision = correct / len(pred) if pred else 0.0
    recall = correct / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score_prediction(prediction: str, reference: str) -> dict:
    """Per-sample scores of one raw output against one reference text."""
    expected = parse_reference(reference)
    strict, lenient = parse_strict(prediction), parse_lenient(prediction)
    sample = {
        "expected_tool": expected["tool_name"] if expected else None,
        "predicted_tool": lenient["tool_name"] if lenient else None,
        "parsed": lenient,
        "strict_valid": strict is not None,
        "lenient_valid": lenient is not None,
    }
    sample["tool_correct"] = sample["expected_tool"] == sample["predicted_tool"]
    if expected is None:
        sample.update(exact_match=lenient is None, exact_match_strict=lenient is None)
        return sample
    same_tool = lenient is not None and sample["tool_correct"]
    p, r, f = argument_scores(lenient["arguments"], expected["arguments"]) if same_tool else (0.0, 0.0, 0.0)
    exact = same_tool and f == 1.0
    strict_exact = strict is not None and strict["tool_name"] == expected["tool_name"] and exact
    sample.update(argument_precision=p, argument_recall=r, argument_f1=f, exact_match=exact,
                  exact_match_strict=strict_exact)  # fmt: skip
    return sample


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def aggregate(samples: list[dict]) -> dict:
    calls = [s for s in samples if s["expected_tool"] is not None]
    replies = [s for s in samples if s["expected_tool"] is None]
    return {
        "exact_match_rate": _mean([s["exact_match"] for s in samples]),
        "tool_name_accuracy": _mean([s["tool_correct"] for s in samples]),
        "average_argument_precision": _mean([s["argument_precision"] for s in calls]),
        "average_argument_recall": _mean([s["argument_recall"] for s in calls]),
        "average_argument_f1": _mean([s["argument_f1"] for s in calls]),
        "total_samples": len(samples),
        "exact_match_rate_strict": _mean([s["exact_match_strict"] for s in samples]),
        "json_valid_rate": _mean([s["lenient_valid"] for s in calls]),
        "json_valid_rate_strict": _mean([s["strict_valid"] for s in calls]),
        "no_call_accuracy": _mean([not s["lenient_valid"] for s in replies]),
        "false_call_rate": _mean([s["lenient_valid"] for s in replies]),
        "missed_call_rate": _mean([not s["lenient_valid"] for s in calls]),
        "call_samples": len(calls),
        "no_call_samples": len(replies),
        "parse": "lenient",
    }


def score(predictions: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pair them line by line")
    samples = [score_prediction(p, r) for p, r in zip(predictions, references)]
    return aggregate(samples), samples
