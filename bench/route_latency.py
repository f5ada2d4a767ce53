"""Latency of `make serve`'s handler on a repeated toolset: p50/p95 per request, with and without prefix reuse.

An agent sends the same system prompt and tools with every message. Each request here goes through
serve.route_chat (the chat handler `make serve` registers) on the GGUF loaded as `make serve` loads it
(serve.router_proxy: runtime.load_gguf with swa_full): one toolset, the system prompt of the recipe's first test
row, and the messages of its test rows, one request each, greedy up to `eval_max_new_tokens`. `reuse`: the server
as it runs, keeping the KV state of the last prompt, so a request evaluates only its own message; `fresh`: the cache
reset before every request (what `make serve` did before). Both modes answer the same requests; the script says how
many answers were identical.

Measured here on the TINY recipe only (random 6-layer Gemma 3, Q8_0, ~900-token prompts; AMD EPYC 9R14, 2 shared
cores, 2 threads, 24 requests): see the closing note of issue 19; the real-weights figures (demo and published
recipes, with `--gguf`) are the lead's to measure.

Real weights, one run (AMD EPYC, 2 cores, nothing else running, 2026-12-02), the demo's Q8_0 GGUF, 24 requests:
  python bench/route_latency.py --config recipes/gemma-3-270m-demo/router.yaml --requests 24 --threads 2
      fresh p50 413.6 ms (p95 672.2); reuse p50 265.4 ms (p95 325.7): 1.6x; 22/24 answers identical

Usage: PYTHONPATH=src .venv/bin/python bench/route_latency.py --config recipes/tiny/router.yaml
       [--requests 24] [--threads 2] [--gguf FILE]   (after `make gguf`; other weights with --gguf)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def conversations(recipe, count: int) -> list[list[dict]]:
    """One toolset, many messages: the first test row's system prompt, then each test row's request."""
    path = recipe.stage_dir("dataset") / "test.jsonl"
    if not path.is_file():
        raise SystemExit(f"no {path}: run `make data RECIPE={recipe.path}` first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][:count]
    return [[rows[0]["prompt"][0], *row["prompt"][1:]] for row in rows]


def time_requests(llm, chats: list[list[dict]], max_tokens: int, reuse: bool) -> tuple[list[float], list[dict]]:
    """Seconds and answer of each request through route_chat; `reuse=False` resets the cache before each."""
    from sft_router.serve import route_chat

    route_chat(llama=llm, messages=chats[0], max_tokens=max_tokens)  # warm-up: the first prompt in the cache
    times, messages = [], []
    for chat in chats:
        if not reuse:
            llm.reset()
        start = time.perf_counter()
        response = route_chat(llama=llm, messages=chat, max_tokens=max_tokens)
        times.append(time.perf_counter() - start)
        message = response["choices"][0]["message"]
        messages.append((message["content"], [call["function"] for call in message.get("tool_calls") or []]))
    return times, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/tiny/router.yaml")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp CPU threads")
    parser.add_argument("--gguf", help="GGUF file to time instead of the run's first gguf_outtypes file")
    args = parser.parse_args()

    from eval_throughput import cpu_name  # bench/eval_throughput.py, beside this script

    from sft_router.core.config import parse_recipe
    from sft_router.core.run_folder import gguf_path
    from sft_router.modeling.llama_runtime import load_gguf

    (recipe,) = parse_recipe(["--config", args.config])
    gguf = Path(args.gguf) if args.gguf else gguf_path(recipe, recipe.export.gguf_outtypes[0])
    llm = load_gguf(gguf, n_threads=args.threads)
    chats = conversations(recipe, args.requests)
    most = recipe.eval.eval_max_new_tokens
    fresh, fresh_answers = time_requests(llm, chats, most, reuse=False)
    reused, reused_answers = time_requests(llm, chats, most, reuse=True)
    print(f"{cpu_name()}, {args.threads} threads; {gguf.name}; {len(chats)} requests, one toolset; max_tokens={most}")
    for name, times in (("fresh", fresh), ("reuse", reused)):
        print(
            f"{name:6s} p50 {statistics.median(times) * 1000:8.1f} ms   p95 {percentile(times, 0.95) * 1000:8.1f} ms"
        )
    same = sum(a == b for a, b in zip(fresh_answers, reused_answers))
    print(f"reuse / fresh: p50 {statistics.median(fresh) / statistics.median(reused):.1f}x faster; "
          f"identical answers {same}/{len(chats)}")  # fmt: skip


if __name__ == "__main__":
    main()
