"""`make serve` answers a client's mistakes as the OpenAI API does (issue 23): each hostile request of the table gets
its 4xx with `{"error": {"message", "type", "param", "code"}}`, one line and no traceback, against the real server on
loopback (the tiny run's GGUF), and a good request is answered right after it; a prompt past the context is refused
before decoding, a body past the limit at the door; under load every good request is answered as when alone; off
loopback the server wants a key, and with one every request must carry it."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import ROOT, TINY
from test_chat_template import openai_tools
from test_serve import message_fields, running_server, served, served_context  # noqa: F401  (served: fixture)

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def good(served):  # noqa: F811
    """A request the router answers: the trained system prompt, a test row's message and its tools, 8 tokens."""
    _, recipe, rows, ws = served
    system = (ws / recipe.data.system_prompt).read_text()
    messages = [{"role": "system", "content": system}, {"role": "user", "content": rows[0]["prompt"][1]["content"]}]
    return {
        "model": recipe.name,
        "messages": messages,
        "tools": openai_tools(recipe, rows[0]["tools"]),
        "max_tokens": 8,
    }


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def tool(name: str, **function) -> dict:
    return {"type": "function", "function": {"name": name, "description": "d", "parameters": {}, **function}}


def changed(**change):
    return lambda good: {**good, **change}


def chunked(size: int):
    """A body of `size` bytes sent without Content-Length (Transfer-Encoding: chunked)."""
    return lambda good: (b'{"messages": "' + b"x" * 65536 for _ in range(size // 65536))


# (what, the request made from the good one, status, OpenAI's error code, a fragment of the message)
HOSTILE = [
    ("not JSON", lambda good: b"{messages: [", 400, "invalid_json", "could not parse the JSON body"),
    ("an empty body", lambda good: b"", 400, "invalid_json", "body is empty"),
    ("a JSON array", lambda good: b"[]", 400, "invalid_json", "must be a JSON object, not an array"),
    ("arrays nested 100000 deep", lambda good: b"[" * 100_000, 400, "invalid_json", "could not parse"),
    ("not UTF-8", lambda good: b'{"messages": "\xff"}', 400, "invalid_json", "could not parse"),
    ("no messages", lambda good: {"model": "tiny"}, 400, "missing_required_parameter", "'messages'"),
    ("messages empty", changed(messages=[]), 400, "empty_array", "'messages': empty array"),
    ("messages a string", changed(messages="hi"), 400, "invalid_type", "'messages': expected an array"),
    ("a message a string", changed(messages=["hi"]), 400, "invalid_type", "'messages[0]': expected an object"),
    ("role hacker", changed(messages=[{"role": "hacker", "content": "hi"}]), 400, "invalid_value",
     "'messages[0].role': \"hacker\""),
    ("no content", changed(messages=[{"role": "user"}]), 400, "missing_required_parameter", "'messages[0].content'"),
    ("content a number", changed(messages=[{"role": "user", "content": 5}]), 400, "invalid_value",
     "'messages[0].content'"),
    ("roles that do not alternate", changed(messages=user("a") + user("b")), 400, "invalid_value", "must alternate"),
    ("tools an object", changed(tools={"type": "function"}), 400, "invalid_value", "'tools'"),
    ("a tool without parameters", changed(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     "missing_required_parameter", "'tools[0].function.parameters'"),
    ("parameters a string", changed(tools=[tool("f", parameters="none")]), 400, "invalid_value",
     "'tools[0].function.parameters'"),
    ("a tool of type retrieval", changed(tools=[{**tool("f"), "type": "retrieval"}]), 400, "invalid_value",
     "'tools[0].type'"),
    ("tool_choice naming no listed tool", changed(tool_choice={"type": "function", "function": {"name": "lamp_up"}}),
     400, "invalid_value", "'lamp_up'"),
    ("tool_choice maybe", changed(tool_choice="maybe"), 400, "invalid_value", "'tool_choice'"),
    ("tool_choice required, no tools", lambda good: {"messages": user("lamp on"), "tool_choice": "required"}, 400,
     "invalid_value", "'required' needs tools"),
    ("temperature hot", changed(temperature="hot"), 400, "invalid_value", "'temperature'"),
    ("stream yes", changed(stream="yes"), 400, "invalid_value", "'stream'"),
    ("max_tokens -5", changed(max_tokens=-5), 400, "integer_below_min_value", "'max_tokens': -5"),
    ("max_tokens 0", changed(max_tokens=0), 400, "integer_below_min_value", "'max_tokens': 0"),
    ("max_tokens a string", changed(max_tokens="5"), 400, "invalid_value", "'max_tokens'"),
    ("max_tokens 10**9", changed(max_tokens=10**9), 400, "context_length_exceeded", "maximum context length is"),
    ("600 tools", changed(tools=[tool(f"tool_{i}") for i in range(600)]), 400, "context_length_exceeded",
     "maximum context length is"),
    ("a 200k-character message", changed(messages=user("lamp " * 40_000)), 400, "context_length_exceeded",
     "maximum context length is"),
    ("the same, streamed", changed(messages=user("lamp " * 40_000), stream=True), 400, "context_length_exceeded",
     "maximum context length is"),
    ("a 5 MB body", changed(messages=user("x" * 5_000_000)), 413, "request_too_large", "at most 1048576"),
    ("a 5 MB chunked body", chunked(5_000_000), 413, "request_too_large", "at most 1048576"),
    ("an unknown parameter", changed(foo=1), 400, "unknown_parameter", "Unknown parameter: 'foo'"),
    ("llama.cpp's grammar", changed(grammar="root ::= x"), 400, "unknown_parameter", "Unknown parameter: 'grammar'"),
]  # fmt: skip


def post(url: str, body, path: str = "/chat/completions", **headers) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(url + path, content=content, headers={"Content-Type": "application/json", **headers},
                      timeout=120)  # fmt: skip


def assert_openai_error(response: httpx.Response, status: int, code: str, fragment: str) -> str:
    """The response is OpenAI's error object with this status and code, its message one line holding `fragment`."""
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert "\n" not in error["message"] and fragment in error["message"], error["message"]
    return error["message"]


def assert_answered(url: str, good: dict) -> dict:
    response = post(url, good)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message["role"] == "assistant" and (message["content"] is not None or message["tool_calls"])
    return message


@pytest.mark.parametrize("case", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_hostile_request_gets_openais_error_and_the_next_good_one_an_answer(served, good, case):  # noqa: F811
    _, make, status, code, fragment = case
    message = assert_openai_error(post(served[0], make(good)), status, code, fragment)
    if code == "context_length_exceeded":  # both numbers: the prompt's tokens and the context's
        assert re.search(r"(resulted in|requested) \d+ tokens", message), message
        assert f"maximum context length is {served_context(served[3])} tokens" in message
    assert_answered(served[0], good)


def test_a_prompt_filling_the_context_leaves_max_tokens_its_room(served, good):  # noqa: F811
    """max_tokens up to the room the prompt leaves is answered (a default never runs past the context)."""
    from sft_router.modeling.llama_runtime import load_gguf, prompt_ids
    from sft_router.serve import chat_prompt

    n_ctx = served_context(served[3])
    llm = load_gguf(served[3] / "runs/tiny/gguf/tiny-Q8_0.gguf", n_ctx=n_ctx)
    used = len(prompt_ids(llm, chat_prompt(llm, good["messages"], good["tools"])))
    assert_answered(served[0], {**good, "max_tokens": n_ctx - used})
    message = assert_openai_error(post(served[0], {**good, "max_tokens": n_ctx + 1 - used}), 400,
                                  "context_length_exceeded", f"({used} in the messages, {n_ctx + 1 - used} in")  # fmt: skip
    assert f"{n_ctx} tokens" in message


def test_a_body_sent_as_curl_d_sends_it_is_read_as_json(served, good):  # noqa: F811
    response = post(served[0], good, **{"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["role"] == "assistant"


def answer_of(url: str, body: dict) -> tuple[int, tuple | None]:
    """(status, what the answer says); a stream's chunks assembled into the message they carry."""
    if not body.get("stream"):
        response = post(url, body)
        ok = response.status_code == 200
        return response.status_code, message_fields(response.json()["choices"][0]["message"]) if ok else None
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=120) as response:
        if response.status_code != 200:
            return response.status_code, None
        content, calls = None, []
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[len("data: ") :])["choices"][0]["delta"]
            content = delta.get("content") or content
            calls += delta.get("tool_calls") or []
        return 200, message_fields({"content": content, "tool_calls": calls})


def test_fifty_requests_eight_at_once_are_all_answered_as_one_alone(served, good):  # noqa: F811
    """The same request 50 times, 8 in flight, every fifth streamed: each answer equals the answer to it alone
    (the second of two in a row: the server's KV state then holds this prompt, as it does under this load), and
    nothing is refused (8 in flight is within the default queue of 16)."""
    url = served[0]
    answer_of(url, good)
    alone = answer_of(url, good)
    bodies = [{**good, "stream": index % 5 == 0} for index in range(50)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda body: answer_of(url, body), bodies))
    assert {status for status, _ in answers} <= {200, 503}
    assert answers == [alone] * 50


def test_the_queue_refuses_past_its_bound_with_503_and_retry_after():
    """In-process, before a model that answers only when let: with max_queue 1, two requests are in flight (one
    answered, one waiting), the third is refused; once they are answered, the next is taken again."""
    import anyio

    from sft_router.release.serve_gate import RequestGate

    async def model(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    async def scenario():
        gate = RequestGate(model, prepare=lambda request: request, max_queue=1)
        body = {"messages": user("lamp on")}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://gate") as client:
            async with anyio.create_task_group() as group:
                for _ in range(2):
                    group.start_soon(functools.partial(client.post, "/v1/chat/completions", json=body))
                while gate.in_flight < 2:
                    await anyio.sleep(0.01)
                refused = await client.post("/v1/chat/completions", json=body)
                release.set()
            return refused, await client.post("/v1/chat/completions", json=body)

    release = anyio.Event()
    refused, taken = anyio.run(scenario)
    assert_openai_error(refused, 503, "server_overloaded", "--max-queue is 1")
    assert int(refused.headers["Retry-After"]) >= 1 and taken.status_code == 200


def test_serve_refuses_to_listen_beyond_loopback_without_a_key():
    env = {key: value for key, value in os.environ.items() if key != "SFT_ROUTER_API_KEY"}
    command = [sys.executable, "-m", "sft_router.serve", "--config", TINY, "--host", "0.0.0.0", "--port", "1"]
    result = subprocess.run(command, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT / "src")}, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "--host 0.0.0.0" in line and "--api-key" in line and "SFT_ROUTER_API_KEY" in line


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_key_and_the_environment_gives_one(host, monkeypatch):
    from sft_router.core.errors import UsageError
    from sft_router.serve import ServeCommand, serving_key

    monkeypatch.delenv("SFT_ROUTER_API_KEY", raising=False)
    assert serving_key(ServeCommand(host=host)) is None
    with pytest.raises(UsageError, match="--api-key"):
        serving_key(ServeCommand(host="192.168.1.5"))
    monkeypatch.setenv("SFT_ROUTER_API_KEY", KEY)
    assert serving_key(ServeCommand(host="0.0.0.0")) == KEY
    assert serving_key(ServeCommand(host="0.0.0.0", api_key="flag")) == "flag"


@pytest.fixture(scope="module")
def keyed(tiny_run, tmp_path_factory):
    with running_server(tiny_run, tmp_path_factory, "--api-key", KEY) as url:
        yield url


def test_with_a_key_every_request_needs_it(keyed, good):
    from openai import OpenAI

    for missing in (httpx.get(keyed + "/models"), post(keyed, good)):
        assert_openai_error(missing, 401, "invalid_api_key", "You didn't provide an API key")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert_openai_error(post(keyed, good, Authorization="Bearer sk-wrong"), 401, "invalid_api_key", "Incorrect")
    assert_openai_error(post(keyed, good, Authorization=KEY), 401, "invalid_api_key", "Incorrect")  # no Bearer
    assert httpx.get(keyed + "/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    reply = OpenAI(base_url=keyed, api_key=KEY, max_retries=0).chat.completions.create(**good)
    assert reply.choices[0].message.role == "assistant"
