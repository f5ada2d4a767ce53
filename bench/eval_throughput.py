"""Samples per second of `make eval`'s generation, batched vs one prompt at a time, on the same prompts.

Both runs call sft_router.evaluate.generate (greedy, KV cache, left padding, stop at <end_of_turn>) on the
recipe's base model as `make eval` loads it, with the recipe's test prompts (built in memory: no run folder
needed) and `eval_max_new_tokens`; only the batch size differs (default: the recipe's `eval_batch_size`).
Prints one JSON object: machine, settings, samples/s of each, the ratio, whether the outputs agree, and
how much of the batched time is prompt prefill (which batching cannot shrink) vs decoding.

Usage: PYTHONPATH=src python bench/eval_throughput.py [--config recipes/tiny/router.yaml] [--prompts 24]
       [--batch-size N] [--max-new-tokens N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def bench_prompts(recipe, tokenizer, count: int) -> list[str]:
    from sft_router.data import build_splits
    from sft_router.prompts import render_prompts

    splits = build_splits(recipe)
    rows = [*splits["test"], *splits["validation"], *splits["train"]][:count]
    return render_prompts(tokenizer, rows)


def timed_generate(model, tokenizer, prompts, batch_size: int, max_new_tokens: int) -> tuple[float, list[str]]:
    from sft_router.evaluate import generate

    start = time.perf_counter()
    outputs = generate(model, tokenizer, prompts, batch_size, max_new_tokens, desc=f"batch size {batch_size}")
    return len(prompts) / (time.perf_counter() - start), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/tiny/router.yaml")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's eval_batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:  # on a shared, oversubscribed CPU one thread avoids OpenMP spin-waiting between cores
        torch.set_num_threads(args.threads)

    from sft_router.config import parse_recipe
    from sft_router.models import load_generation_model, load_tokenizer

    (recipe,) = parse_recipe(["--config", args.config])
    batch_size = args.batch_size or recipe.eval.eval_batch_size
    max_new_tokens = args.max_new_tokens or recipe.eval.eval_max_new_tokens
    tokenizer = load_tokenizer(recipe)
    model = load_generation_model(recipe)
    prompts = bench_prompts(recipe, tokenizer, args.prompts)
    timed_generate(model, tokenizer, prompts[:2], 2, 4)  # warm-up: first-call allocations are not throughput
    batched, batched_outputs = timed_generate(model, tokenizer, prompts, batch_size, max_new_tokens)
    single, single_outputs = timed_generate(model, tokenizer, prompts, 1, max_new_tokens)
    # One new token is (almost) prefill alone: the rest of each run's time is decoding, which batching amortises.
    batched_prefill, _ = timed_generate(model, tokenizer, prompts, batch_size, 1)
    single_prefill, _ = timed_generate(model, tokenizer, prompts, 1, 1)
    decode_speedup = (1 / single - 1 / single_prefill) / max(1 / batched - 1 / batched_prefill, 1e-9)
    report = {
        "machine": machine_info(),
        "model": recipe.model.model_name_or_path,
        "prompts": len(prompts),
        "device": str(model.device),
        "attn_implementation": model.config._attn_implementation,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "batched_samples_per_s": round(batched, 3),
        "one_at_a_time_samples_per_s": round(single, 3),
        "speedup": round(batched / single, 2),
        "prefill_share_of_batched_time": round((1 / batched_prefill) / (1 / batched), 2),
        "decode_only_speedup": round(decode_speedup, 2),
        "outputs_identical": sum(a == b for a, b in zip(batched_outputs, single_outputs)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
