"""A second model family through every stage: `make smoke RECIPE=recipes/tiny-qwen3/router.yaml` (a random tiny
Qwen3, ChatML) builds data, trains with packed scenes, evaluates (BFCL too), merges, converts with the pinned
llama.cpp converter, writes Ollama's files and the cards and pushes to the loopback Hub; the GGUF carries ChatML and
answers in it, Ollama's Go template renders the same prompts, and `make serve` answers with `tool_calls`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from conftest import ROOT, llama_runtime_or_reason, make_workspace
from test_chat_template import openai_tools
from test_gguf_modelfile import go_render
from test_publish import online  # noqa: F401 (a fixture: these tests read the loopback Hub)

from sft_router.modeling.families import QWEN3

RECIPE = "recipes/tiny-qwen3/router.yaml"
RUN = "runs/tiny-qwen3"
TOKEN, NS = "hf_test_alice", "alice"
STAGES = ("dataset", "adapter", "eval", "merged", "gguf", "card", "hub")


@pytest.fixture(scope="module")
def qwen3_run(hub, tmp_path_factory):
    """`make smoke RECIPE=recipes/tiny-qwen3/router.yaml` in a scratch workspace, pushing to the loopback Hub."""
    if reason := llama_runtime_or_reason():
        pytest.skip(reason)
    ws = make_workspace(tmp_path_factory.mktemp("qwen3") / "ws")
    for name in ("Makefile", "pyproject.toml", "src"):  # `make smoke` calls `$(MAKE) publish` in the workspace
        (ws / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env |= {"HF_TOKEN": TOKEN, "HUB_NAMESPACE": NS, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(ROOT / "src")}
    stamps = ws / "venv.stamp", ws / "runtime.stamp"  # stand for .venv/.installed and .venv/.runtime, newer
    for stamp in stamps:
        stamp.touch()
    make = ["make", "smoke", f"RECIPE={RECIPE}", f"PY={sys.executable}", f"VENV={stamps[0]}", f"RUNTIME={stamps[1]}"]
    result = subprocess.run(make, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return ws


@pytest.fixture(scope="module")
def test_rows(qwen3_run):
    return [json.loads(line) for line in (qwen3_run / RUN / "dataset/test.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def llm(qwen3_run):
    from sft_router.modeling.llama_runtime import load_gguf

    return load_gguf(qwen3_run / RUN / "gguf/tiny-qwen3-Q8_0.gguf", n_ctx=4096)


def test_every_stage_finishes_and_the_repos_reach_the_hub(qwen3_run, online):  # noqa: F811
    from huggingface_hub import HfApi

    run = qwen3_run / RUN
    assert all((run / stage / "manifest.json").is_file() for stage in STAGES)
    scored = {p.parent.name for p in (run / "eval").glob("*/metrics.json")}
    assert {"baseline", "finetuned", "gguf", "gguf_grammar"} <= scored
    assert json.loads((run / "eval/bfcl/summary.json").read_text())
    adapter = json.loads((run / "adapter/manifest.json").read_text())
    assert adapter["recipe"] == RECIPE
    files = set(HfApi(token=TOKEN).list_repo_files(f"{NS}/tiny-qwen3-router-GGUF"))
    assert {"tiny-qwen3-Q8_0.gguf", "template", "params", "system", "Modelfile", "README.md"} <= files


def test_the_cards_name_qwen3s_licence_terms_and_turns_not_gemmas(qwen3_run):
    from huggingface_hub import ModelCard

    from sft_router.modeling.families import QWEN3

    for path in ("card/README.md", "card/gguf/README.md"):
        card = ModelCard.load(qwen3_run / RUN / path)
        assert card.data.license == "apache-2.0" and "qwen3" in card.data.tags and "gemma3" not in card.data.tags
        assert f"[{QWEN3.terms_name}]({QWEN3.terms_url})" in card.text and "Gemma Terms" not in card.text
        assert "<|im_start|>assistant" in card.text and "<start_of_turn>" not in card.text


def test_the_gguf_carries_chatml_and_answers_in_it(qwen3_run, test_rows, llm):
    from transformers import AutoTokenizer

    from sft_router.gguf import describe_gguf
    from sft_router.modeling.llama_runtime import complete, greedy_ids, prompt_ids
    from sft_router.serve import render_chat

    facts = describe_gguf(qwen3_run / RUN / "gguf/tiny-qwen3-Q8_0.gguf")
    assert facts["architecture"] == "qwen3" and facts["add_bos_token"] is False
    assert facts["eos_token"] == facts["eot_token"] == "<|im_end|>" and facts["turn_token_types"] == ["CONTROL"] * 2
    tokenizer = AutoTokenizer.from_pretrained(qwen3_run / RUN / "merged")
    for row in test_rows[:4]:
        prompt = render_chat(llm.metadata["tokenizer.chat_template"], row["prompt"], None)
        system, user = row["prompt"][0]["content"], row["prompt"][1]["content"].strip()
        turns = [("system", system), ("user", user)]
        assert prompt == "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + QWEN3.model_turn
        assert prompt == tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert prompt_ids(llm, prompt) == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = greedy_ids(llm, prompt_ids(llm, prompt), 24, reuse_prefix=False)
        assert QWEN3.stop_token not in llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
    answer = complete(llm, prompt, 24, reuse_prefix=False)
    assert answer == complete(llm, prompt, 24)  # greedy, and the same from the reused prefix


def test_ollamas_template_renders_the_test_prompts_as_chatml(qwen3_run, test_rows, tmp_path):
    from transformers import AutoTokenizer

    gguf = qwen3_run / RUN / "gguf"
    assert json.loads((gguf / "params").read_text())["stop"] == ["<|im_end|>"]
    tokenizer = AutoTokenizer.from_pretrained(qwen3_run / RUN / "merged")
    prompts = go_render((gguf / "template").read_text(), [row["prompt"] for row in test_rows], tmp_path)
    assert len(prompts) == len(test_rows) > 0
    for row, prompt in zip(test_rows, prompts):
        assert prompt == tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)


def test_make_serve_answers_tool_calls(qwen3_run, test_rows, tmp_path):
    from test_serve import _wait_for

    from sft_router.core.config import parse_recipe

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "SFT_ROUTER_API_KEY"} | {"PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "sft_router.serve", "--config", RECIPE, "--port", str(port)]
    log = tmp_path / "stderr.log"
    server = subprocess.Popen(command, cwd=qwen3_run, env=env, stderr=log.open("w"), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    old = os.getcwd()
    os.chdir(qwen3_run)
    try:
        (recipe,) = parse_recipe(["--config", RECIPE])
        _wait_for(url, server, log)
        row = next(row for row in test_rows if row["tools"])
        messages = [{"role": "system", "content": (qwen3_run / recipe.data.system_prompt).read_text()},
                    {"role": "user", "content": row["prompt"][1]["content"]}]  # fmt: skip
        body = {"model": "router", "messages": messages,
                "tools": openai_tools(recipe, row["tools"]), "tool_choice": "required", "max_tokens": 64}  # fmt: skip
        request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        reply = json.loads(urllib.request.urlopen(request, timeout=120).read())
    finally:
        os.chdir(old)
        server.terminate()
        server.wait(timeout=30)
    message = reply["choices"][0]["message"]
    assert reply["choices"][0]["finish_reason"] == "tool_calls", message
    (call,) = message["tool_calls"]
    assert call["function"]["name"] in row["tools"] and isinstance(json.loads(call["function"]["arguments"]), dict)
