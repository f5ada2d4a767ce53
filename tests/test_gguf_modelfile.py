"""The Ollama Modelfile's Go template produces the training template's prompt (less the <bos> Ollama adds).

Go is not installed here, so a small interpreter of the Go text/template subset the Modelfile uses
(range, if / else if / else, := and =, eq / and / not, string literals with Go escapes, .Field and
$variables, {{- -}} trimming) renders it. It follows Go's semantics: an assignment inside range changes
the outer variable, trim markers eat all adjacent white space, empty strings are false.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from sft_router.modelfile import modelfile_template, render_modelfile, write_modelfile

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "recipes/gemma-3-270m-it/chat_template.jinja"
ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


def go_lex(template: str) -> list[tuple[str, str]]:
    """('text', s) and ('action', body) items with Go's trim markers applied to the neighbouring text."""
    items, pos = [], 0
    for match in ACTION.finditer(template):
        text = template[pos : match.start()]
        items.append(["text", text.rstrip() if match.group(1) else text])
        items.append(["action", match.group(2).strip(), bool(match.group(3))])
        pos = match.end()
    items.append(["text", template[pos:]])
    for i, item in enumerate(items):
        if item[0] == "action" and item[2]:
            items[i + 1][1] = items[i + 1][1].lstrip()
    return [(item[0], item[1]) for item in items]


def go_parse(items, pos=0, stop=("end",)):
    """A tree of ('text'|'expr'|'range'|'if', ...) nodes; returns (nodes, position, keyword that stopped)."""
    nodes = []
    while pos < len(items):
        kind, body = items[pos]
        pos += 1
        head = body.split(" ", 1)[0] if kind == "action" else None
        if kind == "text":
            nodes.append(("text", body))
        elif head in stop or head == "else":
            return nodes, pos, body
        elif head == "range":
            inner, pos, _ = go_parse(items, pos)
            nodes.append(("range", body[len("range ") :], inner))
        elif head == "if":
            pos = _parse_if(items, pos, body[len("if ") :], nodes)
        else:
            nodes.append(("expr", body))
    return nodes, pos, None


def _parse_if(items, pos, condition, nodes):
    branches = []
    while True:
        inner, pos, ended = go_parse(items, pos)
        branches.append((condition, inner))
        if ended.startswith("else if "):
            condition = ended[len("else if ") :]
        elif ended == "else":
            condition = "true"
        else:
            nodes.append(("if", branches))
            return pos


def go_truth(value) -> bool:
    return value not in (None, False, 0, "") and value != [] and value != {}


def go_eval(expression: str, dot, scopes: list[dict]):
    words = shlex.split(expression, posix=False)
    if len(words) > 1:
        name, args = words[0], [go_eval(w, dot, scopes) for w in words[1:]]
        functions = {
            "eq": lambda a, b: a == b,
            "and": lambda *a: all(map(go_truth, a)),
            "not": lambda a: not go_truth(a),
        }
        return functions[name](*args)
    word = words[0]
    if word.startswith('"'):
        return json.loads(word)  # Go and JSON share \n and \" escapes
    if word in ("true", "false"):
        return word == "true"
    if word.startswith("$"):
        return next(scope[word] for scope in reversed(scopes) if word in scope)
    if word.startswith("."):
        return dot[word[1:]]
    raise ValueError(f"unsupported Go template word {word!r}")


def go_run(nodes, dot, scopes: list[dict]) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "range":
            for element in go_eval(node[1], dot, scopes):
                out.append(go_run(node[2], element, [*scopes, {}]))
        elif node[0] == "if":
            branch = next((inner for cond, inner in node[1] if go_truth(go_eval(cond, dot, scopes))), [])
            out.append(go_run(branch, dot, [*scopes, {}]))
        elif ":=" in node[1]:
            name, expression = (part.strip() for part in node[1].split(":=", 1))
            scopes[-1][name] = go_eval(expression, dot, scopes)
        elif re.match(r"^\$\w+ = ", node[1]):
            name, expression = (part.strip() for part in node[1].split("=", 1))
            next(scope for scope in reversed(scopes) if name in scope)[name] = go_eval(expression, dot, scopes)
        else:
            out.append(str(go_eval(node[1], dot, scopes)))
    return "".join(out)


def render_go(template: str, messages: list[dict]) -> str:
    nodes, _, _ = go_parse(go_lex(template))
    ollama_messages = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return go_run(nodes, {"Messages": ollama_messages}, [{}])


def render_training_template(messages: list[dict]) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        [messages], chat_template=TEMPLATE.read_text(), add_generation_prompt=True, bos_token="<bos>"
    )
    return rendered[0]


SYSTEM = "你是一个工具路由器。可用的工具列表如下: " + json.dumps({"tool_name": "play_music", "arguments": {}})
CONVERSATIONS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "播放周杰伦的晴天"}],
    [{"role": "user", "content": "hello there"}],
    [
        {"role": "system", "content": 'Route requests.\nLine two with "quotes" and {braces}.'},
        {"role": "user", "content": "turn on the lamp"},
        {"role": "assistant", "content": '{"tool_name": "control_device", "arguments": {"device": "lamp"}}'},
        {"role": "user", "content": "and off again"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["system+user", "user-only", "multi-turn"])
def test_modelfile_template_equals_the_training_template(messages):
    go_prompt = render_go(modelfile_template(render_modelfile("tiny-Q8_0.gguf")), messages)
    assert "<bos>" + go_prompt == render_training_template(messages)


def test_test_split_prompts_render_identically(tiny_run):
    rows = [json.loads(line) for line in (tiny_run / "runs/tiny/dataset/test.jsonl").read_text().splitlines()]
    template = modelfile_template((tiny_run / "runs/tiny/gguf/Modelfile").read_text())
    for row in rows:
        assert "<bos>" + render_go(template, row["prompt"]) == render_training_template(row["prompt"])


def test_go_interpreter_keeps_go_semantics():
    """The interpreter itself: trimming, outer-variable assignment in range, else-if chains, falsy empty strings."""
    template = '{{- $n := "" }}{{ range .Messages }}{{ $n = .Role }}{{ end }} x {{- if eq $n "a" }}A{{ else if $n }}B{{ else }}C{{ end -}} \n y'
    assert render_go(template, [{"role": "b", "content": ""}]) == " xBy"
    assert render_go(template, []) == " xCy"
    assert render_go(template, [{"role": "a", "content": ""}]) == " xAy"


def test_modelfile_names_the_gguf_stop_token_and_greedy_decoding(tmp_path):
    text = write_modelfile(tmp_path / "Modelfile", "tiny-Q8_0.gguf").read_text()
    assert text.startswith("FROM ./tiny-Q8_0.gguf\n")
    assert 'PARAMETER stop "<end_of_turn>"' in text.splitlines()
    assert "PARAMETER temperature 0" in text.splitlines() and "PARAMETER top_k 1" in text.splitlines()
