"""The tool grammar, run by llama.cpp's own grammar engine on the tiny GGUF's vocabulary.

`admits` feeds a text's tokens to llama.cpp's grammar sampler one at a time: each token must keep a
finite logit after the sampler is applied (the grammar allows it), and at the end <end_of_turn> must be
allowed (the text is complete). This is exactly the check constrained decoding makes at every step.
"""

from __future__ import annotations

import ctypes
import json
import os

import pytest

from sft_router.core.router_format import tools_in_prompt
from sft_router.evaluation.grammar import build_grammar, integer_range


@pytest.fixture(scope="session")
def llm(tiny_run):
    reason = os.environ.get("SFT_ROUTER_RUNTIME_UNAVAILABLE")
    if reason:
        pytest.skip(reason)
    from sft_router.modeling.llama_runtime import load_gguf

    return load_gguf(tiny_run / "runs/tiny/gguf/tiny-Q8_0.gguf")


@pytest.fixture(scope="session")
def test_rows(tiny_run):
    return [json.loads(line) for line in (tiny_run / "runs/tiny/dataset/test.jsonl").read_text().splitlines()]


def allowed(llama_cpp, sampler, token: int) -> bool:
    candidates = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    array = llama_cpp.llama_token_data_array(candidates, 1, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    return candidates[0].logit != float("-inf")


def admits(llm, grammar: str, text: str) -> bool:
    import llama_cpp

    from sft_router.modeling.llama_runtime import stop_token_id

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")
    assert sampler, "llama.cpp could not parse the grammar"
    try:
        for token in llm.tokenize(text.encode(), add_bos=False, special=False):
            if not allowed(llama_cpp, sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(llama_cpp, sampler, stop_token_id(llm))
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_tools_are_read_back_from_every_test_prompt(test_rows):
    for row in test_rows:
        assert [t["tool_name"] for t in tools_in_prompt(row["prompt"][0]["content"])] == row["tools"]


@pytest.fixture(scope="session", params=["recipes/tiny/router.yaml", "recipes/gemma-3-270m-it/router.yaml"])
def recipe_rows(request):
    """Every row of a recipe's generated dataset, all splits: rows the data helpers add later come along. The
    published recipe's (about 8000 rows, its catalog and functions) take about 10 s to build and check."""
    from sft_router.core.config import parse_recipe
    from sft_router.data import build_splits

    return [row for rows in build_splits(parse_recipe(["--config", request.param])[0]).values()
            for row in rows]  # fmt: skip


def test_grammar_admits_every_generated_target(llm, recipe_rows):
    assert sum(bool(row["tool_name"]) for row in recipe_rows) > 50
    for row in recipe_rows:
        target = row["completion"][0]["content"]
        assert admits(llm, build_grammar(row["prompt"][0]["content"]), target), (row["id"], target)


def test_grammar_rejects_calls_outside_the_prompts_tools_and_schemas(llm, test_rows):
    row = next(r for r in test_rows if r["tool_name"])
    grammar = build_grammar(row["prompt"][0]["content"])
    arguments = json.loads(row["arguments"])
    unlisted = json.dumps({"tool_name": "send_email_now", "arguments": arguments}, ensure_ascii=False)
    extra_key = json.dumps(
        {"tool_name": row["tool_name"], "arguments": {**arguments, "bogus": "x"}}, ensure_ascii=False
    )
    assert not admits(llm, grammar, unlisted)
    assert not admits(llm, grammar, extra_key)
    assert not admits(llm, grammar, "Sure! " + unlisted)  # a reply may not carry a call either
    assert admits(
        llm, grammar, json.dumps({"tool_name": row["tool_name"], "arguments": arguments}, ensure_ascii=False)
    )


ALARM = {"type": "object", "required": ["time", "options"], "properties": {
    "time": {"type": "string"}, "level": {"type": "integer", "minimum": 0, "maximum": 100},
    "repeat": {"type": "string", "enum": ["每天", "once", "好😀", 'say "hi" \\ \n']}, "loud": {"type": "boolean"},
    "options": {"type": "object", "required": ["volume"], "properties": {
        "volume": {"type": "number", "minimum": 1, "maximum": 5}, "label": {"type": "string"}}},
    "tags": {"type": "array", "items": {"type": "string"}},
    "weights": {"type": "array", "items": {"type": "number"}}}}  # fmt: skip


def tool_prompt(*schemas: dict) -> str:
    """A prompt listing one tool per schema, named tool0, tool1, ... as render_tool would show them."""
    return "tools: " + " ".join(json.dumps({"tool_name": f"tool{i}", "tool_description": "d", "arguments": schema},
                                           ensure_ascii=False) for i, schema in enumerate(schemas))  # fmt: skip


def call(arguments: dict, name: str = "tool0") -> str:
    return json.dumps({"tool_name": name, "arguments": arguments}, ensure_ascii=False)


def test_schema_valid_calls_are_admitted_in_properties_order_with_utf8_text(llm):
    grammar = build_grammar(tool_prompt(ALARM))
    full = {"time": "七点", "level": 100, "repeat": "每天", "loud": True, "options": {"volume": 2.5, "label": "早"},
            "tags": ["起床", "work"], "weights": [1, -0.5, 1e-05, 0.1 + 0.2, 0.00012345678901234567]}  # fmt: skip
    assert admits(llm, grammar, call(full))
    assert admits(llm, grammar, call({"time": "7", "options": {"volume": 1}}))  # the required keys alone
    for value in ("好😀", 'say "hi" \\ \n'):  # json.dumps writes the emoji as is, the quote and newline escaped
        assert admits(llm, grammar, call({"time": "7", "repeat": value, "options": {"volume": 1}, "tags": []}))
    assert not admits(llm, grammar, call({"time": "7", "options": {"volume": 1}, "level": 3}))  # properties order


def test_schema_invalid_calls_are_rejected(llm):
    grammar = build_grammar(tool_prompt(ALARM))
    base = {"time": "7", "options": {"volume": 1}}
    invalid = [
        {"time": 7, "options": {"volume": 1}},  # wrong type
        {**base, "level": "3"},
        {"time": "7", "level": 3.5, "options": {"volume": 1}},  # integer expected
        {"time": "7", "level": 101, "options": {"volume": 1}},  # above maximum
        {"time": "7", "level": -1, "options": {"volume": 1}},  # below minimum
        {"time": "7", "repeat": "daily", "options": {"volume": 1}},  # not in the enum
        {"time": "7", "loud": "true", "options": {"volume": 1}},
        {"options": {"volume": 1}},  # required `time` missing
        {**base, "bogus": 1},  # unknown key
        {"time": "7", "options": {"label": "x"}},  # the nested object's required `volume` missing
        {"time": "7", "options": {"volume": 1, "extra": 2}},
        {**base, "tags": ["a", 3]},  # array item of the wrong type
        {**base, "weights": ["1"]},
        {"time": "7", "repeat": 'say "hi" \\ ', "options": {"volume": 1}},
    ]
    for arguments in invalid:
        assert not admits(llm, grammar, call(arguments)), arguments
    assert not admits(llm, grammar, call(base, name="tool1"))


def test_number_bounds_are_not_enforced(llm):
    """llama.cpp's converter ignores minimum/maximum on numbers (integers are bounded by integer_range)."""
    grammar = build_grammar(tool_prompt(ALARM))
    assert admits(llm, grammar, call({"time": "7", "options": {"volume": 9.5}}))


def test_degenerate_schemas(llm):
    grammar = build_grammar(tool_prompt({"type": "object"}, {"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"description": "no type"}}}))  # fmt: skip
    assert admits(llm, grammar, call({}))  # no properties: exactly {}
    assert not admits(llm, grammar, call({"a": "x"}))
    for arguments in ({}, {"a": "x"}, {"b": [1, {"c": None}]}, {"a": "x", "b": "y"}):  # all optional, any value
        assert admits(llm, grammar, call(arguments, name="tool1")), arguments
    assert not admits(llm, grammar, call({"c": 1}, name="tool1"))


def test_refs_resolve_within_each_tool(llm):
    """A pydantic-style schema, as a served request's tool may carry: `$ref` into the tool's own `$defs`."""
    schema = {"$defs": {"Place": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}},
              "type": "object", "required": ["to"], "properties": {"to": {"$ref": "#/$defs/Place"}}}  # fmt: skip
    rated = {"$defs": {"Place": {"type": "integer", "minimum": 1, "maximum": 5}}, "type": "object",
             "required": ["to"], "properties": {"to": {"$ref": "#/$defs/Place"}}}  # fmt: skip
    grammar = build_grammar(tool_prompt(schema, rated))  # the same `#/$defs/Place`, another schema
    assert admits(llm, grammar, call({"to": {"city": "北京"}}))
    assert not admits(llm, grammar, call({"to": {"town": "x"}}))
    assert not admits(llm, grammar, call({"to": 5}))
    assert admits(llm, grammar, call({"to": 5}, name="tool1"))
    assert not admits(llm, grammar, call({"to": {"city": "北京"}}, name="tool1"))


def test_patterns_anchored_are_enforced_unanchored_are_dropped(llm):
    """The converter translates only `^...$` patterns and asserted on JSON Schema's usual unanchored ones."""
    code, free = {"type": "string", "pattern": "^[A-Z]{2}[0-9]+$"}, {"type": "string", "pattern": "[0-9]"}
    grammar = build_grammar(tool_prompt({"type": "object", "properties": {"code": code, "free": free}}))
    assert admits(llm, grammar, call({"code": "AB12", "free": "x"}))
    assert not admits(llm, grammar, call({"code": "A12"}))
    assert not admits(llm, grammar, call({"free": 3}))


def test_a_schema_the_converter_cannot_read_names_its_tool():
    with pytest.raises(ValueError, match="tool 'tool1'.*other.json"):
        build_grammar(tool_prompt({}, {"type": "object", "properties": {"doc": {"$ref": "other.json"}}}))


def test_replies_and_calls_only(llm):
    prompt = tool_prompt(ALARM)
    assert admits(llm, build_grammar(prompt), "Sure, what time?")
    assert not admits(llm, build_grammar(prompt), " leading blank")
    assert not admits(llm, build_grammar(prompt, calls_only=True), "Sure, what time?")
    assert admits(llm, build_grammar(prompt, calls_only=True), call({"time": "7", "options": {"volume": 1}}))
    assert admits(llm, build_grammar(""), "Hello") and not admits(llm, build_grammar(""), call({}))


@pytest.mark.parametrize(
    "low, high", [(0, 100), (16, 30), (2, 12), (1, None), (-5, 12), (None, -3), (7, 7), (95, 1050)]
)
def test_integer_range_admits_exactly_the_integers_between_its_bounds(llm, low, high):
    grammar = f"root ::= {integer_range(low, high)}\n"
    for value in [*range(-40, 140), 999, 1000, 1050, 1051, 123456]:
        inside = (low is None or value >= low) and (high is None or value <= high)
        assert admits(llm, grammar, str(value)) == inside, value
    assert not admits(llm, grammar, "07")
