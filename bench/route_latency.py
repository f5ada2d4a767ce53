"""Time per routed request: the GGUF under llama.cpp vs the merged model under transformers, same prompts.

Each request is one test-split prompt answered greedily until <end_of_turn> (as `make eval` does), on
CPU with every core. Two modes per runtime: `fresh` evaluates the whole prompt every time; `prefix`
keeps the key/value cache of the system-prompt prefix that all prompts share (the router's static
instructions) and evaluates only the rest, as a server would. llama.cpp reuses the longest common
prefix of consecutive prompts by itself; transformers gets a copy of a cache computed once.

Usage: python bench/route_latency.py --config recipes/tiny/router.yaml [--requests 24] [--max_new_tokens 48] [--threads 2]
       python bench/route_latency.py --config recipes/tiny/router.yaml --merged DIR --gguf FILE   (other weights,
       e.g. real Gemma 3 270M, on the tiny run's test prompts)
       (after `make gguf`; prints p50/p95 per mode and the transformers / llama.cpp ratios)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_prompts(run: Path, tokenizer, count: int) -> list[str]:
    """The first `count` test prompts, rendered by the training chat template (set on `tokenizer`)."""
    rows = [json.loads(line) for line in (run / "dataset/test.jsonl").read_text().splitlines()][:count]
    return [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) for row in rows]


def common_prefix(sequences: list[list[int]]) -> list[int]:
    prefix = sequences[0]
    for sequence in sequences[1:]:
        n = next((i for i, (a, b) in enumerate(zip(prefix, sequence)) if a != b), min(len(prefix), len(sequence)))
        prefix = prefix[:n]
    return prefix


def time_llama(gguf: Path, prompts: list[str], max_new_tokens: int, reuse_prefix: bool, threads: int) -> list[float]:
    from sft_router.runtime import complete, load_gguf

    llm = load_gguf(gguf, n_threads=threads)
    complete(llm, prompts[0], max_new_tokens, reuse_prefix=reuse_prefix)  # warm-up, and the prefix in the cache
    times = []
    for prompt in prompts:
        start = time.perf_counter()
        complete(llm, prompt, max_new_tokens, reuse_prefix=reuse_prefix)
        times.append(time.perf_counter() - start)
    return times


def time_transformers(merged: Path, prompts: list[str], max_new_tokens: int, reuse_prefix: bool) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), attn_implementation="eager").eval()
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    encoded = [torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]]) for p in prompts]
    prefix = common_prefix([ids[0].tolist() for ids in encoded])[:-1]  # at least one token left to evaluate
    prefix_cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(torch.tensor([prefix]), cache=prefix_cache, use_cache=True)

    def answer(ids):
        cache = copy.deepcopy(prefix_cache) if reuse_prefix else None
        with torch.inference_mode():
            model.generate(ids, cache=cache, max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)  # fmt: skip

    answer(encoded[0])  # warm-up
    times = []
    for ids in encoded:
        start = time.perf_counter()
        answer(ids)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/tiny/router.yaml")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    # On a machine shared with other jobs, fewer threads than cores avoids OpenMP spin-waiting collapse.
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both runtimes")
    parser.add_argument(
        "--merged", help="model folder to time instead of runs/<name>/merged (e.g. real Gemma weights)"
    )
    parser.add_argument("--gguf", help="GGUF file to time instead of the run's first gguf_outtypes file")
    args = parser.parse_args()
    from sft_router.config import parse_recipe
    from sft_router.run import gguf_path

    (recipe,) = parse_recipe(["--config", args.config])
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    merged = Path(args.merged) if args.merged else recipe.stage_dir("merged")
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    tokenizer.chat_template = Path(recipe.training.chat_template_path).read_text()
    prompts = load_prompts(recipe.run_dir, tokenizer, args.requests)
    gguf = Path(args.gguf) if args.gguf else gguf_path(recipe, recipe.export.gguf_outtypes[0])
    results = {}
    for reuse in (False, True):
        mode = "prefix" if reuse else "fresh"
        results[f"llama.cpp {gguf.name} {mode}"] = time_llama(gguf, prompts, args.max_new_tokens, reuse, args.threads)
        results[f"transformers merged {mode}"] = time_transformers(merged, prompts, args.max_new_tokens, reuse)
    print(
        f"{len(prompts)} requests, {args.threads} threads on {os.cpu_count()} cores, max_new_tokens={args.max_new_tokens}"
    )
    for name, times in results.items():
        print(
            f"{name:45s} p50 {statistics.median(times) * 1000:8.1f} ms   p95 {percentile(times, 0.95) * 1000:8.1f} ms"
        )
    for mode in ("fresh", "prefix"):
        hf, cpp = results[f"transformers merged {mode}"], results[f"llama.cpp {gguf.name} {mode}"]
        ratio50 = statistics.median(hf) / statistics.median(cpp)
        ratio95 = percentile(hf, 0.95) / percentile(cpp, 0.95)
        print(f"transformers / llama.cpp ({mode}): p50 {ratio50:.1f}x  p95 {ratio95:.1f}x")


if __name__ == "__main__":
    main()
