"""Pure-Python scoring of router outputs, shared by `make eval`, the `evaluate` module and any predictions file.

A reference is either a tool call (JSON or Python-dict text with `tool_name` and `arguments`) or a reply
(any other text). Predictions are parsed two ways: strictly (the whole output is one JSON object of the
call shape) and leniently (leading labels such as `output：`/`Output:`, code fences, prose before or after
the object, Python-dict quoting, trailing text). Headline metrics use the lenient parse (`"parse":
"lenient"` in the metrics says so); the `_strict` metrics use the strict one. Nothing here raises on any
model output, and work per output is bounded (see MAX_TEXT, MAX_CANDIDATE, MAX_STARTS).

How each metric is computed (the seed's six names come first and keep the seed's meaning):
- exact_match_rate: share of all samples that are right. A call sample is right when the parsed call has
  the expected tool name and the same arguments: same keys, equal values after JSON canonicalisation
  (key order ignored at every depth, surrounding whitespace of a top-level string value ignored, types
  kept: "3" is not 3). A reply sample is right when the output is a non-empty reply that does not attempt a
  call (see call_attempted below; the wording of a reply is not scored).
- tool_name_accuracy: share of all samples whose predicted label equals the expected one. Labels: the tool
  name of a parsed call; "invalid" for an attempted call that does not parse; "none" for no attempt (so a
  reply sample answered without attempting a call is right). An output attempts a call when it parses as
  one or, once labels are stripped, opens with `{` (or a code fence and `{`) or mentions `tool_name`.
- average_argument_precision, average_argument_recall, average_argument_f1: means over call samples only
  (reply samples do not enter). Per sample, over (key, canonical value) pairs: precision = correct pairs /
  predicted pairs, recall = correct pairs / expected pairs, F1 their harmonic mean; all three are 1.0 when
  both sides have no arguments; a call of the wrong tool, or no call, scores 0 on all three.
- total_samples: number of scored samples.
- exact_match_rate_strict: exact_match_rate where a call sample also needs the strict parse to succeed.
- json_valid_rate / json_valid_rate_strict: share of call samples whose output parses as a call
  (leniently / strictly), whatever the tool.
- no_call_accuracy, false_call_rate: share of reply samples answered without attempting a call (parsed or
  malformed), and 1 - that.
- missed_call_rate: share of call samples answered without attempting a call (prose or nothing); a
  malformed attempt counts against json_valid_rate instead.
- call_samples / no_call_samples: how many samples expected a call / a reply.
- exact_match_rate_ci95 / average_argument_f1_ci95: percentile bootstrap 95% intervals: the samples
  (all samples, resp. call samples) are resampled with replacement 1000 times with a seeded generator and
  the 2.5th and 97.5th percentiles of the resampled means reported (settings under `bootstrap`).
- per_tool: for each label (every expected or predicted tool name, "invalid", "none"), support
  (samples expecting it), predicted (samples predicting it), precision = both / predicted, recall = both
  / support, f1, and exact_match_rate over its support; a ratio with a zero denominator is 0.0.
- confusion: counts of samples by expected label (outer key) and predicted label (inner key).

Usage: from sft_router.evaluation.scoring import score; metrics, samples = score(predictions, references)
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path

from sft_router.core.router_format import target_text

# A router call is a few hundred characters; these bounds keep hostile outputs (megabytes, deep nesting)
# cheap: ast.literal_eval in particular is slow and recursive on big input.
MAX_TEXT = 20_000
MAX_CANDIDATE = 4_000
MAX_STARTS = 64
NO_CALL = "none"
INVALID = "invalid"
BOOTSTRAP = {"resamples": 1000, "seed": 0, "confidence": 0.95}
SEED_KEYS = (
    "exact_match_rate",
    "tool_name_accuracy",
    "average_argument_precision",
    "average_argument_recall",
    "average_argument_f1",
    "total_samples",
)

LABEL = re.compile(
    r"^\s*(?:output|answer|response|result|assistant|model|tool[ _]?call|json|输出|回答|答案|结果)\s*[:：]\s*",
    re.IGNORECASE,
)
ATTEMPT = re.compile(r"^(?:```[A-Za-z]*\s*)?\{|tool_name")
FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)
PARSE_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError)


def _as_call(obj) -> dict | None:
    """The call in `obj` with JSON-normal arguments (tuples become lists), or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("tool_name"), str) or not obj["tool_name"].strip():
        return None
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict) or not all(isinstance(key, str) for key in arguments):
        return None
    call = {"tool_name": obj["tool_name"].strip(), "arguments": arguments}
    try:  # a call must be UTF-8 JSON: Python sets, bytes, complex numbers or lone surrogates are not arguments
        return json.loads(json.dumps(call, ensure_ascii=False).encode("utf-8"))
    except PARSE_ERRORS:
        return None


def parse_strict(text) -> dict | None:
    """The whole output is exactly one JSON object of the call shape."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return None
    try:
        return _as_call(json.loads(text))
    except PARSE_ERRORS:
        return None


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the {...} opened at `start`, ignoring braces inside quotes; None if not closed soon."""
    depth, quote, escaped = 0, None, False
    for end in range(start, min(len(text), start + MAX_CANDIDATE)):
        ch = text[end]
        if quote:
            escaped, quote = (not escaped and ch == "\\"), (None if ch == quote and not escaped else quote)
        elif ch in "\"'":
            quote = ch
        elif ch in "{}":
            depth += 1 if ch == "{" else -1
            if depth == 0:
                return end + 1
    return None


def _objects(text: str):
    """Balanced {...} spans, from the first MAX_STARTS opening braces, outermost first."""
    starts = (i for i, ch in enumerate(text) if ch == "{")
    for count, start in enumerate(starts):
        if count == MAX_STARTS:
            return
        end = _balanced_end(text, start)
        if end is not None:
            yield text[start:end]


def _load_json(candidate: str):
    try:
        return json.loads(candidate)
    except PARSE_ERRORS:
        return None


def _load_python(candidate: str):
    if len(candidate) > MAX_CANDIDATE:
        return None
    try:
        return ast.literal_eval(candidate)
    except PARSE_ERRORS:
        return None


def _strip_labels(text: str) -> str:
    for _ in range(3):  # e.g. "Assistant: Output: {...}"
        text = LABEL.sub("", text, count=1)
    return text


def parse_lenient(text) -> dict | None:
    """The first call found in labelled, fenced, prose-wrapped, Python-quoted or trailing-text output."""
    if not isinstance(text, str):
        return None
    text = _strip_labels(text[:MAX_TEXT].strip())
    fenced = [match.group(1).strip() for _, match in zip(range(4), FENCE.finditer(text))]
    candidates = [*fenced, text, *_objects(text)]
    # JSON first everywhere: Python reads some JSON differently ("\ud83d\ude00" escapes, `#` as a comment).
    for load in (_load_json, _load_python):
        for candidate in candidates:
            call = _as_call(load(candidate))
            if call:
                return call
    return None


def attempted_call(text) -> bool:
    """Whether the output tries to be a call, parsed or not: it opens with `{` or mentions `tool_name`."""
    return isinstance(text, str) and bool(ATTEMPT.search(_strip_labels(text[:MAX_TEXT].strip())))


def parse_reference(text: str) -> dict | None:
    """The expected call, or None when the reference is a reply."""
    return parse_strict(text) or parse_lenient(text)


def _canonical(value) -> str:
    if isinstance(value, str):
        value = value.strip()
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def argument_scores(predicted: dict, expected: dict) -> tuple[float, float, float]:
    """Precision, recall and F1 of the predicted (key, value) pairs against the expected ones."""
    pred = {(key, _canonical(value)) for key, value in predicted.items()}
    gold = {(key, _canonical(value)) for key, value in expected.items()}
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
        "call_attempted": lenient is not None or attempted_call(prediction),
    }
    sample["tool_correct"] = _label(sample["expected_tool"]) == predicted_label(sample)
    if expected is None:
        replied = not sample["call_attempted"] and isinstance(prediction, str) and bool(prediction.strip())
        sample.update(exact_match=replied, exact_match_strict=replied)
        return sample
    same_tool = lenient is not None and sample["tool_correct"]
    p, r, f = argument_scores(lenient["arguments"], expected["arguments"]) if same_tool else (0.0, 0.0, 0.0)
    exact = same_tool and f == 1.0
    sample.update(
        argument_precision=p,
        argument_recall=r,
        argument_f1=f,
        exact_match=exact,
        exact_match_strict=exact and strict is not None,
    )
    return sample


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _quantile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bootstrap_interval(values, resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of `values`: the same seed gives the same interval."""
    values = [float(v) for v in values]
    if not values:
        return [0.0, 0.0]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return [_quantile(means, tail), _quantile(means, 1 - tail)]


def interval(metrics: dict, key: str) -> tuple[float, float] | None:
    """The bootstrap 95% interval `aggregate` (or BFCL's scorer) stored beside `key`, or None if it has none."""
    bounds = metrics.get(f"{key}_ci95")
    return (float(bounds[0]), float(bounds[1])) if bounds else None


def _label(tool: str | None) -> str:
    return NO_CALL if tool is None else tool


def predicted_label(sample: dict) -> str:
    """The parsed tool's name, "invalid" for a call attempt that did not parse, or "none"."""
    if sample["predicted_tool"] is not None:
        return sample["predicted_tool"]
    return INVALID if sample["call_attempted"] else NO_CALL


def label_order(labels) -> list[str]:
    """Tool names sorted, then "invalid" and "none" last."""
    labels = set(labels)
    return sorted(labels - {INVALID, NO_CALL}) + [label for label in (INVALID, NO_CALL) if label in labels]


def confusion_table(samples: list[dict]) -> dict[str, dict[str, int]]:
    """Counts by expected label, then predicted label (see predicted_label)."""
    pairs = [(_label(s["expected_tool"]), predicted_label(s)) for s in samples]
    table = {}
    for expected in label_order([e for e, _ in pairs]):
        predicted = [p for e, p in pairs if e == expected]
        table[expected] = {label: predicted.count(label) for label in label_order(predicted)}
    return table


def per_tool_scores(samples: list[dict]) -> dict[str, dict]:
    """Tool-selection precision, recall and F1 for every expected or predicted label, with support."""
    pairs = [(_label(s["expected_tool"]), predicted_label(s), s["exact_match"]) for s in samples]
    scores = {}
    for label in label_order([e for e, _, _ in pairs] + [p for _, p, _ in pairs]):
        support = [exact for e, _, exact in pairs if e == label]
        predicted = sum(p == label for _, p, _ in pairs)
        both = sum(e == p == label for e, p, _ in pairs)
        precision, recall = _ratio(both, predicted), _ratio(both, len(support))
        f1 = _ratio(2 * precision * recall, precision + recall)
        scores[label] = {
            "support": len(support),
            "predicted": predicted,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "exact_match_rate": _mean(support),
        }
    return scores


def aggregate(samples: list[dict]) -> dict:
    """Metrics over per-sample scores, the seed's keys first (see the module docstring for each one)."""
    calls = [s for s in samples if s["expected_tool"] is not None]
    replies = [s for s in samples if s["expected_tool"] is None]
    return {
        "exact_match_rate": _mean(s["exact_match"] for s in samples),
        "tool_name_accuracy": _mean(s["tool_correct"] for s in samples),
        "average_argument_precision": _mean(s["argument_precision"] for s in calls),
        "average_argument_recall": _mean(s["argument_recall"] for s in calls),
        "average_argument_f1": _mean(s["argument_f1"] for s in calls),
        "total_samples": len(samples),
        "exact_match_rate_strict": _mean(s["exact_match_strict"] for s in samples),
        "json_valid_rate": _mean(s["lenient_valid"] for s in calls),
        "json_valid_rate_strict": _mean(s["strict_valid"] for s in calls),
        "no_call_accuracy": _mean(not s["call_attempted"] for s in replies),
        "false_call_rate": _mean(s["call_attempted"] for s in replies),
        "missed_call_rate": _mean(not s["call_attempted"] for s in calls),
        "call_samples": len(calls),
        "no_call_samples": len(replies),
        "parse": "lenient",
        "exact_match_rate_ci95": bootstrap_interval([s["exact_match"] for s in samples], **BOOTSTRAP),
        "average_argument_f1_ci95": bootstrap_interval([s["argument_f1"] for s in calls], **BOOTSTRAP),
        "bootstrap": dict(BOOTSTRAP, method="percentile"),
        "per_tool": per_tool_scores(samples),
        "confusion": confusion_table(samples),
    }


def score(predictions: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    """Metrics and per-sample scores of raw outputs paired line by line with reference texts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pair them line by line")
    samples = [score_prediction(p, r) for p, r in zip(predictions, references)]
    return aggregate(samples), samples


def metric_definitions() -> list[str]:
    """The docstring's `How each metric is computed` bullets, one string each (for the comparison page)."""
    section = __doc__.split("How each metric is computed", 1)[1].split("\nUsage:", 1)[0]
    bullets = section.split("\n- ")[1:]
    return [" ".join(line.strip() for line in bullet.splitlines()) for bullet in bullets]


def write_variant(out: Path, rows, outputs: list[str]) -> dict:
    """Score one variant's raw outputs and write its metrics.json and predictions.jsonl under `out`."""
    metrics, samples = score(outputs, [target_text(row) for row in rows])
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for row, output, sample in zip(rows, outputs, samples):
            record = {"id": row["id"], "kind": row["kind"], "expected": target_text(row), "output": output, **sample}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return metrics
