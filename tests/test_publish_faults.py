"""Publishing that never leaves a card-less repo: a connection dropped mid-upload and SIGTERM mid-push, injected into
the loopback Hub, end in one line; the repo the push created is deleted, or completed by the rerun."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import HUB, TINY
from test_publish import NS, TOKEN, online  # noqa: F401 - the fixture

from sft_router import data, publish

SMALL = ["--num_train", "8", "--num_validation", "2", "--num_test", "4", "--num_test_unseen", "8"]
# More drops than one push can attempt: each split's parquet file is tried 6 times (5 retries), and the uploads run
# in parallel, so with fewer drops than attempts one of them may get through, depending on the threads' order.
DROPS = 100


@pytest.fixture
def dataset_run(workspace, monkeypatch):
    import huggingface_hub.utils._http

    data.main(["--config", TINY, *SMALL])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HUB_NAMESPACE", NS)
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)  # retries without waiting
    yield workspace
    HUB.state.faults.clear()  # a failed test leaves no fault for the next one


def push(repo: str, capsys) -> tuple[int, list[str], str]:
    try:
        publish.main(["--config", TINY, *SMALL, "--only", "dataset", "--dataset_repo", repo])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.startswith("error:")], out


def drop() -> bool:
    return True


def files(hub, repo: str) -> set[str]:
    found = hub.repo(f"{NS}/{repo}", "dataset")
    return set(found.head.files) if found else set()


def test_a_dropped_upload_is_one_line_and_leaves_no_repo(dataset_run, hub, online, capsys):  # noqa: F811
    hub.state.faults["lfs_upload"] = [drop] * DROPS  # every retry of the upload too
    code, errors, _ = push("dropped", capsys)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: cannot reach the Hub at {hub.url}") and errors[0].endswith("then rerun")
    assert hub.repo(f"{NS}/dropped", "dataset") is None
    assert not (dataset_run / "runs/tiny/hub-data").exists()
    hub.state.faults.clear()


def test_when_the_cleanup_fails_too_the_line_says_so_and_a_rerun_completes_the_repo(
    dataset_run,
    hub,
    online,  # noqa: F811
    capsys,
):
    hub.state.faults.update(
        lfs_upload=[drop] * DROPS, delete_repo=[drop] * DROPS
    )  # the network is gone for the cleanup
    code, errors, _ = push("card-less", capsys)
    assert code == 2 and len(errors) == 1, errors
    assert f"{NS}/card-less was created but not filled and could not be deleted: rerun to complete it" in errors[0]
    assert files(hub, "card-less") == {".gitattributes"}
    hub.state.faults.clear()
    code, errors, out = push("card-less", capsys)
    assert code == 0 and not errors and f"{NS}/card-less pushed as commit" in out
    assert {"README.md", ".gitattributes"} < files(hub, "card-less")
    assert any(name.startswith("data/test-") for name in files(hub, "card-less"))


def test_sigterm_mid_push_cleans_up_like_ctrl_c(dataset_run, hub, online, capsys):  # noqa: F811
    def terminate() -> bool:  # a CI timeout: SIGTERM while the commit is in flight
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        return True

    hub.state.faults["commit"] = [terminate]
    before = signal.getsignal(signal.SIGTERM)
    code, errors, _ = push("terminated", capsys)
    assert code == 143 and errors == [
        "error: publish stopped by SIGTERM: no repo was left half-filled; rerun to publish"
    ], errors
    assert hub.repo(f"{NS}/terminated", "dataset") is None
    assert not (dataset_run / "runs/tiny/hub-data").exists() and not list((dataset_run / "runs/tiny").glob(".hub*"))
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the publish's only
