"""What `make serve` checks before a request reaches the model, answered as the OpenAI API answers a client's mistake:
status 4xx and `{"error": {"message", "type", "param", "code"}}`, the message one line that names the field.

In order: the API key (every request, when the server has one), the body's size (413 past `max_body_bytes`, from its
Content-Length before reading it), the JSON, the request's fields (llama-cpp-python's own request types, strictly,
after the checks that give clearer lines: unknown parameters, `messages`, each message by its role), then a place in
the queue (503 with Retry-After when `max_queue` requests already wait for the one being answered), then `prepare`
(serve.check_prompt: the rendered prompt's tokens against the context, tool_choice against the tools).

Why a gate in front of llama-cpp-python's app rather than inside it: its routes catch every exception and answer 500
with the exception's text (a pydantic dump for a wrong type), its error handler parses the body again as JSON (a body
that is not JSON ended as a bare `Internal Server Error`), and a streamed answer is sent with status 200 before the
chat handler runs, so a request that cannot be answered must be refused before the route.

Usage: app = RequestGate(llama_app, prepare=check_chat, api_key=None, max_body_bytes=1 << 20, max_queue=16)
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import re
import sys
import time
import traceback

from llama_cpp import llama_types
from llama_cpp.server import types

CHAT_PATH = "/v1/chat/completions"
# llama-cpp-python's request type of each POST route, which its route validates the body against.
REQUEST_TYPES = {
    CHAT_PATH: types.CreateChatCompletionRequest,
    "/v1/completions": types.CreateCompletionRequest,
    "/v1/engines/copilot-codex/completions": types.CreateCompletionRequest,
    "/v1/embeddings": types.CreateEmbeddingRequest,
    "/extras/tokenize": types.TokenizeInputRequest,
    "/extras/tokenize/count": types.TokenizeInputRequest,
    "/extras/detokenize": types.DetokenizeInputRequest,
}
MESSAGE_TYPES = {
    "system": llama_types.ChatCompletionRequestSystemMessage,
    "user": llama_types.ChatCompletionRequestUserMessage,
    "assistant": llama_types.ChatCompletionRequestAssistantMessage,
    "tool": llama_types.ChatCompletionRequestToolMessage,
    "function": llama_types.ChatCompletionRequestFunctionMessage,
}
# OpenAI chat parameters that llama-cpp-python's request lacks: accepted (max_completion_tokens as max_tokens), the
# others without effect here. `grammar` is llama-cpp-python's own and refused: the router's grammar is tool_choice's.
OPENAI_ONLY = {"max_completion_tokens", "parallel_tool_calls", "stream_options", "store", "metadata", "service_tier"}
REFUSED = {"grammar"}
PYTHON_TYPES = {"str", "int", "float", "bool", "dict", "list", "none"}  # pydantic's names for a union's members


class RequestError(ValueError):
    """A request the client must change (or retry, 503): its status and OpenAI's error object."""

    def __init__(self, message, param=None, code=None, status=400, kind="invalid_request_error", headers=None):
        super().__init__(message)
        self.param, self.code, self.status, self.kind, self.headers = param, code, status, kind, headers

    def response(self):
        from starlette.responses import JSONResponse

        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


def read_json(body: bytes) -> dict:
    """The body's JSON object (json.loads reads UTF-8, -16 and -32, as the API does)."""
    if not body.strip():
        raise RequestError("The request body is empty: send a JSON object with `messages`", code="invalid_json")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise RequestError(
            f"We could not parse the JSON body of your request ({exc}): send valid JSON", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise RequestError(f"The request body must be a JSON object, not {json_type(value)}", code="invalid_json")
    return value


def json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def field_path(where: str, loc) -> str:
    """`messages[0].content` from pydantic's error location, without the union members it tried (`str`, `list[...]`,
    `ChatCompletionNamedToolChoice`), which are no field of the request."""
    path = where
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[a-z_]+", part) and part not in PYTHON_TYPES:
            path += f".{part}" if path else part
        else:
            break
    return path


@functools.cache
def adapter(schema):
    from pydantic import TypeAdapter

    return TypeAdapter(schema)


def validate(schema, value, where: str = "") -> None:
    """Strict pydantic validation against llama-cpp-python's type (lax, it would take "5" for 5 and "yes" for true);
    the first error as one line."""
    from pydantic import ValidationError

    try:
        adapter(schema).validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = field_path(where, error["loc"])
        if error["type"] == "missing":
            raise RequestError(
                f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
            ) from None
        raise RequestError(f"Invalid '{param}': {error['msg']}.", param, "invalid_value") from None


def check_messages(messages) -> None:
    """Each message against the type of its role (the union of every role's type reports every role's mismatch)."""
    if not isinstance(messages, list):
        raise RequestError(
            f"Invalid 'messages': expected an array of messages, got {json_type(messages)}.",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise RequestError("Invalid 'messages': empty array; send at least one message.", "messages", "empty_array")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(
                f"Invalid '{where}': expected an object, got {json_type(message)}.", where, "invalid_type"
            )
        if (role := message.get("role")) not in MESSAGE_TYPES:
            supported = ", ".join(f"'{name}'" for name in MESSAGE_TYPES)
            raise RequestError(
                f"Invalid value for '{where}.role': {json.dumps(role)}. Supported values are: {supported}.",
                f"{where}.role",
                "invalid_value",
            )
        validate(MESSAGE_TYPES[message["role"]], message, where)


def check_chat_request(body: dict) -> dict:
    """The chat request as llama-cpp-python's route reads it, or a RequestError for what the API would refuse."""
    known = types.CreateChatCompletionRequest.model_fields.keys() - REFUSED | OPENAI_ONLY
    if unknown := sorted(body.keys() - known):
        raise RequestError(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    if "messages" not in body:
        raise RequestError("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    check_messages(body["messages"])
    if "max_completion_tokens" in body:  # OpenAI's newer name
        body.setdefault("max_tokens", body.pop("max_completion_tokens"))
    validate(types.CreateChatCompletionRequest, body)
    if body.get("max_tokens") is not None and body["max_tokens"] < 1:
        raise RequestError(
            f"Invalid 'max_tokens': {body['max_tokens']}; expected a value >= 1.",
            "max_tokens",
            "integer_below_min_value",
        )
    return body


def checked_request(path: str, request: dict) -> dict:
    """The request of a POST route, checked against the type its route validates it with."""
    if path == CHAT_PATH:
        return check_chat_request(request)
    validate(REQUEST_TYPES[path], request)
    return request


def header(scope, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), None)


def replay(body: bytes, receive):
    """An ASGI receive that gives the body already read, then what the client sends next (its disconnect)."""
    sent = False

    async def receive_again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


class RequestGate:
    """ASGI middleware in front of llama-cpp-python's app, checking each request as the module docstring says."""

    def __init__(self, app, prepare, api_key=None, max_body_bytes=1 << 20, max_queue=16):
        self.app, self.prepare, self.api_key = app, prepare, api_key
        self.max_body_bytes, self.max_queue = max_body_bytes, max_queue
        self.in_flight = 0  # admitted and not yet answered: the one being decoded and those waiting for it
        self.seconds_per_answer = 1.0  # from admission to answer, a moving average: the 503's Retry-After

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self.check_key(scope)
            if not (scope["method"] == "POST" and scope["path"] in REQUEST_TYPES):  # GET /v1/models, a 404, ...
                return await self.app(scope, receive, send)
            body = await self.read_body(scope, receive)
            if body is None:  # the client went away
                return
            request = checked_request(scope["path"], read_json(body))
            self.check_queue()
        except RequestError as exc:
            return await exc.response()(scope, receive, send)
        await self.admitted(scope, receive, send, body, request)

    async def admitted(self, scope, receive, send, body: bytes, request: dict) -> None:
        """Forward a request holding a place in the queue; a chat's prompt is checked first (`prepare`), in a thread
        (it is tokenized), and its body rewritten with the max_tokens that `prepare` bounded."""
        self.in_flight += 1  # no await since check_queue: no other request came in between
        try:
            if scope["path"] == CHAT_PATH:
                try:
                    body = json.dumps(await self.prepared(scope, request)).encode()
                except RequestError as exc:
                    return await exc.response()(scope, receive, send)
                scope = {**scope, "headers": list(json_headers(scope["headers"], len(body)))}
            start = time.monotonic()
            await self.app(scope, replay(body, receive), send)
            self.seconds_per_answer = 0.8 * self.seconds_per_answer + 0.2 * (time.monotonic() - start)
        finally:
            self.in_flight -= 1

    async def prepared(self, scope, request: dict) -> dict:
        """`prepare(request)`; a fault of the server's is a 500 whose traceback goes to the server's log only."""
        from starlette.concurrency import run_in_threadpool

        try:
            return await run_in_threadpool(self.prepare, request)
        except RequestError:
            raise
        except Exception as exc:
            print(f"serve: {scope['method']} {scope['path']} failed", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            raise RequestError(
                "The server had an error while processing your request.", status=500, kind="server_error"
            ) from exc

    def check_key(self, scope) -> None:
        """`Authorization: Bearer KEY`, compared in constant time (a timing difference would leak the key)."""
        if self.api_key is None:
            return
        sent = header(scope, b"authorization")
        scheme, _, given = (sent or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            return
        problem = "Incorrect API key provided" if sent else "You didn't provide an API key"
        raise RequestError(
            f"{problem}: send the server's key (its --api-key) as `Authorization: Bearer KEY`.",
            code="invalid_api_key",
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def read_body(self, scope, receive) -> bytes | None:
        """The whole body, refused (413) as soon as it is known to pass max_body_bytes: by its Content-Length before
        reading any of it, else while reading (a chunked body)."""
        declared = header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self.too_large(f"{int(declared)} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                raise self.too_large(f"over {size} bytes")
            if not message.get("more_body"):
                return b"".join(chunks)

    def too_large(self, size: str) -> RequestError:
        return RequestError(
            f"The request body is {size}; this server takes at most {self.max_body_bytes} (its --max-body-bytes).",
            code="request_too_large",
            status=413,
        )

    def check_queue(self) -> None:
        """503 past max_queue waiting requests; Retry-After: about as long as a request now takes to be answered (the
        queue then has room again)."""
        if self.in_flight <= self.max_queue:
            return
        wait = max(1, math.ceil(self.seconds_per_answer))
        raise RequestError(
            f"The server is busy: {self.in_flight - 1} requests wait for the one being answered "
            f"(its --max-queue is {self.max_queue}); retry after {wait} s.",
            code="server_overloaded",
            status=503,
            kind="server_error",
            headers={"Retry-After": str(wait)},
        )


def json_headers(headers, length: int):
    """The request's headers for its rewritten JSON body: its length, and JSON whatever it said (curl -d sends
    application/x-www-form-urlencoded, which llama-cpp-python's route would fail to validate)."""
    for key, value in headers:
        if key not in (b"content-length", b"content-type", b"transfer-encoding"):
            yield key, value
    yield b"content-length", str(length).encode()
    yield b"content-type", b"application/json"
