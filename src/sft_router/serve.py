"""`make serve`: an OpenAI-compatible endpoint on the run's GGUF (llama-cpp-python's server) whose chat handler
turns the router's answer into OpenAI's shape: a JSON call becomes `tool_calls`, anything else is `content`.

The handler renders the conversation with the GGUF's own chat template (the training template) and the request's
`tools`, in the router's training format, so `tools=[...]` of the `openai` client lands in the system prompt where
`{tools}` stands (the published `system_prompt_template.txt`); a system prompt that already lists the tools works
too. Decoding is greedy, as `make eval` scores it, whatever sampling the request asks for, and starts from the KV
state of the last request: an agent repeats its system prompt and tools, so only the new messages are evaluated.
`tool_choice="required"` constrains decoding to a call of a listed tool, a named function to a call of it, "none" to
a reply (sft_router.grammar). A streamed request gets the finished answer in chunks: whether it is a call is known
only once the JSON is complete.

Usage: python -m sft_router.serve --config recipes/tiny/router.yaml [--port 8000]   (make serve)
       then: curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{...}'
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field

from sft_router.config import parse_recipe
from sft_router.errors import UsageError, one_line_errors
from sft_router.router_format import first_user_turn
from sft_router.run import gguf_path

CHAT_FORMAT = "sft-router"
MAX_NEW_TOKENS = 256


@dataclass
class ServeCommand:
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    n_ctx: int = field(
        default=4096, metadata={"help": "Context length of the llama.cpp model (Ollama's `params` too)."}
    )


def render_chat(chat_template: str, messages: list[dict], tools: list[dict] | None) -> str:
    """The prompt `make eval` would render for this conversation (with <bos> as text, tokenized as a special)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=chat_template, tools=tools or None,
                                        add_generation_prompt=True, bos_token="<bos>")  # fmt: skip
    return rendered[0]


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
    tool_call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}  # fmt: skip
    return {"role": "assistant", "content": None, "tool_calls": [tool_call]}, "tool_calls"


def decoding_grammar(system_text: str, tools: list[dict] | None, tool_choice) -> str | None:
    """GBNF for OpenAI's tool_choice: "required" a call of a listed tool, a named function a call of that one,
    "none" a reply; "auto" (or nothing) leaves decoding free, as `make eval` scores it."""
    from sft_router.grammar import build_grammar
    from sft_router.router_format import render_tool

    if tool_choice == "none":
        return build_grammar("")  # no tool listed: the grammar admits a reply only
    if tool_choice == "required":
        return build_grammar(system_text, calls_only=True)
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name")
        listed = [tool.get("function", tool) for tool in tools or []]
        chosen = next((fn for fn in listed if fn.get("name") == name), None)
        if chosen is None:
            raise ValueError(f"tool_choice names '{name}', which is not among the request's tools")
        entry = {
            "name": name,
            "description": chosen.get("description", ""),
            "parameters": chosen.get("parameters", {}),
        }
        return build_grammar(render_tool(entry), calls_only=True)
    return None


def route_chat(*, llama, messages, tools=None, tool_choice=None, stream=False, max_tokens=None, model=None, **_):
    """llama-cpp-python chat handler: greedy answer, then OpenAI's message shape (a chunk stream if `stream`)."""
    from llama_cpp import LlamaGrammar

    from sft_router.runtime import greedy_ids, prompt_ids

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("the GGUF has no tokenizer.chat_template: convert it with `make gguf`")
    prompt = render_chat(template, messages, tools)
    ids = prompt_ids(llama, prompt)
    grammar_text = decoding_grammar(first_user_turn(prompt), tools, tool_choice)  # the grammar reads its tools
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

    from sft_router.runtime import load_gguf

    class RouterProxy(LlamaProxy):
        @staticmethod
        def load_llama_from_model_settings(settings):
            return load_gguf(settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads,
                             chat_format=settings.chat_format)  # fmt: skip

    return RouterProxy


def create_app(recipe, command: ServeCommand):
    """The llama-cpp-python FastAPI app serving the recipe's GGUF with the router's chat handler."""
    from unittest import mock

    import llama_cpp.server.app as server
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    path = gguf_path(recipe, recipe.export.gguf_outtypes[0])
    if not path.is_file():
        raise UsageError(f"no GGUF at {path}: run `make gguf RECIPE={recipe.path}` first")
    register_handler()
    model = ModelSettings(model=str(path), model_alias=recipe.name, chat_format=CHAT_FORMAT, n_ctx=command.n_ctx,
                          n_threads=os.cpu_count(), verbose=False)  # fmt: skip
    # The app builds its proxy (and loads the model) inside create_app, by the module's name LlamaProxy.
    with mock.patch.object(server, "LlamaProxy", router_proxy()):
        return server.create_app(server_settings=ServerSettings(host=command.host, port=command.port),
                                 model_settings=[model])  # fmt: skip


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from sft_router.runtime import require_runtime

    recipe, command = parse_recipe(argv, extra=(ServeCommand,))
    require_runtime()
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"the llama.cpp server's packages are missing ({exc.name}): run `make runtime`") from exc
    app = create_app(recipe, command)
    print(f"serve: {recipe.name} on http://{command.host}:{command.port}/v1 (OpenAI-compatible; Ctrl-C stops)")
    uvicorn.run(app, host=command.host, port=command.port, log_level="warning")


if __name__ == "__main__":
    main()
