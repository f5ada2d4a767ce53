"""`make serve`: an OpenAI-compatible endpoint on the run's GGUF (llama-cpp-python's server) whose chat handler
turns the router's answer into OpenAI's shape: a JSON call becomes `tool_calls`, anything else is `content`.

The handler renders the conversation with the GGUF's own chat template (the training template) and the request's
`tools`, in the router's training format, so `tools=[...]` of the `openai` client lands in the system prompt where
`{tools}` stands (the published `system_prompt_template.txt`); a system prompt that already lists the tools works
too. Decoding is greedy, as `make eval` scores it, whatever sampling the request asks for, and starts from the KV
state of the last request: an agent repeats its system prompt and tools, so only the new messages are evaluated.
`tool_choice="required"` constrains decoding to a call of a listed tool, a named function to a call of it, "none" to
a reply (sft_router.evaluation.grammar). A streamed request gets the finished answer in chunks: whether it is a call is
known only once the JSON is complete. A request passes sft_router.release.serve_gate first, which answers a client's
mistakes as the OpenAI API does (4xx, one line) and checks the rendered prompt against the context (check_prompt)
before decoding. The server listens on loopback unless given a key (serving_key).

Usage: python -m sft_router.serve --config recipes/tiny/router.yaml [--port 8000] [--host 0.0.0.0 --api-key KEY]
       then: curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{...}'
"""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from dataclasses import dataclass, field

from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError, one_line_errors
from sft_router.core.run_folder import gguf_path

CHAT_FORMAT = "sft-router"
MAX_NEW_TOKENS = 256
API_KEY_ENV = "SFT_ROUTER_API_KEY"
LOOPBACK_NAMES = {"localhost"}
KEY_HELP = f"Key every request must send as `Authorization: Bearer KEY` (default ${API_KEY_ENV}); needed off loopback."


@dataclass
class ServeCommand:
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on; off loopback, --api-key too."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    n_ctx: int | None = field(
        default=None,
        metadata={
            "help": "Context length of the llama.cpp model; default: the n_ctx `make gguf` chose (its manifest)."
        },
    )
    api_key: str | None = field(default=None, metadata={"help": KEY_HELP})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body taken; a larger one: 413."})
    max_queue: int = field(
        default=16, metadata={"help": "Requests that may wait for the one being answered; more: 503."}
    )


def serving_key(command: ServeCommand) -> str | None:
    """The key requests must carry (--api-key, else $SFT_ROUTER_API_KEY); refusing to serve beyond loopback without
    one: the server decodes whatever reaches it, for anyone on the network."""
    import ipaddress

    key = command.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        loopback = command.host in LOOPBACK_NAMES or ipaddress.ip_address(command.host).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if key is None and not loopback:
        raise UsageError(
            f"--host {command.host} takes requests from other machines: give --api-key KEY (or set "
            f"{API_KEY_ENV}), which clients send as `Authorization: Bearer KEY`, or serve on 127.0.0.1"
        )
    return key


def render_chat(chat_template: str, messages: list[dict], tools: list[dict] | None, bos_token: str = "") -> str:
    """The prompt `make eval` would render for this conversation (with the family's BOS as text, tokenized as a
    special)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        [messages], chat_template=chat_template, tools=tools or None, add_generation_prompt=True, bos_token=bos_token
    )
    return rendered[0]


def system_text(llama, prompt: str) -> str:
    """The rendered prompt's turn holding the system prompt and its tools, where the grammar reads them."""
    from sft_router.modeling.llama_runtime import gguf_family

    return gguf_family(llama).system_turn_text(prompt)


def parse_call(answer: str) -> tuple[str, dict] | None:
    """(tool name, arguments) when the whole answer is the router's call object, else None (a reply)."""
    try:
        value = json.loads(answer)
    except json.JSONDecodeError:
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("tool_name"), str)
        and isinstance(value.get("arguments"), dict)
    ):
        return value["tool_name"], value["arguments"]
    return None


def openai_message(answer: str) -> tuple[dict, str]:
    """The assistant message and finish reason OpenAI gives for this answer."""
    call = parse_call(answer)
    if call is None:
        return {"role": "assistant", "content": answer}, "stop"
    name, arguments = call
    tool_call = {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
    return {"role": "assistant", "content": None, "tool_calls": [tool_call]}, "tool_calls"


def decoding_grammar(system_text: str, tools: list[dict] | None, tool_choice) -> str | None:
    """GBNF for OpenAI's tool_choice: "required" a call of a listed tool, a named function a call of that one,
    "none" a reply; "auto" (or nothing) leaves decoding free, as `make eval` scores it. A choice the tools cannot
    meet is the request's mistake (RequestError, a ValueError)."""
    from sft_router.core.router_format import render_tool, tools_in_prompt
    from sft_router.evaluation.grammar import build_grammar
    from sft_router.release.serve_gate import RequestError

    if tool_choice == "none":
        return build_grammar("")  # no tool listed: the grammar admits a reply only
    if tool_choice == "required":
        if not tools_in_prompt(system_text):  # the grammar would admit only a reply
            raise RequestError(
                "Invalid value for 'tool_choice': 'required' needs tools; give `tools` (or a system "
                "prompt that lists them).",
                "tool_choice",
                "invalid_value",
            )
        return call_grammar(system_text)
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name")
        listed = [tool.get("function", tool) for tool in tools or []]
        chosen = next((fn for fn in listed if fn.get("name") == name), None)
        if chosen is None:
            raise RequestError(
                f"Invalid value for 'tool_choice': it names '{name}', which is not among the request's tools.",
                "tool_choice",
                "invalid_value",
            )
        entry = {
            "name": name,
            "description": chosen.get("description", ""),
            "parameters": chosen.get("parameters", {}),
        }
        return call_grammar(render_tool(entry))
    return None


def call_grammar(system_text: str) -> str:
    """The grammar of a call of the tools `system_text` lists; a schema llama.cpp's converter cannot read is the
    request's to fix."""
    from sft_router.evaluation.grammar import build_grammar
    from sft_router.release.serve_gate import RequestError

    try:
        return build_grammar(system_text, calls_only=True)
    except ValueError as exc:
        raise RequestError(f"Invalid 'tools': {exc}.", "tools", "invalid_value") from None


def chat_prompt(llama, messages: list[dict], tools: list[dict] | None) -> str:
    """The conversation rendered with the GGUF's chat template; one it cannot render (roles that do not alternate)
    is the request's mistake."""
    from jinja2 import TemplateError

    from sft_router.release.serve_gate import RequestError

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("the GGUF has no tokenizer.chat_template: convert it with `make gguf`")
    try:
        from sft_router.modeling.llama_runtime import gguf_family

        return render_chat(template, messages, tools, gguf_family(llama).bos_token or "")
    except (TemplateError, TypeError) as exc:  # TypeError: a message the template cannot iterate (content null)
        raise RequestError(
            f"Invalid 'messages': the model's chat template cannot render them ({exc}).", "messages", "invalid_value"
        ) from None


def check_prompt(llama, request: dict) -> dict:
    """The chat request with max_tokens bounded by the room its prompt leaves in the context (MAX_NEW_TOKENS at
    most when it gives none), checked before any decoding: llama.cpp fails a prompt past the context only inside
    llama_decode, after seconds of work. tool_choice is checked against the tools here too (its grammar)."""
    from sft_router.modeling.llama_runtime import prompt_ids
    from sft_router.release.serve_gate import RequestError

    prompt = chat_prompt(llama, request["messages"], request.get("tools"))
    used, context, wanted = len(prompt_ids(llama, prompt)), llama.n_ctx(), request.get("max_tokens")
    if used >= context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens. However, your messages resulted "
            f"in {used} tokens. Please reduce the length of the messages.",
            "messages",
            "context_length_exceeded",
        )
    if wanted is not None and used + wanted > context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{used + wanted} tokens ({used} in the messages, {wanted} in the completion). Please "
            "reduce the length of the messages or completion.",
            "max_tokens",
            "context_length_exceeded",
        )
    decoding_grammar(system_text(llama, prompt), request.get("tools"), request.get("tool_choice"))
    return {**request, "max_tokens": wanted or min(MAX_NEW_TOKENS, context - used)}


def route_chat(*, llama, messages, tools=None, tool_choice=None, stream=False, max_tokens=None, model=None, **_):
    """llama-cpp-python chat handler: greedy answer, then OpenAI's message shape (a chunk stream if `stream`)."""
    from llama_cpp import LlamaGrammar

    from sft_router.modeling.llama_runtime import greedy_ids, prompt_ids

    prompt = chat_prompt(llama, messages, tools)
    ids = prompt_ids(llama, prompt)
    grammar_text = decoding_grammar(system_text(llama, prompt), tools, tool_choice)  # the grammar reads its tools
    grammar = LlamaGrammar.from_string(grammar_text, verbose=False) if grammar_text else None
    # From the KV state of the last request: an agent sends the same system prompt and tools every time, so only
    # the new messages are evaluated (the served model keeps its whole sliding-window cache, see create_app).
    new_ids = greedy_ids(llama, ids, max_tokens or MAX_NEW_TOKENS, grammar=grammar)
    answer = llama.detokenize(new_ids, special=False).decode("utf-8", errors="replace").strip()
    message, finish = openai_message(answer)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model or llama.model_path}
    if stream:
        return _chunks(head, message, finish)
    usage = {"prompt_tokens": len(ids), "completion_tokens": len(new_ids), "total_tokens": len(ids) + len(new_ids)}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}


def _chunks(head: dict, message: dict, finish: str):
    def chunk(delta: dict, finish_reason=None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}

    yield chunk({"role": "assistant", "content": None if message.get("tool_calls") else ""})
    if message.get("tool_calls"):
        yield chunk({"tool_calls": [{"index": 0, **call} for call in message["tool_calls"]]})
    else:
        yield chunk({"content": message["content"]})
    yield chunk({}, finish)


def register_handler() -> None:
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(CHAT_FORMAT, route_chat, overwrite=True)


def router_proxy():
    """llama-cpp-python's model proxy, loading the GGUF as `make eval` does (runtime.load_gguf): its ModelSettings
    have no `swa_full`, which prefix reuse across requests needs."""
    from llama_cpp.server.model import LlamaProxy

    from sft_router.modeling.llama_runtime import load_gguf

    class RouterProxy(LlamaProxy):
        @staticmethod
        def load_llama_from_model_settings(settings):
            return load_gguf(
                settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads, chat_format=settings.chat_format
            )

    return RouterProxy


def create_app(recipe, command: ServeCommand):
    """The llama-cpp-python FastAPI app serving the recipe's GGUF with the router's chat handler, behind the
    RequestGate (sft_router.release.serve_gate) that answers a client's mistakes as the OpenAI API does."""
    from unittest import mock

    import llama_cpp.server.app as server
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from sft_router.modeling.context_length import gguf_context_length
    from sft_router.release.serve_gate import RequestGate

    api_key = serving_key(command)
    path = gguf_path(recipe, recipe.export.gguf_outtypes[0])
    if not path.is_file():
        raise UsageError(f"no GGUF at {path}: run `make gguf RECIPE={recipe.path}` first")
    register_handler()
    model = ModelSettings(
        model=str(path),
        model_alias=recipe.name,
        chat_format=CHAT_FORMAT,
        n_ctx=command.n_ctx or gguf_context_length(path),  # the context check_prompt then checks requests against
        n_threads=os.cpu_count(),
        verbose=False,
    )
    # The gate checks the key; ServerSettings would read one from $API_KEY. interrupt_requests would end a stream
    # with [DONE] as soon as another request waits, and the router's answer is complete before it streams.
    settings = ServerSettings(host=command.host, port=command.port, api_key=None, interrupt_requests=False)
    # The app builds its proxy (and loads the model) inside create_app, by the module's name LlamaProxy.
    with mock.patch.object(server, "LlamaProxy", router_proxy()):
        app = server.create_app(server_settings=settings, model_settings=[model])
    llama = server._llama_proxy()  # the one model, loaded; its tokenizer counts a prompt's tokens before the route
    return RequestGate(
        app,
        functools.partial(check_prompt, llama),
        api_key=api_key,
        max_body_bytes=command.max_body_bytes,
        max_queue=command.max_queue,
    )


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from sft_router.modeling.llama_runtime import require_runtime

    recipe, command = parse_recipe(argv, extra=(ServeCommand,))
    require_runtime()
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"the llama.cpp server's packages are missing ({exc.name}): run `make runtime`") from exc
    app = create_app(recipe, command)
    keyed = "; requests need its --api-key" if app.api_key else ""
    print(f"serve: {recipe.name} on http://{command.host}:{command.port}/v1 (OpenAI-compatible{keyed}; Ctrl-C stops)")
    uvicorn.run(app, host=command.host, port=command.port, log_level="warning")


if __name__ == "__main__":
    main()
