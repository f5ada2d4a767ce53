"""Ollama from the Hub reproduces training: the GGUF repo's `template`, run by Go's own text/template in the data
shape Ollama's template.Execute builds (tests/ollama_template/main.go), renders every test-split prompt exactly as
the training chat template does (less the <bos> Ollama adds), and `params`/`system` make decoding greedy with the
trained system prompt. Why this is faithful: Ollama executes that same stdlib text/template, with the same parse
options and fields; only its Go module dependencies (not needed to render) cannot be downloaded here.

Go comes from Debian (`apt-get install golang-go`; .ci/run installs it). Without it the Go tests skip locally and
fail under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sft_router.core.run_folder import read_manifest
from sft_router.modeling.families import GEMMA3
from sft_router.release.ollama_files import go_template, modelfile_section, ollama_params, render_modelfile

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "recipes/gemma-3-270m-it/chat_template.jinja"
RENDERER = ROOT / "tests/ollama_template/main.go"


def go_render(template_text: str, conversations: list[list[dict]], tmp_path: Path) -> list[str]:
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            pytest.fail("go is not installed: .ci/run installs golang-go")
        pytest.skip("go is not installed: apt-get install golang-go")
    path = tmp_path / "template"
    path.write_text(template_text)
    result = subprocess.run(["go", "run", str(RENDERER), str(path)], input=json.dumps(conversations),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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
    # what Jinja's `| trim` strips, Go must strip too: newlines, tabs, ideographic and no-break spaces
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\t 查一下明天的日程\n"}],
    [
        {"role": "user", "content": "\u3000关灯\u00a0\r\n"},
        {"role": "assistant", "content": " ok \n"},
        {"role": "user", "content": "   "},
    ],  # fmt: skip
]


def test_ollama_template_equals_the_training_template_including_trimming(tmp_path):
    prompts = go_render(go_template(GEMMA3), CONVERSATIONS, tmp_path)
    for conversation, prompt in zip(CONVERSATIONS, prompts, strict=True):
        assert "<bos>" + prompt == render_training_template(conversation)


def test_test_split_prompts_render_identically_through_the_repo_template(tiny_run, tmp_path):
    rows = [json.loads(line) for line in (tiny_run / "runs/tiny/dataset/test.jsonl").read_text().splitlines()]
    template = (tiny_run / "runs/tiny/gguf/template").read_text()
    prompts = go_render(template, [row["prompt"] for row in rows], tmp_path)
    assert len(prompts) == len(rows) > 0
    for row, prompt in zip(rows, prompts):
        assert "<bos>" + prompt == render_training_template(row["prompt"])


def test_the_gguf_manifest_holds_the_context_the_recipe_derives(tiny_run, monkeypatch):
    """n_ctx, decided once by make gguf: the published system prompt (every tool) or max_length, plus the most new
    tokens, rounded up to a power of two; load_gguf's default and the GGUF card's snippets read it."""
    from sft_router.core.config import parse_recipe
    from sft_router.modeling.context_length import context_length, gguf_context_length
    from sft_router.modeling.loading import load_tokenizer

    monkeypatch.chdir(tiny_run)
    (recipe,) = parse_recipe(["--config", "recipes/tiny/router.yaml"])
    gguf = tiny_run / "runs/tiny/gguf"
    tokenizer = load_tokenizer(recipe, str(tiny_run / "runs/tiny/merged"))
    n_ctx = read_manifest(gguf)["n_ctx"]
    assert n_ctx == context_length(recipe, tokenizer, (gguf / "system").read_text()) > recipe.training.max_length
    assert gguf_context_length(gguf / "tiny-Q8_0.gguf") == n_ctx
    card = (tiny_run / "runs/tiny/card/gguf/README.md").read_text()  # llama-cpp-python, llama-cli/-server, Ollama
    assert f"n_ctx={n_ctx}," in card and card.count(f" -c {n_ctx} ") == 2 and f"{n_ctx}-token context" in card


def test_gguf_folder_carries_ollamas_hub_files_with_greedy_params_and_the_trained_system_prompt(tiny_run):
    from sft_router.core.router_format import render_tool
    from sft_router.datagen.catalog import load_catalog

    gguf = tiny_run / "runs/tiny/gguf"
    assert (gguf / "template").read_text() == go_template(GEMMA3)
    params, n_ctx = json.loads((gguf / "params").read_text()), read_manifest(gguf)["n_ctx"]
    assert (
        params == ollama_params(GEMMA3, n_ctx) and params["stop"] == ["<end_of_turn>"] and params["temperature"] == 0
    )
    assert params["num_ctx"] == n_ctx  # the context make eval and make serve load the GGUF with
    system = (gguf / "system").read_text()
    template = (ROOT / "recipes/gemma-3-270m-it/system_prompt.txt").read_text()
    tools = load_catalog(ROOT / "recipes/gemma-3-270m-it/catalog.yaml").tools.values()
    assert system == template.replace("{tools}", " ".join(render_tool(tool) for tool in tools))
    modelfile = (gguf / "Modelfile").read_text()
    assert modelfile == render_modelfile("tiny-Q8_0.gguf", system, GEMMA3, n_ctx)
    assert (
        modelfile_section(modelfile, "TEMPLATE") == go_template(GEMMA3)
        and modelfile_section(modelfile, "SYSTEM") == system
    )
    lines = modelfile.splitlines()
    assert lines[0] == "FROM ./tiny-Q8_0.gguf" and 'PARAMETER stop "<end_of_turn>"' in lines
    assert (
        "PARAMETER temperature 0" in lines and "PARAMETER top_k 1" in lines and f"PARAMETER num_ctx {n_ctx}" in lines
    )
