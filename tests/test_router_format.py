"""The router format: one system prompt check, one tool parser for every spacing, and the split of a rendered prompt
into the prefix a scene shares and the request."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from sft_router.core.errors import UsageError
from sft_router.core.router_format import (
    load_system_prompt,
    render_call,
    render_system_prompt,
    render_tool,
    split_prompt,
    tools_in_prompt,
)
from sft_router.datagen.catalog import load_catalog
from sft_router.modeling.families import GEMMA3

TEMPLATE = ROOT / "recipes/gemma-3-270m-it/system_prompt.txt"
CATALOG = ROOT / "recipes/gemma-3-270m-it/catalog.yaml"


def render_chat(messages: list[dict]) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    template = (ROOT / "recipes/gemma-3-270m-it/chat_template.jinja").read_text()
    rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=True,
                                        bos_token="<bos>")  # fmt: skip
    return rendered[0]


def catalog_tools(*names: str) -> list[dict]:
    tools = load_catalog(CATALOG).tools
    return [tools[name] for name in names]


def test_the_tools_a_prompt_shows_are_read_back_in_order_past_the_example_call():
    tools = catalog_tools("set_timer", "create_reminder", "get_calendar_events")
    system = render_system_prompt(load_system_prompt(TEMPLATE), tools)
    assert '"tool_name": "get_calendar_events", "arguments"' in system  # the template's example call: not a tool
    read = tools_in_prompt(system)
    assert [entry["tool_name"] for entry in read] == ["set_timer", "create_reminder", "get_calendar_events"]
    assert [json.dumps(entry, ensure_ascii=False) for entry in read] == [render_tool(tool) for tool in tools]


def test_tools_spaced_another_way_are_read_too():
    entry = {"tool_name": "set_timer", "tool_description": "Start a timer.", "arguments": {"type": "object"}}
    text = f"Tools:\n{json.dumps(entry, indent=2)}\n{{not json}} {render_call('set_timer', {})}"
    assert tools_in_prompt(text) == [entry]


def test_a_rendered_prompt_splits_after_its_system_prompt_and_rows_of_a_scene_share_the_prefix():
    system = render_system_prompt(load_system_prompt(TEMPLATE), catalog_tools("set_timer", "set_alarm"))
    prefixes = set()
    for user in ("明早7点叫我", "  Set a timer for ten minutes "):
        rendered = render_chat([{"role": "system", "content": system}, {"role": "user", "content": user}])
        prefix, request = split_prompt(rendered, system)
        assert prefix + request == rendered
        assert prefix == f"<bos>{GEMMA3.user_turn}{system}\n\n"
        assert request.startswith(user.strip()) and request.endswith(GEMMA3.model_turn)
        assert GEMMA3.system_turn_text(rendered) == f"{system}\n\n{user.strip()}"
        prefixes.add(prefix)
    assert len(prefixes) == 1


def test_a_prompt_without_its_system_prompt_fails_naming_the_fix():
    with pytest.raises(UsageError, match="does not hold its system prompt verbatim; render it with a chat template"):
        split_prompt(f"<bos>{GEMMA3.user_turn}hello", "You route tools: {tools}")


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "does not exist: set `system_prompt` in the recipe"), ("You route tools.", "no `{tools}` placeholder")],
)
def test_a_bad_system_prompt_fails_in_one_line(tmp_path, text, message):
    path = tmp_path / "system_prompt.txt"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=message) as error:
        load_system_prompt(path)
    assert len(str(error.value).splitlines()) == 1
