"""Publishing for real: the tiny run pushed to the loopback Hub (tests/hub_server.py) by `make publish`, then read
back with the real clients (hf_hub_download, snapshot_download, datasets.load_dataset, ModelCard.load); failures
(bad token, foreign namespace, read token, network, a failed commit) leave one line and no repo behind."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path

import pytest
from conftest import ROOT, TINY, make_workspace

TOKEN, NS = "hf_test_alice", "alice"
REPOS = {"model": f"{NS}/tiny-router", "gguf": f"{NS}/tiny-router-GGUF", "dataset": f"{NS}/tiny-router-scenarios"}
MODEL_FILES = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "tokenizer.model", "chat_template.jinja", "adapter/adapter_config.json",
               "adapter/adapter_model.safetensors", "README.md", "comparison.png", "training_curves.png",
               "bfcl.png", "system_prompt.txt", "system_prompt_template.txt"}  # fmt: skip
WRITTEN_BY_PUBLISH = {"system_prompt.txt", "system_prompt_template.txt", "adapter/adapter_config.json"}
OLLAMA_FILES = {"Modelfile", "template", "params", "system"}
SYSTEM_PROMPTS = {"system_prompt.txt", "system_prompt_template.txt"}


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The suite runs offline; these tests may reach the loopback Hub (nothing else: HF_ENDPOINT points at it),
    downloading into their own cache rather than the user's."""
    import datasets.config
    import huggingface_hub.constants

    mp = monkeypatch
    mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub-cache"))
    mp.delenv("HF_HUB_OFFLINE", raising=False)
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    mp.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A valid PNG, standing in for a figure that the eval or train stage did not draw."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def copy_run(tiny_run: Path, dest: Path) -> Path:
    """A workspace holding a copy of the tiny run (its stages' outputs, not its Hub staging or checkpoints)."""
    ws = make_workspace(dest)
    source = tiny_run / "runs/tiny"
    skipped = {"hub", "hub-data", "train"}  # top-level stage folders only (dataset/hf/train is a split)
    shutil.copytree(source, ws / "runs/tiny", ignore=lambda folder, names: skipped if Path(folder) == source else ())
    return ws


def publish(argv: list[str], env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    from sft_router import publish as publish_stage

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        publish_stage.main(["--config", TINY, *argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def published(tiny_run, hub, tmp_path_factory):
    """The tiny run, with figures for its cards, pushed by `make publish` with HF_TOKEN/HF_ENDPOINT/HUB_NAMESPACE."""
    ws = copy_run(tiny_run, tmp_path_factory.mktemp("publish") / "ws")
    run = ws / "runs/tiny"
    for figure in (run / "eval/comparison.png", run / "adapter/training_curves.png", run / "eval/bfcl/bfcl.png"):
        figure.exists() or figure.write_bytes(tiny_png())
    gguf_metrics = run / "eval/gguf/metrics.json"
    if not gguf_metrics.exists():  # stands for `make eval` scoring the GGUF: the finetuned figures, as scored
        gguf_metrics.parent.mkdir()
        gguf_metrics.write_text((run / "eval/finetuned/metrics.json").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env |= {"HF_TOKEN": TOKEN, "HUB_NAMESPACE": NS, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1",
            "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    installed = str(ROOT / "pyproject.toml")  # stands for .venv/.installed: `-o` keeps make from reinstalling
    make = ["make", "-f", str(ROOT / "Makefile"), "publish", f"RECIPE={TINY}", f"PY={sys.executable}",
            f"VENV={installed}", f"RUNTIME={installed}", "-o", installed]  # fmt: skip
    result = subprocess.run(make, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stdout.splitlines() if "-m sft_router." in line] == [
        f"{sys.executable} -m sft_router.core.run_folder --config {TINY}",  # refreshes the stages' input fingerprints
        f"{sys.executable} -m sft_router.publish --config {TINY}",
    ]  # the finished stages, made from these inputs, were not rerun
    return ws, result.stdout


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines (progress bars from staging may precede them on stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def hub_api(token=TOKEN):
    from huggingface_hub import HfApi

    return HfApi(token=token)


def test_make_publish_makes_one_commit_per_repo_naming_recipe_and_git_commit(published, online):
    ws, stdout = published
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for kind, repo_id in REPOS.items():
        repo_type = "dataset" if kind == "dataset" else "model"
        commits = hub_api().list_repo_commits(repo_id, repo_type=repo_type)
        assert [c.title for c in commits][1:] == ["initial commit"]  # the Hub's .gitattributes commit, then ours
        assert TINY in commits[0].title and git[:12] in commits[0].title
        assert f"{repo_id} pushed as commit {commits[0].commit_id}" in stdout
    manifest = json.loads((ws / "runs/tiny/hub/manifest.json").read_text())
    assert set(manifest["commits"]) == set(REPOS.values())


def test_model_repo_reads_back_byte_identical(published, online, tmp_path):
    from huggingface_hub import snapshot_download

    ws, _ = published
    run = ws / "runs/tiny"
    local = Path(snapshot_download(REPOS["model"], token=TOKEN, cache_dir=tmp_path))
    pulled = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert pulled == MODEL_FILES | {".gitattributes"}  # the allow-list, nothing else
    sources = {name: run / "merged" / name for name in MODEL_FILES - WRITTEN_BY_PUBLISH if "/" not in name}
    sources |= {"adapter/adapter_model.safetensors": run / "adapter/adapter_model.safetensors",
                "README.md": run / "hub" / REPOS["model"] / "README.md", "comparison.png": run / "eval/comparison.png",
                "training_curves.png": run / "adapter/training_curves.png", "bfcl.png": run / "eval/bfcl/bfcl.png"}  # fmt: skip
    for name, source in sources.items():
        assert (local / name).read_bytes() == source.read_bytes(), name


def test_gguf_repo_reads_back_byte_identical(published, online, tmp_path):
    from huggingface_hub import hf_hub_download, list_repo_files

    ws, _ = published
    gguf = ws / "runs/tiny/gguf"
    expected = {p.name for p in gguf.glob("*.gguf")} | {"README.md", "comparison.png", "bfcl.png", ".gitattributes"}
    expected |= OLLAMA_FILES | SYSTEM_PROMPTS
    assert set(list_repo_files(REPOS["gguf"], token=TOKEN)) == expected
    path = hf_hub_download(REPOS["gguf"], "tiny-Q8_0.gguf", token=TOKEN, cache_dir=tmp_path)
    assert Path(path).read_bytes() == (gguf / "tiny-Q8_0.gguf").read_bytes()
    assert hub_api().model_info(REPOS["gguf"], files_metadata=True).siblings  # served from LFS, like the Hub
    lfs = {s.rfilename for s in hub_api().model_info(REPOS["gguf"], files_metadata=True).siblings if s.lfs}
    assert "tiny-Q8_0.gguf" in lfs and "README.md" not in lfs


def test_dataset_rows_read_back_with_load_dataset(published, online, tmp_path):
    from datasets import load_dataset, load_from_disk

    ws, _ = published
    local = load_from_disk(str(ws / "runs/tiny/dataset/hf"))
    pulled = load_dataset(REPOS["dataset"], token=TOKEN, cache_dir=str(tmp_path))
    assert set(pulled) == set(local)
    for split in local:
        assert pulled[split].features == local[split].features
        assert pulled[split].to_list() == local[split].to_list()


def test_cards_carry_the_metric_files_numbers_as_model_index(published, online):
    from huggingface_hub import DatasetCard, ModelCard

    ws, _ = published
    finetuned = json.loads((ws / "runs/tiny/eval/finetuned/metrics.json").read_text())
    card = ModelCard.load(REPOS["model"], token=TOKEN)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results if r.dataset_name != "BFCL v4"}
    assert results and results == {k: round(finetuned[k], 4) for k in results}
    bfcl = json.loads((ws / "runs/tiny/eval/bfcl/finetuned/metrics.json").read_text())["categories"]
    assert {r.dataset_split: r.metric_value for r in card.data.eval_results if r.dataset_name == "BFCL v4"} == {
        category: round(scores["accuracy"], 4) for category, scores in bfcl.items()}  # fmt: skip
    assert "exact_match_rate" in results and card.data.license == "gemma"
    assert card.data.base_model is None and card.data.datasets == [REPOS["dataset"]]  # the tiny base is on no Hub
    assert "![baseline vs fine-tuned](comparison.png)" in card.text and "training_curves.png" in card.text
    assert (
        f"ollama run hf.co/{REPOS['gguf']}:Q8_0" in card.text
        and f"# {REPOS['model']}\n" in card.text
        and "make all RECIPE=recipes/tiny/router.yaml" in card.text
    )
    assert hub_api().model_info(REPOS["model"]).model_index[0]["results"]  # the Hub sees the model-index too
    assert "\n| gguf | " in card.text and "\n| model | exact match |" in card.text  # every variant, with intervals
    assert (
        "Bootstrap 95% intervals (resampling the test rows):\n\n| model | exact match | argument F1 |\n" in card.text
    )
    gguf_card = ModelCard.load(REPOS["gguf"], token=TOKEN)
    assert "Bootstrap 95% intervals:\n\n| model | exact match | argument F1 |\n" in gguf_card.text
    assert gguf_card.data.base_model == REPOS["model"] and f"llama-cli -hf {REPOS['gguf']}:Q8_0" in gguf_card.text
    gguf = json.loads((ws / "runs/tiny/eval/gguf/metrics.json").read_text())
    gguf_results = {r.metric_type: r.metric_value for r in gguf_card.data.eval_results if r.dataset_name != "BFCL v4"}
    assert gguf_results and gguf_results == {k: round(gguf[k], 4) for k in gguf_results}
    dataset_card = DatasetCard.load(REPOS["dataset"], repo_type="dataset", token=TOKEN)
    assert {c["config_name"] for c in dataset_card.data.configs} == {"default"}


def test_second_publish_of_an_unchanged_run_makes_no_commit(published, online, monkeypatch, capsys):
    ws, _ = published
    monkeypatch.chdir(ws)
    before = {r: len(hub_api().list_repo_commits(r, repo_type=k)) for r, k in _types().items()}
    code, out, _ = publish([], {"HF_TOKEN": TOKEN, "HUB_NAMESPACE": NS}, monkeypatch, capsys)
    assert code == 0 and out.count("unchanged, no commit") == 3
    assert {r: len(hub_api().list_repo_commits(r, repo_type=k)) for r, k in _types().items()} == before


def test_a_changed_file_makes_one_commit_touching_only_its_repo(published, online, monkeypatch, capsys, tmp_path):
    ws, _ = published
    monkeypatch.chdir(ws)
    gguf = ws / "runs/tiny/gguf/tiny-Q8_0.gguf"
    gguf.write_bytes(gguf.read_bytes() + b"\0" * 32)  # as a reconversion would change it; no card names its bytes
    before = {r: len(hub_api().list_repo_commits(r, repo_type=k)) for r, k in _types().items()}
    code, out, _ = publish([], {"HF_TOKEN": TOKEN, "HUB_NAMESPACE": NS}, monkeypatch, capsys)
    after = {r: len(hub_api().list_repo_commits(r, repo_type=k)) for r, k in _types().items()}
    assert code == 0 and {r: after[r] - before[r] for r in after} == {r: int(r == REPOS["gguf"]) for r in after}
    assert Path(_download(REPOS["gguf"], "tiny-Q8_0.gguf", tmp_path)).read_bytes() == gguf.read_bytes()


def test_private_repo_is_invisible_without_the_token(tiny_run, hub, online, monkeypatch, capsys, tmp_path):
    from datasets import load_dataset
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.chdir(copy_run(tiny_run, tmp_path / "ws"))
    argv = ["--only", "dataset", "--private", "true", "--dataset_repo", "private-scenarios"]
    code, _, err = publish(argv, {"HF_TOKEN": TOKEN, "HUB_NAMESPACE": NS}, monkeypatch, capsys)
    assert code == 0, err
    repo_id = f"{NS}/private-scenarios"
    assert hub_api().dataset_info(repo_id).private is True
    for token in (False, "hf_test_reader"):  # anonymous (401) and another user's token (404)
        with pytest.raises(RepositoryNotFoundError):
            hub_api(token).dataset_info(repo_id)
    with pytest.raises(Exception, match="doesn't exist on the Hub or cannot be accessed"):
        load_dataset(repo_id, token=False, cache_dir=str(tmp_path / "anon"))
    assert load_dataset(repo_id, token=TOKEN, cache_dir=str(tmp_path / "alice"))["test"].num_rows == 24
    argv[argv.index("true")] = "false"  # the recipe decides visibility, also of a repo that already exists
    code, out, err = publish(argv, {"HF_TOKEN": TOKEN, "HUB_NAMESPACE": NS}, monkeypatch, capsys)
    assert code == 0 and "unchanged, no commit" in out, err
    assert hub_api(False).dataset_info(repo_id).private is False


@pytest.mark.parametrize(
    ("token", "namespace", "endpoint", "message"),
    [
        ("hf_not_a_token", NS, None, "rejected HF_TOKEN (HTTP 401"),
        (TOKEN, "carol", None, "cannot write to namespace 'carol': set HUB_NAMESPACE"),
        ("hf_test_reader", "bob", None, "HF_TOKEN is a read token: create a write token"),
        (TOKEN, NS, "dead", "cannot reach the Hub at http://127.0.0.1:"),
    ],
    ids=["bad-token", "foreign-namespace", "read-token", "network-down"],
)
def test_refused_push_fails_in_one_line_and_leaves_no_repo(
    tiny_run, hub, online, monkeypatch, capsys, tmp_path, token, namespace, endpoint, message
):
    import huggingface_hub.constants

    monkeypatch.chdir(copy_run(tiny_run, tmp_path / "ws"))
    if endpoint == "dead":
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", _closed_port_url())
    repos_before = set(hub.state.repos)
    argv = ["--model_repo", "refused", "--gguf_repo", "refused-GGUF", "--dataset_repo", "refused-data"]
    code, out, err = publish(argv, {"HF_TOKEN": token, "HUB_NAMESPACE": namespace}, monkeypatch, capsys)
    assert code == 2 and error_lines(err) == [err.splitlines()[-1]] and message in err, err
    assert set(hub.state.repos) == repos_before
    assert not (Path("runs/tiny/hub") / "manifest.json").exists()  # make will rerun the stage


def test_a_failed_commit_deletes_the_repo_it_created(tiny_run, hub, online, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(copy_run(tiny_run, tmp_path / "ws"))
    hub.state.commit_failures.append(503)
    argv = ["--only", "dataset", "--dataset_repo", "half-pushed"]
    code, _, err = publish(argv, {"HF_TOKEN": TOKEN, "HUB_NAMESPACE": NS}, monkeypatch, capsys)
    assert code == 2 and error_lines(err) == [err.splitlines()[-1]] and "HTTP 503" in err, err
    assert hub.repo(f"{NS}/half-pushed", "dataset") is None and not hub.state.commit_failures


def test_without_token_exactly_the_repo_folders_are_staged(tiny_run, hub, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(copy_run(tiny_run, tmp_path / "ws"))
    monkeypatch.delenv("HUB_NAMESPACE", raising=False)
    repos_before = set(hub.state.repos)
    code, out, _ = publish([], {}, monkeypatch, capsys)
    hub_dir = Path("runs/tiny/hub")
    assert code == 0 and out == (
        "publish: no HF_TOKEN, staged runs/tiny/hub/your-namespace/tiny-router-scenarios, "
        "runs/tiny/hub/your-namespace/tiny-router, runs/tiny/hub/your-namespace/tiny-router-GGUF\n"
        "push them later with: rm -r runs/tiny/hub && HF_TOKEN=hf_... HUB_NAMESPACE=your-namespace "
        "make publish RECIPE=recipes/tiny/router.yaml\n"
    )
    staged = {p.relative_to(hub_dir).as_posix() for p in hub_dir.rglob("*") if p.is_file()}
    drawn = {n for n, p in (("comparison.png", "eval"), ("training_curves.png", "adapter"), ("bfcl.png", "eval/bfcl"))
             if Path("runs/tiny", p, n).is_file()}  # fmt: skip
    model = {f"your-namespace/tiny-router/{n}" for n in MODEL_FILES if not n.endswith(".png") or n in drawn}
    gguf_files = (
        {p.name for p in Path("runs/tiny/gguf").glob("*.gguf")} | {"README.md"} | (drawn - {"training_curves.png"})
    )
    gguf_files |= OLLAMA_FILES | SYSTEM_PROMPTS
    dataset = {f"your-namespace/tiny-router-scenarios/{n}" for n in ("README.md", *_parquet_names())}
    assert staged == model | {f"your-namespace/tiny-router-GGUF/{n}" for n in gguf_files} | dataset | {"manifest.json"}
    assert set(hub.state.repos) == repos_before  # nothing went over the network


def test_loopback_hub_serves_ranges_heads_and_paged_trees(published, online, hub):
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(REPOS["gguf"], "tiny-Q8_0.gguf")
    data = (published[0] / "runs/tiny/gguf/tiny-Q8_0.gguf").read_bytes()
    meta = get_hf_file_metadata(url, token=TOKEN)
    assert meta.size == len(data) and len(meta.etag) == 64 and meta.commit_hash  # LFS files: ETag is the sha256
    request = urllib.request.Request(url, headers={"Range": "bytes=4-11", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == data[4:12]
        assert response.headers["Content-Range"] == f"bytes 4-11/{len(data)}"
    page_size, hub.state.page_size = hub.state.page_size, 2
    try:
        paths = [e.path for e in hub_api().list_repo_tree(REPOS["model"], recursive=True)]
    finally:
        hub.state.page_size = page_size
    assert len(paths) == len(MODEL_FILES) + 2 and "adapter" in paths  # files, .gitattributes and the folder


def _types() -> dict[str, str]:
    return {repo_id: "dataset" if kind == "dataset" else "model" for kind, repo_id in REPOS.items()}


def _download(repo_id: str, filename: str, cache_dir: Path) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, token=TOKEN, cache_dir=cache_dir)


def _parquet_names() -> list[str]:
    return [
        f"data/{split}-00000-of-00001.parquet"
        for split in ("train", "validation", "test", "test_unseen", "test_procedural")
    ]


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_metrics_tables_carry_the_scorers_intervals_for_every_variant():
    from sft_router.evaluation.scoring import score
    from sft_router.release.card_rendering import intervals_table, metrics_table

    call, reply = '{"tool_name": "set_alarm", "arguments": {"time": "7点"}}', "好的。"
    wrong = '{"tool_name": "set_alarm", "arguments": {"time": "8点"}}'
    references = [call, call, reply, call]
    metrics = {name: score(outputs, references)[0] for name, outputs in
               {"baseline": [reply] * 4, "finetuned": [call, wrong, reply, call], "gguf": references}.items()}  # fmt: skip
    table = metrics_table(metrics).splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| baseline", "| finetuned", "| gguf"]
    assert table[3].startswith("| finetuned | 0.750 |") and table[4].endswith("| 4 |")
    intervals = intervals_table(metrics).splitlines()
    assert intervals[0] == "| model | exact match | argument F1 |"
    low, high = metrics["finetuned"]["exact_match_rate_ci95"]
    assert intervals[3].startswith(f"| finetuned | [{low:.3f}, {high:.3f}] | [") and 0.25 <= low < 0.75 < high
    assert intervals[4] == "| gguf | [1.000, 1.000] | [1.000, 1.000] |"
    stripped = {name: {k: v for k, v in m.items() if not k.endswith("_ci95")} for name, m in metrics.items()}
    assert intervals_table(stripped) == ""  # the section goes only where no variant carries an interval
