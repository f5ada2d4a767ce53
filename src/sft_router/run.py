"""A run is a folder: `runs/<name>/<stage>/`, each written whole or not at all, with a manifest.

A stage writes into a hidden temporary folder that is renamed into place only after it succeeded,
so an interrupted stage never leaves output that looks finished (and `make` reruns it).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "huggingface_hub", "gguf")


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent  # the project's checkout, wherever the command runs from
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
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []  # fmt: skip
    return f"{os.cpu_count()} CPU cores ({names[0] if names else platform.processor() or platform.machine()})"


def read_manifest(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def stage_output(recipe, stage: str, **facts):
    """Yield a temporary folder for `stage`; on success write its manifest and move it to runs/<name>/<stage>."""
    final = recipe.stage_dir(stage)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"  # a nested stage (eval/bfcl) too
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.time()
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
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


FILE_TYPES = {"q8_0": "Q8_0", "f16": "F16", "bf16": "BF16", "f32": "F32"}


def gguf_path(recipe, outtype: str) -> Path:
    return recipe.stage_dir("gguf") / f"{recipe.name}-{FILE_TYPES[outtype]}.gguf"
