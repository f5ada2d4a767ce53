"""Rows per second of `make eval`'s decoding with and without prefix reuse, on the same rows, side by side.

The GGUF under llama.cpp, loaded and decoded as `make eval` does (runtime.load_gguf, gguf_eval.gguf_outputs):
  fresh        every prompt evaluated whole (the cache reset before each request)
  row order    rows in file order; llama.cpp reuses what consecutive prompts share (make eval before scenes)
  scene order  rows scene by scene (prompts.scenes): a scene's system prompt and tools are evaluated once
transformers, the recipe's base model as `make eval` loads it (models.generate, eval_batch_size):
  no cache     plain left-padded batches (reuse_prefix=False)
  one prefix   the prefix all prompts share prefilled once (make eval before scenes)
  scenes       each scene's prefix prefilled once, copied into its batches
Rows: the run's test split (runs/<name>/dataset/test.jsonl, from `make data`; the GGUF from `make gguf`).
`--scene-size N` regroups them into scenes of N rows, each row keeping its request under the system prompt of its
scene's first row: what scene data looks like, on data that has one row per scene. Prints the CPU (lscpu's model
name), rows/s per mode, the speedups over fresh / no cache, and how many answers equal that mode's.

Measured here on the TINY recipe only (random 6-layer Gemma 3, hidden size 64, 24 test rows of ~900 tokens, Q8_0;
AMD EPYC 9R14, 2 shared cores, 2 threads; `--scene-size 8`): see the closing note of issue 19. The tiny model's
compute is so small that prompt evaluation dominates even more than with real weights, so its ratios are no
prediction for Gemma 3 270M; the lead measures real weights with the same command on the demo recipe.

Real weights, one run (AMD EPYC, 2 cores, nothing else running, 2026-12-02), the demo's Q8_0 GGUF after
`make demo`, 96 test rows in 12 scenes, answers capped at 50 tokens:
  python bench/eval_throughput.py --config recipes/gemma-3-270m-demo/router.yaml --rows 96 --threads 2 --skip-transformers
      fresh 1.88 rows/s; row order 2.89 (1.54x, 86/96 answers identical); scene order 2.84 (1.51x, 86/96)
  The demo's prompts are short (~250 tokens) and its ~40-token answers dominate, so reuse saves at most the prompt
  share. 10 of 96 answers changed under reuse on real weights: llama.cpp evaluates a reused request in other batches
  than a fresh prompt, and the demo model's weakly learnt arguments are near-ties; not yet explained further.

Usage: PYTHONPATH=src .venv/bin/python bench/eval_throughput.py --config recipes/tiny/router.yaml
       [--rows 24] [--scene-size 8] [--threads 2] [--skip-transformers] [--gguf FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path


def cpu_name() -> str:
    """lscpu's model name (the CPU the figures were measured on)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")


def test_rows(recipe, count: int, scene_size: int | None) -> list[dict]:
    """The run's first `count` test rows, regrouped into scenes of `scene_size` rows when asked."""
    path = recipe.stage_dir("dataset") / "test.jsonl"
    if not path.is_file():
        raise SystemExit(f"no {path}: run `make data RECIPE={recipe.path}` first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][:count]
    if not scene_size:
        return rows
    return [
        {**row, "prompt": [rows[i - i % scene_size]["prompt"][0], *row["prompt"][1:]]} for i, row in enumerate(rows)
    ]


REPEATS = 3  # each mode's time is the least of this many runs: on a shared CPU, other work only adds time


def timed(decode) -> tuple[float, list[str]]:
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        outputs = decode()
        seconds.append(time.perf_counter() - start)
    return min(seconds), outputs


def report(modes: dict[str, tuple[float, list[str]]], rows: int) -> dict:
    """rows/s per mode, speedup over the first mode and answers identical to its answers."""
    (base_time, base_outputs), *_ = modes.values()
    return {name: {"rows_per_s": round(rows / seconds, 2), "speedup": round(base_time / seconds, 2),
                   "identical_answers": f"{sum(a == b for a, b in zip(outputs, base_outputs))}/{rows}"}
            for name, (seconds, outputs) in modes.items()}  # fmt: skip


def llama_cpp_modes(path: Path, asked, threads: int) -> dict:
    from sft_router.evaluation.gguf_eval import gguf_outputs
    from sft_router.modeling.llama_runtime import complete, load_gguf

    prompts, max_new_tokens = asked.texts, asked.max_new_tokens
    llm = load_gguf(path, n_threads=threads)
    complete(llm, prompts[0], 2)  # warm-up: first-call allocations are not throughput
    return {
        "fresh": timed(lambda: [complete(llm, p, max_new_tokens, reuse_prefix=False) for p in prompts]),
        "row order": timed(lambda: [complete(llm, p, max_new_tokens) for p in prompts]),
        "scene order": timed(lambda: gguf_outputs(llm, asked, False, "scene order")),
    }


def transformers_modes(recipe, tokenizer, asked) -> dict:
    from sft_router.modeling.loading import generate, load_generation_model

    prompts, max_new_tokens = asked.texts, asked.max_new_tokens
    model = load_generation_model(recipe)
    size = recipe.eval.eval_batch_size
    generate(model, tokenizer, prompts[:2], 2, 2)  # warm-up
    return {
        "no cache": timed(lambda: generate(model, tokenizer, prompts, size, max_new_tokens, reuse_prefix=False)),
        "one prefix": timed(lambda: generate(model, tokenizer, prompts, size, max_new_tokens)),
        "scenes": timed(lambda: generate(model, tokenizer, prompts, size, max_new_tokens, scenes=asked.scenes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/tiny/router.yaml")
    parser.add_argument("--rows", type=int, default=24, help="test rows to decode (default 24)")
    parser.add_argument("--scene-size", type=int, default=None, help="regroup the rows into scenes of N rows")
    # On a CPU shared with other jobs one thread avoids OpenMP spin-waiting between busy cores (5-40x slower here).
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both runtimes")
    parser.add_argument("--gguf", help="GGUF file to time instead of the run's first gguf_outtypes file")
    parser.add_argument("--skip-transformers", action="store_true", help="time llama.cpp only")
    args = parser.parse_args()

    import torch

    from sft_router.core.config import parse_recipe
    from sft_router.core.run_folder import gguf_path
    from sft_router.modeling.loading import load_tokenizer
    from sft_router.modeling.prompts import prompt_set

    torch.set_num_threads(args.threads)
    (recipe,) = parse_recipe(["--config", args.config])
    rows = test_rows(recipe, args.rows, args.scene_size)
    tokenizer = load_tokenizer(recipe)
    asked = prompt_set(tokenizer, rows, recipe.eval.eval_max_new_tokens, "test")
    gguf = Path(args.gguf) if args.gguf else gguf_path(recipe, recipe.export.gguf_outtypes[0])
    results = {"llama.cpp": report(llama_cpp_modes(gguf, asked, args.threads), len(rows))}
    if not args.skip_transformers:
        results["transformers"] = report(transformers_modes(recipe, tokenizer, asked), len(rows))
    sizes = [len(scene) for scene in asked.scenes]
    print(json.dumps({"cpu": cpu_name(), "threads": args.threads, "recipe": str(recipe.path), "gguf": gguf.name,
                      "rows": len(rows), "scenes": len(sizes), "largest_scene": max(sizes),
                      "max_new_tokens": asked.max_new_tokens, **results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
