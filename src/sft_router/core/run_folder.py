"""A run is a folder: `runs/<name>/<stage>/`, each written whole or not at all, with a manifest.

A stage writes into a hidden temporary folder that is renamed into place only after it succeeded, so an interrupted
stage never leaves output that looks finished (and `make` reruns it). The finished folder it replaces is first moved
aside and removed only once the new one is in place, so a failure at any point keeps one complete stage; what a
killed process left behind (`.<stage>.tmp-<pid>`, `.<stage>.old-<pid>`) is cleaned by the next run of that stage.

Each stage's manifest records the fingerprint of exactly what the stage reads (sft_router.core.stages lists it): its
recipe keys, the files it reads (catalog, system prompt, chat template) and the fingerprints of the stages it reads,
and the stage's wall time from the start of its main. `python -m sft_router.core.run_folder
--config RECIPE` writes them to runs/<name>/.inputs/<stage>.sha256, rewriting a file only when it changed, and the
Makefile lists those files as prerequisites: editing what a stage reads reruns it and the stages below it, editing
anything else reruns nothing.

Usage: python -m sft_router.core.run_folder --config recipes/tiny/router.yaml   (refreshes runs/tiny/.inputs/)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from sft_router.core.errors import one_line_errors
from sft_router.core.stages import STAGES

MANIFEST = "manifest.json"
INPUTS = ".inputs"
TRACKED_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "huggingface_hub", "gguf")


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parents[1]  # the project's checkout, wherever the command runs from
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in TRACKED_PACKAGES}


def hardware() -> str:
    """What ran the stage, in words: the GPU if torch sees one, else the CPU and its core count."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.is_file()
        else []
    )
    return f"{os.cpu_count()} CPU cores ({names[0] if names else platform.processor() or platform.machine()})"


def read_manifest(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


# Keys that name where things go or hold secrets, not what a stage computes.
UNHASHED = {"output_dir", "logging_dir", "hub_token"}


def _section(recipe, name: str) -> dict:
    section = getattr(recipe, name)
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name not in UNHASHED}


def _key(recipe, key: str):
    if key == "hub_namespace":  # the namespace in force: HUB_NAMESPACE wins over the recipe
        from sft_router.core.config import namespace

        return namespace(recipe)
    section, name = key.split(".")
    return getattr(getattr(recipe, section), name)


def _file_sha256(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None


def fingerprint(recipe, stage: str) -> str:
    """sha256 over what `stage` reads, including the fingerprints of the stages it reads."""
    reads = STAGES[stage]
    facts = {
        "sections": {name: _section(recipe, name) for name in reads.sections},
        "keys": {key: _key(recipe, key) for key in reads.keys},
        "files": {key: _file_sha256(_key(recipe, key)) for key in reads.files},
        "stages": {name: fingerprint(recipe, name) for name in reads.upstream},
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=repr).encode()).hexdigest()


def write_fingerprints(recipe) -> list[Path]:
    """runs/<name>/.inputs/<stage>.sha256 for every stage; returns the ones whose stage must (re)run.

    A file is rewritten only when its fingerprint changed. Its time tells make whether the stage is current: a file
    matching the finished stage's manifest carries the manifest's time (a run made before these files existed, or
    copied, is not rebuilt), and one whose stage is stale is newer than the stage's manifest.
    """
    folder = recipe.run_dir / INPUTS
    folder.mkdir(parents=True, exist_ok=True)
    stale = []
    for stage in STAGES:
        path, current = folder / f"{stage}.sha256", fingerprint(recipe, stage)
        if not path.is_file() or path.read_text() != current + "\n":
            path.write_text(current + "\n")
        manifest = recipe.stage_dir(stage) / MANIFEST
        if not manifest.is_file():
            continue
        made = manifest.stat().st_mtime_ns  # in nanoseconds: a float time could round past the manifest's
        if (read_manifest(manifest.parent) or {}).get("fingerprint") == current:
            if path.stat().st_mtime_ns > made:
                os.utime(path, ns=(made, made))
        else:
            stale.append(path)
            if path.stat().st_mtime_ns <= made:
                os.utime(path, ns=(made + 10**9, made + 10**9))
    return stale


def is_current(recipe, stage: str) -> bool:
    """The stage is finished and was made from what the recipe and its inputs say now."""
    manifest = read_manifest(recipe.stage_dir(stage))
    return manifest is not None and manifest.get("fingerprint") == fingerprint(recipe, stage)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a folder; what cannot be removed is named in one line and left for the user."""
    errors: list[str] = []
    shutil.rmtree(path, onerror=lambda _f, p, info: errors.append(f"{p} ({getattr(info[1], 'strerror', info[1])})"))
    if errors:
        print(f"note: could not remove {errors[0]}; delete {path} by hand", file=sys.stderr)


def clean_leftovers(final: Path) -> None:
    """Remove what dead runs of this stage left beside `final`; restore a finished stage moved aside and not replaced."""
    for path in sorted(final.parent.glob(f".{final.name}.*-*")):
        kind, _, pid = path.name.rpartition("-")
        if not pid.isdigit() or _alive(int(pid)) and int(pid) != os.getpid():
            continue
        if kind.endswith(".old") and not final.exists() and (path / MANIFEST).is_file():
            path.rename(final)
        else:
            _remove(path)


def replace_folder(new: Path, final: Path) -> None:
    """Put `new` in place of `final`: the old folder moves aside, the new one moves in, then the old one goes."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    try:
        new.rename(final)
    except BaseException:
        if old.exists() and not final.exists():
            old.rename(final)
        raise
    if old.exists():
        _remove(old)


@contextlib.contextmanager
def stage_output(recipe, stage: str, started: float | None = None, **facts):
    """Yield a temporary folder for `stage`; on success write its manifest and move it to runs/<name>/<stage>.

    `started` is when the stage began (`time.time()` first thing in its main), so that the manifest's wall_time_s
    covers the whole stage (loading, training, scoring), not only what runs inside this block (the default).
    """
    final = recipe.stage_dir(stage)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"  # a nested stage (eval/bfcl) too
    tmp.mkdir()
    start = time.time() if started is None else started
    extra: dict = {}
    try:
        yield tmp, extra
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = {
        "stage": stage,
        "run": recipe.name,
        "recipe": str(recipe.path),
        "recipe_sha256": recipe.sha256,
        "fingerprint": fingerprint(recipe, stage) if stage in STAGES else None,
        "seed": recipe.training.seed,
        "git_commit": git_commit(),
        "versions": library_versions(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "hardware": hardware(),
        "wall_time_s": round(time.time() - start, 2),
        **facts,
        **extra,
    }
    try:
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


FILE_TYPES = {"q8_0": "Q8_0", "f16": "F16", "bf16": "BF16", "f32": "F32"}


def gguf_path(recipe, outtype: str) -> Path:
    return recipe.stage_dir("gguf") / f"{recipe.name}-{FILE_TYPES[outtype]}.gguf"


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    from sft_router.core.config import parse_recipe

    (recipe,) = parse_recipe(argv)
    for path in write_fingerprints(recipe):
        print(f"inputs: {path.stem} was made from other inputs than the recipe's now; it will run again")


if __name__ == "__main__":
    main()
