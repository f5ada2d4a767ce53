"""The evaluated splits: the hand-written rows are checked and rendered with the recipe's prompt; eval_splits is
checked; a generated split the dataset lacks is skipped with a note."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import ROOT, TINY

from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError
from sft_router.core.router_format import render_tool, target_text
from sft_router.datagen.catalog import load_catalog
from sft_router.evaluation.eval_data import check_split_names, load_eval_splits, read_handwritten
from sft_router.evaluation.scoring import parse_reference

PUBLISHED = "recipes/gemma-3-270m-it/router.yaml"


@pytest.fixture(scope="module")
def published():
    (recipe,) = parse_recipe(["--config", str(ROOT / PUBLISHED)])
    catalog = load_catalog(ROOT / recipe.data.catalog)
    return recipe, catalog, (ROOT / recipe.data.system_prompt).read_text()


def test_the_published_handwritten_split_is_large_mixed_and_schema_valid(published):
    recipe, catalog, system_prompt = published
    rows = read_handwritten(ROOT / recipe.eval.handwritten, catalog, system_prompt)
    counts = Counter((row["lang"], row["kind"]) for row in rows)
    assert len(rows) >= 150 and min(counts[(lang, kind)] for lang in ("zh", "en") for kind in ("call", "reply")) >= 20
    assert all(2 <= len(row["tools"]) <= 5 for row in rows) and len({row["user"] for row in rows}) == len(rows)
    for row in rows:
        system = row["prompt"][0]["content"]
        assert system.startswith(system_prompt.split("{tools}")[0]) and row["prompt"][1]["content"] == row["user"]
        assert system.endswith(" ".join(render_tool(catalog.tools[name]) for name in row["tools"]))
        expected = parse_reference(target_text(row))
        assert (expected["tool_name"] if expected else "") == row["tool_name"]


def write_rows(path, *records) -> str:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return str(path)


GOOD = {"id": "a", "lang": "en", "user": "timer 10 minutes", "tools": ["set_timer", "set_alarm"],
        "expected": {"tool_name": "set_timer", "arguments": {"duration_minutes": 10}}}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"expected": {"tool_name": "set_timer", "arguments": {"duration_minutes": "10"}}},
         r"rows.jsonl:2 \(b\): arguments \{\"duration_minutes\": \"10\"\} break the schema of 'set_timer'"),
        ({"expected": {"tool_name": "set_timer", "arguments": {"duration_minutes": 10, "mins": 1}}},
         "break the schema of 'set_timer'"),
        ({"tools": ["set_alarm", "book_flight"]}, r"rows.jsonl:2 \(b\): `tools` must list distinct catalog tools"),
        ({"tools": ["set_alarm", "cancel_alarm"]}, "expected tool 'set_timer' is not in `tools`"),
        ({"lang": "fr"}, "`lang` must be one of zh, en"),
        ({"id": "a"}, r"rows.jsonl:2 \(a\): id used twice"),
    ],
)  # fmt: skip
def test_a_broken_handwritten_row_fails_in_one_line_naming_it(published, tmp_path, change, message):
    _, catalog, system_prompt = published
    path = write_rows(tmp_path / "rows.jsonl", GOOD, {**GOOD, "id": "b", **change})
    with pytest.raises(UsageError, match=message) as error:
        read_handwritten(path, catalog, system_prompt)
    assert "\n" not in str(error.value)


def test_a_reply_row_renders_a_reference_that_is_no_call(published, tmp_path):
    _, catalog, system_prompt = published
    path = write_rows(
        tmp_path / "rows.jsonl", GOOD, {**GOOD, "id": "b", "lang": "zh", "user": "你好", "expected": None}
    )
    call, reply = read_handwritten(path, catalog, system_prompt)
    assert parse_reference(target_text(call)) == GOOD["expected"] and call["kind"] == "call"
    assert parse_reference(target_text(reply)) is None and reply["kind"] == "reply" and reply["tool_name"] == ""


@pytest.mark.parametrize(
    ("names", "message"),
    [(["test", "tset"], "names 'tset'"), (["handwritten", "test"], "list `test` first"), (["test", "test"], "once")],
)
def test_eval_splits_must_be_known_with_test_first(names, message):
    with pytest.raises(UsageError, match=message):
        check_split_names(names)


def test_a_generated_split_the_dataset_lacks_is_skipped_with_a_note(published, workspace):
    from datasets import Dataset, DatasetDict

    _, catalog, system_prompt = published
    rows = read_handwritten(write_rows(workspace / "rows.jsonl", GOOD), catalog, system_prompt)
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk("runs/tiny/dataset/hf")
    flags = ["--eval_splits", "test", "test_unseen", "handwritten", "--handwritten", "rows.jsonl"]
    (recipe,) = parse_recipe(["--config", TINY, *flags])
    notes = []
    splits = load_eval_splits(recipe, notes)
    assert list(splits) == ["test", "handwritten"] and splits["test"][0]["user"] == GOOD["user"]
    assert notes == ["eval: split 'test_unseen' is not in runs/tiny/dataset (this generator makes none); skipped"]
    (recipe,) = parse_recipe(["--config", TINY, "--eval_splits", "test", "handwritten", "--handwritten", ""])
    with pytest.raises(UsageError, match="no `handwritten` file is set"):
        load_eval_splits(recipe)
