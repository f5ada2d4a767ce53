"""Stage the dataset, model and GGUF repos of a run and push them to the Hub when a token is set.

Every repo is first assembled under runs/<name>/hub/<namespace>/<repo>/ from an allow-list (no
checkpoints, optimizer state or logs), then pushed as one commit per repo. Without HF_TOKEN the staged
folders stay there and the command that pushes them is printed.

Usage: python -m sft_router.publish --config recipes/tiny/router.yaml            (all three repos)
       python -m sft_router.publish --config recipes/tiny/router.yaml --only dataset
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sft_router.card import render_dataset_card, repo_ids
from sft_router.config import parse_recipe
from sft_router.errors import UsageError, network_errors, one_line_errors
from sft_router.run import git_commit, stage_output

MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json", "tokenizer.model", "chat_template.jinja")  # fmt: skip
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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


def stage_dataset(recipe, dest: Path) -> None:
    from datasets import load_from_disk

    splits = load_from_disk(str(_require(recipe.stage_dir("dataset") / "hf", "data", recipe)))
    for name, split in splits.items():
        split.to_parquet(str(dest / "data" / f"{name}-00000-of-00001.parquet"))
    render_dataset_card(recipe).save(dest / "README.md")


def stage_model(recipe, dest: Path) -> None:
    merged = recipe.stage_dir("merged")
    _copy([_require(merged / name, "merge", recipe) for name in MODEL_FILES], dest)
    _copy([recipe.stage_dir("adapter") / name for name in ADAPTER_FILES], dest / "adapter")
    _copy([_require(recipe.stage_dir("card") / "README.md", "card", recipe)], dest)


def stage_gguf(recipe, dest: Path) -> None:
    ggufs = sorted(_require(recipe.stage_dir("gguf"), "gguf", recipe).glob("*.gguf"))
    _copy([*ggufs, _require(recipe.stage_dir("card") / "README.md", "card", recipe)], dest)


STAGERS = {"dataset": stage_dataset, "model": stage_model, "gguf": stage_gguf}


def push_folder(api, repo_id: str, kind: str, folder: Path, private: bool, message: str) -> str:
    repo_type = "dataset" if kind == "dataset" else "model"
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), commit_message=message)
    return commit.oid


def push_staged(recipe, staged: dict[str, Path], token: str) -> dict[str, str]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    message = f"sft-router: {recipe.path.as_posix()} at {git_commit()[:12]}"
    ids = repo_ids(recipe)
    try:
        api.whoami()
        return {
            ids[k]: push_folder(api, ids[k], k, path, recipe.publish.private, message) for k, path in staged.items()
        }
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise UsageError(
            f"the Hub refused the push (HTTP {status}): check that HF_TOKEN has write access to "
            f"namespace '{ids['model'].split('/')[0]}' (set HUB_NAMESPACE)"
        ) from exc
    except network_errors() as exc:
        raise UsageError(
            f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__}); check the network "
            "or HF_ENDPOINT, then rerun"
        ) from exc


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    recipe, command = parse_recipe(argv, extra=(PublishCommand,))
    kinds = [command.only] if command.only else list(STAGERS)
    if any(kind not in STAGERS for kind in kinds):
        raise UsageError(f"--only {command.only}: choose one of {', '.join(STAGERS)}")
    stage = "hub-data" if kinds == ["dataset"] else "hub"
    ids = repo_ids(recipe)
    token = os.environ.get("HF_TOKEN")
    with stage_output(recipe, stage, repos={k: ids[k] for k in kinds}) as (out, facts):
        staged = {kind: out / ids[kind] for kind in kinds}
        for kind, path in staged.items():
            STAGERS[kind](recipe, path)
        if token:
            facts["commits"] = push_staged(recipe, staged, token)
    final = recipe.stage_dir(stage)
    if token:
        print(f"publish: pushed {', '.join(ids[k] for k in kinds)}")
    else:
        target = "push-data" if stage == "hub-data" else "publish"
        print(
            f"publish: no HF_TOKEN, staged {', '.join(str(final / ids[k]) for k in kinds)}\n"
            f"push them later with: rm -r {final} && HF_TOKEN=hf_... HUB_NAMESPACE={ids['model'].split('/')[0]} "
            f"make {target} RECIPE={recipe.path}"
        )


if __name__ == "__main__":
    main()
