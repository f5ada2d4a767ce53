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

from sft_router.grammar import build_grammar, literal
from sft_router.router_format import tools_in_prompt


@pytest.fixture(scope="session")
def llm(tiny_run):
    reason = os.environ.get("SFT_ROUTER_RUNTIME_UNAVAILABLE")
    if reason:
        pytest.skip(reason)
    from sft_router.runtime import load_gguf

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

    from sft_router.runtime import stop_token_id

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


def test_grammar_admits_every_test_target(llm, test_rows):
    for row in test_rows:
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


def test_required_keys_enums_and_key_order(llm):
    schema = {"type": "object", "required": ["time"], "properties": {
        "time": {"type": "string"}, "repeat": {"type": "string", "enum": ["once", "daily"]}, "n": {"type": "integer"}}}  # fmt: skip
    prompt = "tools: " + json.dumps({"tool_name": "set_alarm", "tool_description": "d", "arguments": schema})
    grammar = build_grammar(prompt)

    def call(arguments):
        return json.dumps({"tool_name": "set_alarm", "arguments": arguments}, ensure_ascii=False)

    assert admits(llm, grammar, call({"repeat": "daily", "n": 3, "time": "七点"}))
    assert admits(llm, grammar, call({"time": "7"}))
    assert not admits(llm, grammar, call({"repeat": "daily"}))  # required `time` missing
    assert not admits(llm, grammar, call({"time": "7", "repeat": "weekly"}))  # not in the enum
    assert not admits(llm, grammar, call({"time": "7", "n": "3"}))  # integer expected
    assert not admits(llm, grammar, call({"time": "7", "time ": "8"}))


def test_literal_escapes_quotes_backslashes_and_control_characters():
    assert literal('a"b\\c\n') == '"a\\"b\\\\c\\x0A"'
