"""The Space route: where gguf-my-repo cannot be used, one line with the manual steps and the repo it creates.

The success path needs the real Space (OAuth, network) and is not exercised here; these tests use the
real gradio_client against a loopback port where nothing answers, which is how a refusal looks to it.
"""

from __future__ import annotations

import socket

import pytest

from sft_router.core.errors import UsageError
from sft_router.release.gguf_space import call_process_model, manual_steps, space_repo_id


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_space_repo_is_named_like_gguf_my_repo_names_it():
    assert space_repo_id("alice/gemma-3-270m-it-router") == "alice/gemma-3-270m-it-router-Q8_0-GGUF"


def test_a_refused_call_is_one_line_with_manual_steps_and_the_repo_name():
    with pytest.raises(UsageError) as caught:
        call_process_model(f"http://127.0.0.1:{closed_port()}/", "alice/tiny-router", "hf_dummy")
    message = str(caught.value)
    assert "\n" not in message and "refused the API call" in message
    assert manual_steps("alice/tiny-router") in message and "alice/tiny-router-Q8_0-GGUF" in message


def test_space_backend_without_a_token_says_how_to_proceed(workspace, monkeypatch, capsys):
    from sft_router import gguf

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("GGUF_BACKEND", "space")
    monkeypatch.setenv("HUB_NAMESPACE", "alice")
    (workspace / "runs/tiny/merged").mkdir(parents=True)
    (workspace / "runs/tiny/merged/manifest.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        gguf.main(["--config", "recipes/tiny/router.yaml"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: HF_TOKEN is not set") and "alice/tiny-router-Q8_0-GGUF" in error
    assert not (workspace / "runs/tiny/gguf").exists()
