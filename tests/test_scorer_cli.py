"""The scorer CLI's reader: every line is a text or a one-line refusal naming the file and line, never a traceback."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft_router import evaluate
from sft_router.core.errors import UsageError
from sft_router.evaluate import read_jsonl_texts, score_files

CALL = '{"tool_name": "set_timer", "arguments": {"duration_minutes": 10}}'
FOLDER = Path(tempfile.mkdtemp(prefix="scorer-cli-"))  # Hypothesis reruns a test body: one folder for all of them


def write(name: str, data: bytes | str) -> str:
    path = FOLDER / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("5", ":2: a JSON number, not an object"),
        ('"just a string"', ":2: a JSON string, not an object"),
        ("[1, 2]", ":2: a JSON array, not an object"),
        ('{"completion": "abc"}', ":2: no `text` field"),
        ('{"completion": [{"content": 7}]}', ":2: `completion` is a JSON number, not a string"),
        ('{"text": 5}', ":2: `text` is a JSON number, not a string"),
        ('{"other": "x"}', ":2: no `text` field"),
        ("[" * 100_000, ":2: not a JSON line (nested too deeply)"),
        ("{not json", ":2: not a JSON line (Expecting property name"),
        (b"\xff\xfe{}", ":2: not UTF-8 (invalid start byte at byte 0)"),
    ],
    ids=[
        "number",
        "string",
        "list",
        "completion-string",
        "completion-number",
        "text-number",
        "no-field",
        "deep",
        "broken",
        "not-utf8",
    ],  # fmt: skip
)
def test_a_malformed_line_is_refused_naming_file_and_line(line, message, capsys):
    good = f'{{"text": {json.dumps(CALL)}}}\n'.encode()
    predictions = write("bad.jsonl", good + (line.encode() if isinstance(line, str) else line) + b"\n")
    references = write("ref.jsonl", good * 2)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--predictions", predictions, "--references", references])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {predictions}{message}"), err[0]


def test_line_separators_inside_strings_do_not_split_lines():
    text = CALL.replace("set_timer", "set\u2028timer\u0085\x1c")  # all three end a line for str.splitlines()
    path = write("u2028.jsonl", json.dumps({"text": text}, ensure_ascii=False) + "\r\n\n" + json.dumps({"text": CALL}))
    assert read_jsonl_texts(path) == [text, CALL]


def test_a_missing_file_is_one_line(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--predictions", str(FOLDER / "absent.jsonl"), "--references", str(FOLDER / "absent.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0] and "absent.jsonl" in err[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["text", "completion", "content",
                                                                                  "output", "x"]), inner, max_size=3),
    max_leaves=4,
)  # fmt: skip
lines = st.one_of(st.binary(max_size=40), json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode()))
# 2,000 files of one to three fuzzed lines each: about 10 s of one core, most of it Hypothesis drawing examples
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_read(data: bytes) -> None:
    path = write("fuzz.jsonl", data)
    try:
        texts = read_jsonl_texts(path, evaluate.PREDICTION_FIELDS)
    except UsageError as exc:
        message = str(exc)
        assert "\n" not in message and re.match(rf"{re.escape(path)}:\d+: ", message), message
        number = int(message[len(path) + 1 :].split(":")[0])
        assert 1 <= number <= data.count(b"\n") + 1
        return
    assert all(isinstance(text, str) for text in texts)
    assert len(texts) == sum(1 for line in data.split(b"\n") if line.strip())


@FUZZ
@given(st.lists(lines, min_size=1, max_size=3))
def test_fuzzed_lines_are_read_or_refused_in_one_line(parts):
    check_read(b"\n".join(parts))


@settings(max_examples=100, deadline=None)  # each scores with 1000 bootstrap resamples
@given(st.lists(st.text(max_size=80) | json_values.map(json.dumps), min_size=1, max_size=4))
def test_fuzzed_prediction_texts_score_within_bounds(texts):
    predictions = write("pred.jsonl", "\n".join(json.dumps({"text": t}) for t in texts))
    references = write("refs.jsonl", "\n".join(json.dumps({"text": CALL}) for _ in texts))
    metrics = score_files(predictions, references)
    rates = {k: v for k, v in metrics.items() if isinstance(v, float) and k.endswith(("_rate", "_accuracy", "_f1"))}
    assert rates and all(0.0 <= v <= 1.0 or math.isnan(v) for v in rates.values()), rates
