"""The router's prompt format, in one place: the system prompt template (read and checked), a tool and the tool list
as the prompt shows them, a call as the model answers it, the tools read back out of a prompt, and a rendered prompt
split into the prefix that every request of a scene shares (up to and including the system prompt with its tool list)
and the request itself. Turn markers and stop tokens differ by model family: sft_router.modeling.families.

A tool is shown as `{"tool_name", "tool_description", "arguments": <JSON schema>}` (the seed's format), the tools
joined by spaces where the template says `{tools}`; a call is `{"tool_name": ..., "arguments": {...}}` with
json.dumps spacing. Every stage renders and reads prompts through this module, and it imports no other layer.

Usage: from sft_router.core.router_format import load_system_prompt, render_system_prompt, render_call, tools_in_prompt
"""

from __future__ import annotations

import json
from pathlib import Path

from sft_router.core.errors import UsageError

TOOLS = "{tools}"  # where the tool list goes in the system prompt template
TOOL_KEYS = frozenset({"tool_name", "tool_description", "arguments"})


def load_system_prompt(path: str | Path) -> str:
    """The system prompt template of a recipe, checked: the file exists and says where the tool list goes."""
    if not Path(path).is_file():
        raise UsageError(f"system prompt {path} does not exist: set `system_prompt` in the recipe to a text file")
    text = Path(path).read_text(encoding="utf-8")
    if TOOLS not in text:
        raise UsageError(f"{path}: no `{TOOLS}` placeholder; add it where the tool list goes")
    return text


def render_tool(tool: dict) -> str:
    """One tool (`name`, `description`, `parameters`) in the seed's tool-list format."""
    entry = {"tool_name": tool["name"], "tool_description": tool["description"], "arguments": tool["parameters"]}
    return json.dumps(entry, ensure_ascii=False)


def json_schema(schema: dict, types: dict | None = None) -> dict:
    """A function's parameter schema with every `type` mapped by `types` (BFCL's table: dict -> object ...); the
    types of JSON schema map to themselves."""
    types = types or {}
    converted = dict(schema)
    if isinstance(schema.get("type"), str):
        converted["type"] = types.get(schema["type"], schema["type"])
    if isinstance(schema.get("properties"), dict):
        converted["properties"] = {key: json_schema(value, types) for key, value in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        converted["items"] = json_schema(schema["items"], types)
    return converted


def router_tool(function: dict, types: dict | None = None) -> dict:
    """A function declaration (`name`, `description`, `parameters`: BFCL's and the function generator's) as a
    catalog tool, what `render_tool` renders into the prompt."""
    return {
        "name": function["name"],
        "description": function["description"],
        "parameters": json_schema(function["parameters"], types),
    }


def render_tool_list(tools) -> str:
    return " ".join(render_tool(tool) for tool in tools)


def render_system_prompt(template: str, tools) -> str:
    """The system prompt showing `tools`, in order, where the template says `{tools}`."""
    return template.replace(TOOLS, render_tool_list(tools))


def published_system_prompt(data_args, tools) -> str:
    """The recipe's system prompt listing `tools` (every catalog tool): `system_prompt.txt` in the repos, Ollama's
    `system`."""
    return render_system_prompt(load_system_prompt(data_args.system_prompt), list(tools))


def render_call(tool_name: str, arguments: dict) -> str:
    return json.dumps({"tool_name": tool_name, "arguments": arguments}, ensure_ascii=False)


def tools_in_prompt(text: str) -> list[dict]:
    """The tool entries a prompt shows, in order, as the model reads them: every JSON object in the text with a
    `tool_name`, a `tool_description` and `arguments`, however it is spaced; example calls (no tool_description) and
    text that is not JSON are skipped."""
    decoder, tools, pos = json.JSONDecoder(), [], 0
    while (start := text.find("{", pos)) != -1:
        try:
            entry, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        pos = end
        if isinstance(entry, dict) and TOOL_KEYS <= entry.keys():
            tools.append(entry)
    return tools


def shared_prefix_length(id_lists: list[list[int]]) -> int:
    """Tokens every list starts with: of rendered prompts, <bos>, the turn header, the system prompt and, within a
    scene, its tools. Compared as token ids, so a request keeps exactly its own tokens at the boundary."""
    first = id_lists[0] if id_lists else []
    length = len(first)
    for ids in id_lists[1:]:
        length = next((i for i, (a, b) in enumerate(zip(first[:length], ids)) if a != b), min(length, len(ids)))
    return length


def split_prompt(rendered: str, system: str) -> tuple[str, str]:
    """(prefix, request) of a rendered prompt whose system prompt is `system`: the prefix runs through the system
    prompt and the whitespace after it, what every request of a scene shares; the request is the rest (the user's
    message and the turn markers). prefix + request == rendered."""
    start = rendered.find(system) if system else -1
    if start < 0:
        raise UsageError(
            "the rendered prompt does not hold its system prompt verbatim; render it with a chat template that keeps "
            "the system prompt unchanged (recipes/gemma-3-270m-it/chat_template.jinja, recipes/tiny-qwen3/...)"
        )
    end = start + len(system)
    rest = rendered[end:]
    end += len(rest) - len(rest.lstrip())
    return rendered[:end], rendered[end:]


def target_text(row) -> str:
    """A dataset row's expected answer: the call or reply its completion holds."""
    return row["completion"][0]["content"]
