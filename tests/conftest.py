"""Offline test setup: no network, a private cache, and a tiny run built once per session in a scratch folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hub_server import Account, HubServer

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.pop("HF_TOKEN", None)
# The tiny model's matrices are too small for two threads to pay off; on busy cores they ran 5-40x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The loopback Hub starts before anything imports huggingface_hub, which reads HF_ENDPOINT once at import; Xet off,
# since the Hub then takes uploads over Git LFS, which the loopback server speaks.
HUB = HubServer(
    {"hf_test_alice": Account("alice", orgs=("router-org",)), "hf_test_reader": Account("bob", role="read")}
)
os.environ["HF_ENDPOINT"] = HUB.start().url
os.environ["HF_HUB_DISABLE_XET"] = "1"
TINY = "recipes/tiny/router.yaml"


def make_workspace(path: Path) -> Path:
    """A folder laid out like the repo root (recipes and card templates), where stages write runs/."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("recipes", "model_card", "dataset_card"):
        if not (path / name).exists():
            (path / name).symlink_to(ROOT / name)
    return path


@pytest.fixture(scope="session")
def hub() -> HubServer:
    """The loopback Hub that HF_ENDPOINT points at (tests/hub_server.py); tokens hf_test_alice and hf_test_reader."""
    return HUB


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(make_workspace(tmp_path / "ws"))
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Every stage of the tiny recipe, run once for the session; yields the workspace folder."""
    from sft_router import card, data, evaluate, gguf, merge, publish, train

    ws = make_workspace(tmp_path_factory.mktemp("tiny"))
    llama_runtime_or_reason()
    old = os.getcwd()
    os.chdir(ws)
    try:
        for stage in (data, train, merge, gguf, evaluate, card, publish):  # eval scores the GGUF too
            stage.main(["--config", TINY])
        yield ws
    finally:
        os.chdir(old)


def llama_runtime_or_reason() -> str | None:
    """Install the llama.cpp runtime from the project's wheel cache (built once if missing); None when ready.

    Only when the wheel cannot be built does `make eval` skip the GGUF (SFT_ROUTER_GGUF_EVAL=skip) and the
    runtime tests skip, with this reason.
    """
    from sft_router.core.errors import UsageError
    from sft_router.modeling.llama_runtime import install_runtime

    if "SFT_ROUTER_RUNTIME_UNAVAILABLE" not in os.environ:
        try:
            install_runtime()
            os.environ["SFT_ROUTER_RUNTIME_UNAVAILABLE"] = ""
        except UsageError as exc:
            os.environ["SFT_ROUTER_RUNTIME_UNAVAILABLE"] = f"llama.cpp runtime wheel cannot be built here: {exc}"
            os.environ["SFT_ROUTER_GGUF_EVAL"] = "skip"
    return os.environ["SFT_ROUTER_RUNTIME_UNAVAILABLE"] or None


def copy_recipe(src: str, dest: Path, replace: dict[str, str]) -> Path:
    """A changed copy of a recipe; put it in a folder named like its run (`.../tiny/x.yaml`), as parse_recipe asks."""
    text = (ROOT / src).read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest


@contextlib.contextmanager
def counting_evals(llm):
    """Tokens of each llm.eval call (a llama.cpp Llama) inside the block; the real eval still runs."""
    evaluated, evaluate = [], llm.eval
    llm.eval = lambda tokens: (evaluated.append(len(tokens)), evaluate(tokens))
    try:
        yield evaluated
    finally:
        llm.eval = evaluate
