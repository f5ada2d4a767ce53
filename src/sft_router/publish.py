"""Stage the dataset, model and GGUF repos of a run and push each to the Hub as one commit when a token is set.

Every repo is first assembled under runs/<name>/hub/<namespace>/<repo>/ from an allow-list (no checkpoints,
optimizer state, logs or .env files), so the staged folder is exactly what the repo will hold. The cards are
rendered again here, as `make card` renders them, so that they name the repos of this push's HUB_NAMESPACE.

With HF_TOKEN each folder becomes one commit (new and changed files, the card, and deletions of files the run no
longer makes), its message naming the recipe and the project's git commit; a folder whose files all match the
remote tree makes no commit. A repo is never left half-pushed: it is created and filled in the same publish, and
deleted again if that commit fails or the publish is stopped (Ctrl-C or SIGTERM, e.g. a CI timeout); if even that
deletion fails (the connection is gone), the error says so and a rerun completes the repo. Without HF_TOKEN the folders stay staged and the command that pushes them
later is printed.

The dataset repo holds the parquet layout and README metadata (`configs`, `dataset_info`) that
`DatasetDict.push_to_hub` writes, but in a single commit together with the dataset card: push_to_hub would commit
its own README first and leave a card-less repo between two commits.

Usage: python -m sft_router.publish --config recipes/tiny/router.yaml            (all three repos)
       python -m sft_router.publish --config recipes/tiny/router.yaml --only dataset
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sft_router.core.config import namespace, parse_recipe, repo_ids
from sft_router.core.errors import UsageError, network_errors, one_line_errors
from sft_router.core.router_format import load_system_prompt, published_system_prompt
from sft_router.core.run_folder import git_commit, stage_output
from sft_router.datagen.catalog import load_catalog
from sft_router.release.card_rendering import (
    adapter_base,
    read_metrics,
    render_dataset_card,
    render_gguf_card,
    render_model_card,
    save_card,
)

MODEL_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "chat_template.jinja",
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GGUF_EXTRAS = ("Modelfile", "template", "params", "system")  # Ollama's files: `ollama run hf.co/...` reads the last 3
HUB_MANAGED = (".gitattributes",)  # written by the Hub when it creates a repo; never ours to delete
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


@dataclass
class PublishCommand:
    only: str | None = field(default=None, metadata={"help": "Push one repo only: dataset, model or gguf."})


def _require(path: Path, make_target: str, recipe) -> Path:
    if not path.exists():
        raise UsageError(f"{path} is missing: run `make {make_target} RECIPE={recipe.path}` first")
    return path


def _copy(files: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, dest / path.name)


def describe_splits(card_data, splits, parquet_bytes: int) -> None:
    """Add the `configs` and `dataset_info` metadata that push_to_hub writes: the Hub and load_dataset read splits."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs

    split_infos = SplitDict()
    for name, split in splits.items():
        split_infos.add(SplitInfo(name=name, num_bytes=split.data.nbytes, num_examples=len(split)))
    features = next(iter(splits.values())).features
    info = DatasetInfo(
        config_name="default",
        features=features,
        splits=split_infos,
        download_size=parquet_bytes,
        dataset_size=sum(s.num_bytes for s in split_infos.values()),
    )
    info.size_in_bytes = info.download_size + info.dataset_size
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    files = [{"split": name, "path": f"data/{name}-*"} for name in splits]
    MetadataConfigs({"default": {"data_files": files}}).to_dataset_card_data(card_data)


def stage_dataset(recipe, dest: Path) -> None:
    from datasets import load_from_disk

    splits = load_from_disk(str(_require(recipe.stage_dir("dataset") / "hf", "data", recipe)))
    for name, split in splits.items():
        split.to_parquet(str(dest / "data" / f"{name}-00000-of-00001.parquet"))
    card = render_dataset_card(recipe)
    describe_splits(card.data, splits, sum(p.stat().st_size for p in (dest / "data").glob("*.parquet")))
    card.save(dest / "README.md")


def write_system_prompts(recipe, dest: Path) -> None:
    """The exact system prompt the model was trained with (every catalog tool listed), and its template whose
    `{tools}` the chat template fills from `tools=`."""
    dest.mkdir(parents=True, exist_ok=True)
    tools = load_catalog(recipe.data.catalog).tools.values()
    (dest / "system_prompt.txt").write_text(published_system_prompt(recipe.data, tools), encoding="utf-8")
    (dest / "system_prompt_template.txt").write_text(load_system_prompt(recipe.data.system_prompt), encoding="utf-8")


def declare_adapter_base(recipe, adapter_config: Path) -> None:
    """PEFT writes the local folder the base was loaded from; the repo names the Hub id (or the recipe's base)."""
    config = json.loads(adapter_config.read_text())
    config["base_model_name_or_path"] = adapter_base(recipe)
    adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def stage_model(recipe, dest: Path) -> None:
    merged, adapter = recipe.stage_dir("merged"), recipe.stage_dir("adapter")
    _copy([_require(merged / name, "merge", recipe) for name in MODEL_FILES], dest)
    _copy([_require(adapter / name, "train", recipe) for name in ADAPTER_FILES], dest / "adapter")
    declare_adapter_base(recipe, dest / "adapter" / "adapter_config.json")
    write_system_prompts(recipe, dest)
    save_card(recipe, render_model_card(recipe, read_metrics(recipe)), dest)


def stage_gguf(recipe, dest: Path) -> None:
    gguf = _require(recipe.stage_dir("gguf"), "gguf", recipe)
    ggufs = sorted(gguf.glob("*.gguf"))
    if not ggufs:
        raise UsageError(f"no .gguf file in {gguf}: run `make gguf RECIPE={recipe.path}` first")
    _copy([*ggufs, *(gguf / name for name in GGUF_EXTRAS if (gguf / name).is_file())], dest)
    write_system_prompts(recipe, dest)
    save_card(recipe, render_gguf_card(recipe, read_metrics(recipe)), dest)


STAGERS = {"dataset": stage_dataset, "model": stage_model, "gguf": stage_gguf}


def _file_digest(path: Path, algorithm: str) -> str:
    """sha256 of the content (an LFS oid) or git's blob sha1 (a regular file's oid)."""
    digest = hashlib.new(algorithm)
    if algorithm == "sha1":
        digest.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unchanged(path: Path, remote) -> bool:
    if remote.size != path.stat().st_size:
        return False
    if remote.lfs is not None:
        return _file_digest(path, "sha256") == remote.lfs.sha256
    return _file_digest(path, "sha1") == remote.blob_id


def plan_commit(folder: Path, remote: dict) -> list:
    """Operations that make the repo equal the staged folder: changed or new files, and files no longer staged."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    adds = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        for name, path in local.items()
        if name not in remote or not _unchanged(path, remote[name])
    ]
    stale = sorted(set(remote) - set(local) - set(HUB_MANAGED))
    return adds + [CommitOperationDelete(path_in_repo=name) for name in stale]


def remote_files(api, repo_id: str, repo_type: str) -> dict:
    from huggingface_hub.hf_api import RepoFile

    tree = api.list_repo_tree(repo_id, repo_type=repo_type, recursive=True)
    return {entry.path: entry for entry in tree if isinstance(entry, RepoFile)}


def _existing_repo(api, repo_id: str, repo_type: str):
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return api.repo_info(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return None


def push_folder(api, repo_id: str, repo_type: str, folder: Path, private: bool, message: tuple[str, str]):
    """One commit that makes `repo_id` equal `folder`; None when nothing changed. A repo created here whose commit
    then fails is deleted again, so a failure never leaves an empty or card-less repo behind."""
    existing = _existing_repo(api, repo_id, repo_type)
    created, head = existing is None, existing.sha if existing else None
    if created:
        api.create_repo(repo_id, repo_type=repo_type, private=private)
    elif bool(existing.private) != private:  # the recipe decides visibility, also for a repo made earlier
        api.update_repo_settings(repo_id, repo_type=repo_type, private=private)
    try:
        operations = plan_commit(folder, remote_files(api, repo_id, repo_type))
        if not operations:
            return None
        summary, description = message
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=summary,
            commit_description=description,
            repo_type=repo_type,
            parent_commit=head,
        )
        return commit.oid
    except BaseException as exc:
        if created and not _delete_quietly(api, repo_id, repo_type):
            exc.add_note(f"{repo_id} was created but not filled and could not be deleted: rerun to complete it")
        raise


def _delete_quietly(api, repo_id: str, repo_type: str) -> bool:
    """Delete a repo this publish created; False when that failed too."""
    try:
        api.delete_repo(repo_id, repo_type=repo_type, missing_ok=True)
    except Exception:  # the push's own error is the one to report; this one usually has the same cause
        return False
    return True


def check_write_access(api, ns: str) -> None:
    """Fail before creating anything when the token is read-only or belongs to someone without rights on `ns`."""
    me = api.whoami()
    if me.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise UsageError(f"HF_TOKEN is a read token: create a write token at {TOKENS_PAGE} and export HF_TOKEN")
    writable = [me["name"], *(org["name"] for org in me.get("orgs", []))]
    if ns not in writable:
        raise UsageError(
            f"HF_TOKEN belongs to '{me['name']}' and cannot write to namespace '{ns}': set HUB_NAMESPACE to one of "
            f"{', '.join(writable)} or use a token with write access to '{ns}'"
        )


def commit_message(recipe) -> tuple[str, str]:
    commit = git_commit()
    return (
        f"Publish {recipe.path.as_posix()} (sft-router {commit[:12]})",
        f"Recipe {recipe.path.as_posix()} (sha256 {recipe.sha256}), run {recipe.name}, sft-router commit {commit}.",
    )


def _hub_error(exc, ns: str, endpoint: str) -> UsageError:
    status = exc.response.status_code if exc.response is not None else None
    if status == 401:
        return UsageError(
            f"{endpoint} rejected HF_TOKEN (HTTP 401: invalid or expired token): create a write token at "
            f"{TOKENS_PAGE} and export HF_TOKEN"
        )
    if status == 403:
        return UsageError(
            f"HF_TOKEN may not write to namespace '{ns}' (HTTP 403): set HUB_NAMESPACE to a namespace the token can "
            "write to, or use a write token of that namespace"
        )
    reason = (exc.server_message or str(exc)).strip().splitlines()[0]
    return UsageError(f"the Hub at {endpoint} refused the push (HTTP {status}: {reason}): fix that and rerun")


def _cause(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """`exc` or the first exception it was raised from that is one of `kinds` (uploads wrap theirs in RuntimeError)."""
    while exc is not None and not isinstance(exc, kinds):
        exc = exc.__cause__ or exc.__context__
    return exc


def _with_notes(message: str, exc: BaseException) -> str:
    return "; ".join([message, *getattr(exc, "__notes__", [])])


@contextlib.contextmanager
def hub_errors_as_usage_errors(ns: str, endpoint: str):
    """Turn the client's HTTP and network errors, also those wrapped by an upload, into one line naming the fix."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except (HfHubHTTPError, RuntimeError, *network_errors()) as exc:
        cause = _cause(exc, (HfHubHTTPError, *network_errors()))
        if cause is None:
            raise
        if isinstance(cause, HfHubHTTPError):
            raise UsageError(_with_notes(str(_hub_error(cause, ns, endpoint)), exc)) from exc
        message = f"cannot reach the Hub at {endpoint} ({type(cause).__name__}): check the network or HF_ENDPOINT"
        raise UsageError(_with_notes(message, exc) + ", then rerun") from exc


class Stopped(KeyboardInterrupt):
    """SIGTERM (a CI timeout, `kill`), raised like Ctrl-C so that the same cleanup runs."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    def stop(signum, frame):
        raise Stopped()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def connect(recipe, token: str):
    """An HfApi for `token`, checked before anything is staged or created: the token is valid and may write."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors_as_usage_errors(namespace(recipe), api.endpoint):
        check_write_access(api, namespace(recipe))
    return api


def push_staged(api, recipe, staged: dict[str, Path]) -> dict[str, str | None]:
    """Push each staged folder as one commit; returns {repo id: new commit id, or None when unchanged}."""
    ids, message = repo_ids(recipe), commit_message(recipe)
    with hub_errors_as_usage_errors(namespace(recipe), api.endpoint):
        types = {kind: "dataset" if kind == "dataset" else "model" for kind in staged}
        return {
            ids[kind]: push_folder(api, ids[kind], types[kind], folder, recipe.publish.private, message)
            for kind, folder in staged.items()
        }


def check_repo_ids(ids: dict[str, str]) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for kind, repo_id in ids.items():
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            raise UsageError(
                f"'{repo_id}' is not a valid Hub repo id for the {kind} repo: use letters, digits, '-', '_' and '.' "
                f"in HUB_NAMESPACE and `{kind}_repo` (at most 96 characters)"
            ) from exc


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    with sigterm_as_interrupt():
        try:
            publish(argv)
        except KeyboardInterrupt as exc:
            how = "SIGTERM" if isinstance(exc, Stopped) else "Ctrl-C"
            notes = "; ".join(getattr(exc, "__notes__", [])) or "no repo was left half-filled"
            print(f"error: publish stopped by {how}: {notes}; rerun to publish", file=sys.stderr)
            raise SystemExit(130 if how == "Ctrl-C" else 143) from None


def publish(argv: list[str] | None) -> None:
    started = time.time()
    recipe, command = parse_recipe(argv, extra=(PublishCommand,))
    kinds = [command.only] if command.only else list(STAGERS)
    if any(kind not in STAGERS for kind in kinds):
        raise UsageError(f"--only {command.only}: choose one of {', '.join(STAGERS)}")
    stage = "hub-data" if kinds == ["dataset"] else "hub"
    ids = repo_ids(recipe)
    check_repo_ids({kind: ids[kind] for kind in kinds})
    token = os.environ.get("HF_TOKEN")
    api = connect(recipe, token) if token else None
    with stage_output(recipe, stage, started, repos={k: ids[k] for k in kinds}) as (out, facts):
        staged = {kind: out / ids[kind] for kind in kinds}
        for kind, path in staged.items():
            STAGERS[kind](recipe, path)
        if api is not None:
            facts["commits"] = push_staged(api, recipe, staged)
    final = recipe.stage_dir(stage)
    if token:
        for repo_id, commit in facts["commits"].items():
            print(f"publish: {repo_id} " + (f"pushed as commit {commit}" if commit else "unchanged, no commit"))
    else:
        target = "push-data" if stage == "hub-data" else "publish"
        print(
            f"publish: no HF_TOKEN, staged {', '.join(str(final / ids[k]) for k in kinds)}\n"
            f"push them later with: rm -r {final} && HF_TOKEN=hf_... HUB_NAMESPACE={ids['model'].split('/')[0]} "
            f"make {target} RECIPE={recipe.path}"
        )


if __name__ == "__main__":
    main()
