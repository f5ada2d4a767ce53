"""Every code block on the published cards runs: the tiny run is pushed to the loopback Hub (under router-org, so
that test_publish's repos stay its own), and each ```python block and each runnable ```bash line of the model and
GGUF cards is executed as a user would, against those repos (transformers, peft, llama-cpp-python, `hf download`, and the `openai` client and
curl against `make serve`). Ollama and the llama.cpp CLI are not installed here: their lines are checked to name
files that the repo holds."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, llama_runtime_or_reason
from test_publish import TOKEN, copy_run
from test_serve import served  # noqa: F401  (fixture)

ORG = "router-org"  # a namespace alice's token may write
REPOS = {"model": f"{ORG}/tiny-router", "gguf": f"{ORG}/tiny-router-GGUF"}

BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.DOTALL)
NOT_HERE = {"ollama", "llama-cli", "llama-server"}


@pytest.fixture(scope="module")
def published(tiny_run, hub, tmp_path_factory) -> Path:
    """A copy of the tiny run pushed by the publish stage with HF_TOKEN and HUB_NAMESPACE=router-org."""
    import huggingface_hub.constants

    from sft_router import publish

    ws = copy_run(tiny_run, tmp_path_factory.mktemp("snippets") / "ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        mp.setenv("HF_TOKEN", TOKEN)
        mp.setenv("HUB_NAMESPACE", ORG)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        publish.main(["--config", TINY])
    return ws


def code_blocks(card: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(card.read_text())


def user_env(hub, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "PYTHONPATH")}
    return env | {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home"),
                  "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}  # fmt: skip


RUNNER = """import json, sys
for number, code in enumerate(json.loads(sys.stdin.read())):
    print(f"=== block {number}", flush=True)
    exec(compile(code, f"<block {number}>", "exec"), {"__name__": "__main__"})
"""


def run_python(blocks: list[str], env: dict, cwd: Path) -> list[str]:
    """Run the blocks one after another in one fresh interpreter, as pasted into one session; their outputs."""
    result = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return re.split(r"=== block \d+\n", result.stdout)[1:]


def run_bash_line(line: str, env: dict, cwd: Path, repo: Path) -> None:
    command = line.split("   #", 1)[0].strip()
    words = shlex.split(command.split("&&")[-1])
    if words[0] in NOT_HERE:  # the files it names must be in the repo
        for word in words:
            name = word.rsplit("/", 1)[-1]
            if "." in name or name == "Modelfile":
                assert name.startswith("hf.co") or (repo / name).is_file() or ":" in name, f"{line}: no {name}"
        return
    result = subprocess.run(command, shell=True, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{line}\n---\n{result.stderr[-2000:]}"


def test_model_card_code_blocks_run(published, hub, tmp_path):
    from sft_router.modeling.base_models import resolve_base_model

    ws = published
    card = ws / f"runs/tiny/hub/{REPOS['model']}/README.md"
    blocks = code_blocks(card)
    assert [kind for kind, _ in blocks] == ["python", "python", "python"]
    # the tiny base is built on this machine, never on a Hub: the adapter snippet loads it from where it was built
    peft = blocks[2][1].replace('"sft-router/tiny-gemma3"', repr(resolve_base_model("sft-router/tiny-gemma3")))
    outputs = run_python([blocks[0][1], blocks[1][1], peft], user_env(hub, tmp_path), tmp_path)
    answer, tools_prompt, adapter_base = outputs
    assert answer.strip()  # the answer, whatever the tiny model says
    assert (
        '{"tool_name": "get_weather", "tool_description": "Current weather in a city.", "arguments": ' in tools_prompt
    )
    assert adapter_base.strip() == "sft-router/tiny-gemma3"


def test_gguf_card_code_blocks_run(published, hub, served, tmp_path):  # noqa: F811
    if reason := llama_runtime_or_reason():
        pytest.skip(reason)
    ws = published
    url = served[0]
    repo = ws / f"runs/tiny/hub/{REPOS['gguf']}"
    blocks = [(kind, code.replace("http://127.0.0.1:8000/v1", url)) for kind, code in code_blocks(repo / "README.md")]
    env = user_env(hub, tmp_path)
    assert [kind for kind, _ in blocks].count("bash") == 4
    for code in (code for kind, code in blocks if kind == "bash"):
        for line in (line for line in code.splitlines() if line.strip()):
            run_bash_line(line, env, tmp_path, repo)
    python = [code for kind, code in blocks if kind == "python"]
    assert len(run_python(python, env, tmp_path)) == 2  # both ran; the tiny model's answers may be empty
    downloaded = tmp_path / REPOS["gguf"].split("/")[1]
    assert (downloaded / "Modelfile").read_bytes() == (repo / "Modelfile").read_bytes()  # `hf download` ran
