"""`make serve` end to end on the tiny run's GGUF, with the real `openai` client: `tools=` in, the router's JSON
answer out as `tool_calls` (streamed too), a reply as `content`. The model's raw answer for the same prompt is
computed here with the same runtime (greedy, as `make eval`), and the server's response must carry exactly it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, TINY, counting_evals, llama_runtime_or_reason
from test_chat_template import openai_tools


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """The server of `make serve` on a free port, run from the tiny workspace; yields (base_url, recipe, test rows,
    workspace)."""
    from sft_router.core.config import parse_recipe

    old = os.getcwd()
    os.chdir(tiny_run)
    try:
        (recipe,) = parse_recipe(["--config", TINY])
    finally:
        os.chdir(old)
    rows = [json.loads(line) for line in (tiny_run / "runs/tiny/dataset/test.jsonl").read_text().splitlines()]
    with running_server(tiny_run, tmp_path_factory) as url:
        yield url, recipe, rows, tiny_run


@contextlib.contextmanager
def running_server(ws, tmp_path_factory, *flags: str):
    """`python -m sft_router.serve --config TINY *flags` on a free port of 127.0.0.1, run from `ws`; yields its
    base URL."""
    if reason := llama_runtime_or_reason():
        pytest.skip(reason)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key != "SFT_ROUTER_API_KEY"}  # its key: `flags`
    env["PYTHONPATH"] = str(ROOT / "src")
    command = [sys.executable, "-m", "sft_router.serve", "--config", TINY, "--port", str(port), *flags]
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    server = subprocess.Popen(command, cwd=ws, env=env, stderr=log.open("w"), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_for(url, server, log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for(url: str, server, log, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"make serve exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return
        except urllib.error.HTTPError:  # it answers (401 without its key)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail("make serve did not answer within 3 minutes")


def served_context(ws) -> int:
    """The context `make gguf` chose, which every runtime of the GGUF uses; Ollama's `params` say the same."""
    folder = ws / "runs/tiny/gguf"
    n_ctx = json.loads((folder / "manifest.json").read_text())["n_ctx"]
    assert json.loads((folder / "params").read_text())["num_ctx"] == n_ctx
    return n_ctx


@pytest.fixture(scope="module")
def llm(served):
    from sft_router.modeling.llama_runtime import load_gguf

    return load_gguf(served[3] / "runs/tiny/gguf/tiny-Q8_0.gguf")  # with the context make gguf chose


def raw_answer(llm, served, row, calls_only: bool) -> str:
    """The GGUF's greedy answer to the row's training prompt, straight from the runtime."""
    from llama_cpp import LlamaGrammar

    from sft_router.evaluation.grammar import build_grammar
    from sft_router.modeling.llama_runtime import complete
    from sft_router.serve import render_chat

    system = row["prompt"][0]["content"]
    grammar = LlamaGrammar.from_string(build_grammar(system, calls_only=True), verbose=False) if calls_only else None
    prompt = render_chat(llm.metadata["tokenizer.chat_template"], row["prompt"], None, "<bos>")
    return complete(llm, prompt, served[1].eval.eval_max_new_tokens, grammar=grammar, reuse_prefix=False)


@pytest.fixture(scope="module")
def call_case(llm, served):
    """A test row whose call-constrained answer is a whole call within the token budget (the tiny model often runs
    on inside a string), and that answer. Rows that `make eval`'s grammar variant answered with a call come first."""
    from sft_router.serve import parse_call

    predictions = served[3] / "runs/tiny/eval/gguf_grammar/predictions.jsonl"
    called = {r["id"] for r in map(json.loads, predictions.read_text().splitlines()) if parse_call(r["output"])}
    for row in sorted(served[2], key=lambda row: row["id"] not in called):
        answer = parse_call(raw_answer(llm, served, row, calls_only=True))
        if answer is not None:
            return row, answer
    pytest.fail("no test row's constrained answer completed within eval_max_new_tokens")


def request(served, row, **kwargs):
    from openai import OpenAI

    url, recipe, _, ws = served
    template = (ws / recipe.data.system_prompt).read_text()
    client = OpenAI(base_url=url, api_key="unused")
    messages = [{"role": "system", "content": template}, {"role": "user", "content": row["prompt"][1]["content"]}]
    return client.chat.completions.create(model=recipe.name, messages=messages, max_tokens=recipe.eval.eval_max_new_tokens,
                                          tools=openai_tools(recipe, row["tools"]), **kwargs)  # fmt: skip


def test_required_tool_choice_returns_tool_calls_equal_to_the_raw_answer(served, call_case):
    row, (name, arguments) = call_case
    message = request(served, row, tool_choice="required").choices[0].message
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.function.name == name
    assert json.loads(call.function.arguments) == arguments


def test_streamed_tool_calls_assemble_to_the_same_call(served, call_case):
    row, (name, arguments) = call_case
    streamed_name, streamed_arguments, finish = "", "", None
    for chunk in request(served, row, tool_choice="required", stream=True):
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            streamed_name += call.function.name or ""
            streamed_arguments += call.function.arguments or ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and streamed_name == name and json.loads(streamed_arguments) == arguments


def test_a_reply_comes_back_as_content_without_tool_calls(llm, served):
    """The served answer, not a fresh decode, picks the row: the server reuses the last prompt's KV state, which
    llama.cpp evaluates in other batches than a fresh prompt, so a near-tie of the random model may flip (reuse
    against fresh decoding: test_requests_with_the_same_tools_reuse_the_prefix_and_answer_as_fresh_decoding)."""
    from sft_router.serve import parse_call

    row, response = next(
        (row, response)
        for row in served[2]
        if (response := request(served, row)).choices[0].message.content is not None
    )
    assert parse_call(response.choices[0].message.content) is None
    assert not response.choices[0].message.tool_calls and response.choices[0].finish_reason == "stop"
    chunks = list(request(served, row, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content and parse_call(content) is None
    assert not any(c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_choice_sets_the_decoding_grammar():
    from sft_router.core.router_format import render_tool
    from sft_router.serve import decoding_grammar

    tools = [{"type": "function", "function": {"name": name, "description": "d", "parameters": {"type": "object"}}}
             for name in ("lamp_on", "lamp_off")]  # fmt: skip
    system = " ".join(render_tool(t["function"]) for t in tools)
    assert decoding_grammar(system, tools, "auto") is None and decoding_grammar(system, tools, None) is None
    assert decoding_grammar(system, tools, "none").startswith("root ::= reply\n") and "lamp" not in (
        decoding_grammar(system, tools, "none")
    )
    required = decoding_grammar(system, tools, "required")
    assert required.startswith("root ::= call\n") and "lamp_on" in required and "lamp_off" in required
    named = decoding_grammar(system, tools, {"type": "function", "function": {"name": "lamp_off"}})
    assert named.startswith("root ::= call\n") and "lamp_off" in named and "lamp_on" not in named
    with pytest.raises(ValueError, match="lamp_up"):
        decoding_grammar(system, tools, {"type": "function", "function": {"name": "lamp_up"}})


def message_fields(message: dict) -> tuple:
    """What an answer says, without the random call id."""
    calls = [(call["function"]["name"], call["function"]["arguments"]) for call in message.get("tool_calls") or []]
    return message["content"], calls


def test_requests_with_the_same_tools_reuse_the_prefix_and_answer_as_fresh_decoding(llm, served):
    """An agent's requests: one system prompt and toolset, a new message each. route_chat evaluates only what a
    request does not share with the last one, and every answer equals decoding its prompt from an empty cache."""
    from sft_router.modeling.llama_runtime import complete, prompt_ids
    from sft_router.serve import openai_message, render_chat, route_chat

    _, recipe, rows, ws = served
    system = {"role": "system", "content": (ws / recipe.data.system_prompt).read_text()}
    tools, most = openai_tools(recipe, rows[0]["tools"]), recipe.eval.eval_max_new_tokens
    conversations = [[system, {"role": "user", "content": row["prompt"][1]["content"]}] for row in rows[:3]]
    template = llm.metadata["tokenizer.chat_template"]
    prompts = [render_chat(template, messages, tools, "<bos>") for messages in conversations]
    fresh = [openai_message(complete(llm, prompt, most, reuse_prefix=False))[0] for prompt in prompts]
    with counting_evals(llm) as evaluated:
        answers = [route_chat(llama=llm, messages=m, tools=tools, max_tokens=most) for m in conversations]
    assert [message_fields(a["choices"][0]["message"]) for a in answers] == [message_fields(m) for m in fresh]
    ids = [prompt_ids(llm, prompt) for prompt in prompts]
    shared = [len(os.path.commonprefix([a, b])) for a, b in zip(ids, ids[1:])]
    assert [n for n in evaluated if n > 1][1:] == [len(x) - n for x, n in zip(ids[1:], shared)]
    head = prompts[1][: prompts[1].index(conversations[1][1]["content"])]  # everything before the message
    assert min(shared) >= len(prompt_ids(llm, head)) - 1  # the system prompt and its tools came from the cache


def test_the_served_model_keeps_its_whole_sliding_window_cache(served, monkeypatch):
    """llama-cpp-python's server settings have no swa_full; make serve's model is loaded as make eval's is."""
    import llama_cpp.server.app as server
    from llama_cpp.server.model import LlamaProxy

    from sft_router.serve import CHAT_FORMAT, ServeCommand, create_app

    _, recipe, _, ws = served
    monkeypatch.chdir(ws)
    create_app(recipe, ServeCommand())
    model = server._llama_proxy()
    try:
        assert model.context_params.swa_full and model.chat_format == CHAT_FORMAT
        assert model.n_ctx() == served_context(ws)  # serve's default: the gguf manifest's n_ctx, Ollama's num_ctx
    finally:
        server._llama_proxy.free()
    assert server.LlamaProxy is LlamaProxy  # stood in for only while the app was built
