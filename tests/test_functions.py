"""The function generator: values normalised as the declarations say, optional parameters only when stated, nested
objects checked, held-out domains only in test_procedural, masked names that keep the description, irrelevance
rows that show nothing serving them, and typed arguments in the published splits."""

from __future__ import annotations

import json
import random
import re

import pytest
from conftest import ROOT, TINY

from sft_router import data
from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError
from sft_router.core.router_format import tools_in_prompt
from sft_router.datagen import checks as data_checks
from sft_router.datagen.functions import FAMILY, FunctionRows, load_functions

PUBLISHED = "recipes/gemma-3-270m-it/router.yaml"
SPEC = str(ROOT / "recipes/gemma-3-270m-it/functions.yaml")


@pytest.fixture(scope="module")
def published():
    """The published recipe's splits, built once for the module (about 10 s)."""
    (recipe,) = parse_recipe(["--config", str(ROOT / PUBLISHED)])
    for key in ("catalog", "system_prompt", "functions"):
        setattr(recipe.data, key, str(ROOT / getattr(recipe.data, key)))
    return data.build_splits(recipe)


def function_rows(rows: list[dict], kind: str = "call") -> list[dict]:
    return [row for row in rows if row["family"].startswith(FAMILY) and row["kind"] == kind]


def parameters(row: dict) -> dict:
    return load_functions(SPEC).functions[row["family"].removeprefix(FAMILY)]["params"]


def test_words_and_percentages_map_to_the_number_the_description_asks_for():
    rows = FunctionRows(load_functions(SPEC), random.Random(0), 0.0)
    said = {}
    for kind in ("minutes", "count", "fraction"):
        for _ in range(400):
            text, value = rows.value({"kind": kind})
            said[text] = value
    assert said["two hours"] == 120 and said["an hour and a half"] == 90 and said["half an hour"] == 30
    assert said["a dozen"] == 12 and said["half a dozen"] == 6 and said["two dozen"] == 24
    assert said["5%"] == 0.05 and said["12.5 percent"] == 0.125 and said["40%"] == 0.4
    assert all(value == int(text.split()[0]) for text, value in said.items() if re.fullmatch(r"\d+ minutes", text))


def test_fractions_in_the_generated_calls_are_the_stated_percentages(published):
    checked = 0
    for row in function_rows(published["train"]):
        arguments, shown = json.loads(row["arguments"]), json.loads(row["values"])
        for name, spec in parameters(row).items():
            if spec["kind"] == "fraction" and name in arguments:
                percent = float(re.match(r"[\d.]+", shown[name]).group())
                assert arguments[name] == round(percent / 100, 4) and f"{percent:g}" in row["user"]
                checked += 1
    assert checked > 20


def test_an_optional_parameter_is_in_the_call_only_when_the_request_states_it(published):
    stated = left_out = 0
    for row in function_rows(published["train"]) + function_rows(published["test_procedural"]):
        arguments, shown = json.loads(row["arguments"]), json.loads(row["values"])
        for name, spec in parameters(row).items():
            if "default" not in spec:
                assert name in arguments
                continue
            if spec["kind"] == "boolean":
                said = any(spec.get(key, "\0") in row["user"] for key in ("say_true", "say_false"))
            else:
                said = name in shown and spec["say"].replace("{}", shown[name]) in row["user"]
            assert said == (name in arguments), (row["user"], name)
            stated += said
            left_out += not said
    assert stated > 50 and left_out > 50


def test_nested_objects_are_declared_with_their_own_properties_and_checked(published):
    rows = [row for row in function_rows(published["test"]) if "{" in row["arguments"][1:]]
    assert rows, "no object argument in test"
    row = rows[0]
    shown = {tool["tool_name"]: tool for tool in tools_in_prompt(row["prompt"][0]["content"])}
    properties = shown[row["tool_name"]]["arguments"]["properties"]
    arguments = json.loads(row["arguments"])
    name = next(key for key, value in arguments.items() if isinstance(value, dict))
    assert properties[name]["type"] == "object" and properties[name]["required"] == list(arguments[name])
    validator = data_checks.RowValidator(data.load_catalog(ROOT / "recipes/gemma-3-270m-it/catalog.yaml"))
    validator.check(row)
    broken = dict(arguments, **{name: dict(list(arguments[name].items())[1:])})  # a required inner key dropped
    bad = {**row, "arguments": json.dumps(broken), "completion": [{"role": "assistant", "content": json.dumps(
        {"tool_name": row["tool_name"], "arguments": broken})}]}  # fmt: skip
    with pytest.raises(UsageError, match="break the schema"):
        validator.check(bad)


def test_test_procedural_shows_only_held_out_domains_that_no_other_split_shows(published):
    spec = load_functions(SPEC)
    held = {f["doc"] for fs in spec.held_out.values() for f in fs}
    seen = {f["doc"] for fs in spec.domains.values() for f in fs}
    assert not held & seen and len(spec.domains) >= 16 and all(len(fs) >= 4 for fs in spec.domains.values())
    procedural = published["test_procedural"]
    assert procedural and all(row["kind"] == "call" and row["family"].startswith(FAMILY) for row in procedural)
    for split in ("train", "validation", "test", "test_unseen"):
        prompts = {row["prompt"][0]["content"] for row in published[split]}
        described = {t["tool_description"] for prompt in prompts for t in tools_in_prompt(prompt)}
        assert not described & held, split
    assert {t["tool_description"] for row in procedural for t in tools_in_prompt(row["prompt"][0]["content"])} <= held


def test_masking_hides_the_name_but_keeps_the_description():
    spec = load_functions(SPEC)
    rows = FunctionRows(spec, random.Random(3), mask_rate=1.0)
    tools, names, asked = rows.scene(6, 1, spec.domains)
    docs = {f["doc"]: f["name"] for fs in spec.domains.values() for f in fs}
    assert len(tools) >= 2 and all(re.fullmatch(r"func_[a-z0-9]{2}", tool["name"]) for tool in tools)
    assert all(names[docs[tool["description"]]] == tool["name"] for tool in tools)  # the description is the real one
    assert len(asked) == 7 and sum(f["name"] not in names for f in asked) == 1


def test_masked_scenes_call_the_masked_name_at_the_recipe_rate(published):
    calls = function_rows(published["train"])
    masked = [row for row in calls if row["tool_name"].startswith("func_")]
    assert 0.15 < len({r["scene"] for r in masked}) / len({r["scene"] for r in calls}) < 0.45
    for row in masked[:50]:
        real = row["family"].removeprefix(FAMILY)
        assert real not in row["prompt"][0]["content"]
        shown = {t["tool_name"]: t for t in tools_in_prompt(row["prompt"][0]["content"])}
        assert shown[row["tool_name"]]["tool_description"] == load_functions(SPEC).description(real)


def test_irrelevance_rows_show_no_function_that_serves_the_request(published):
    spec = load_functions(SPEC)
    rows = function_rows(published["train"], "missing_tool") + function_rows(published["test"], "missing_tool")
    assert len(rows) > 50
    catalog = data.load_catalog(ROOT / "recipes/gemma-3-270m-it/catalog.yaml")
    for row in rows:
        asked = spec.functions[row["family"].removeprefix(FAMILY)]
        shown = tools_in_prompt(row["prompt"][0]["content"])
        assert asked["doc"] not in {t["tool_description"] for t in shown}
        assert {f["doc"] for f in spec.domains[next(d for d, fs in spec.domains.items() if asked in fs)]} >= {
            t["tool_description"] for t in shown
        }  # plausible: the shown functions are of the asked one's domain
        assert row["completion"][0]["content"] == catalog.replies["missing_tool"]["en"]
    validator = data_checks.RowValidator(catalog, spec)
    planted = {**rows[0], "family": FAMILY + next(f["name"] for fs in spec.domains.values() for f in fs
                                                 if f["doc"] in rows[0]["prompt"][0]["content"])}  # fmt: skip
    with pytest.raises(UsageError, match="which serves it"):
        validator.check(planted)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_quarter_of_call_arguments_or_more_are_typed_and_objects_occur(published, split):
    kinds = data.argument_types(published[split])
    assert 1 - kinds["string"] / sum(kinds.values()) >= 0.25, kinds
    assert kinds["object"] > 0 and kinds["array"] > 0 and kinds["boolean"] > 0 and kinds["number"] > 0


def test_the_same_recipe_and_seed_give_the_same_function_rows(workspace):
    (recipe,) = parse_recipe(["--config", TINY])
    first, second = data.build_splits(recipe), data.build_splits(recipe)
    assert data.content_hash(first) == data.content_hash(second)
    assert function_rows(first["test_procedural"]) and len(first["test_procedural"]) == 16


def test_function_rows_without_a_spec_fail_in_one_line_naming_the_key(workspace):
    (recipe,) = parse_recipe(["--config", TINY])
    recipe.data.functions = None
    with pytest.raises(UsageError, match="need a `functions` spec"):
        data.build_splits(recipe)
