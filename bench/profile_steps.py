"""Where the time goes: torch.profiler over one train step and one batched generation, top ops by self CPU time.

The train step is the project's completion-only step on a fixed batch (bench/train_step.py builds it); the
generation is `make eval`'s `sft_router.modeling.loading.generate` (shared-prefix cache, length-sorted batches) on the
recipe's test prompts built in memory. Prints the CPU model and the ISA flags that decide the fast paths, then a
table per phase. `--real` profiles Gemma 3 270M from the PyPI GGUF package (the demo's base).

Usage: PYTHONPATH=src python bench/profile_steps.py [--real] [--batch-size 4] [--prompts 16] [--threads N] [--top 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (bench/train_step.py builds the trainer the same way)

ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_summary() -> str:
    from sft_router.modeling.llama_runtime import cpu_flags

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = cpu_flags()
    return f"CPU: {model}; {os.cpu_count()} cores; ISA: " + " ".join(f for f in ISA_FLAGS if f in flags)


def profile(label: str, run, top: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    print(f"\n## {label}: {seconds:.2f} s wall (profiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv=None) -> None:
    import torch

    from sft_router.modeling.loading import generate
    from sft_router.modeling.prompts import render_prompts

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="Gemma 3 270M weights instead of the tiny model")
    parser.add_argument("--batch-size", type=int, default=4, help="rows in the profiled train batch")
    parser.add_argument("--prompts", type=int, default=16, help="test prompts in the profiled generation batch")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--top", type=int, default=15, help="ops shown per phase")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(train_step.ROOT)
    print(cpu_summary() + f"; torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as output_dir:
        bench_args = argparse.Namespace(real=args.real, batch_size=args.batch_size, variant="project")
        trainer = train_step.build_bench_trainer(bench_args, output_dir)
        train_step.time_steps(trainer, 1)  # warm-up
        profile("train step", lambda: train_step.time_steps(trainer, 1), args.top)
        from sft_router.data import build_splits

        model, tokenizer = trainer.model.eval(), trainer.processing_class
        rows = build_splits(bench_recipe(args))["test"]
        prompts = render_prompts(tokenizer, rows[: args.prompts])
        profile(f"generation, {len(prompts)} prompts in one batch",
                lambda: generate(model, tokenizer, prompts, len(prompts), args.max_new_tokens), args.top)  # fmt: skip


def bench_recipe(args):
    from sft_router.core.config import parse_recipe

    flags = ["--num_train", "1", "--num_validation", "1", "--num_test", str(args.prompts), "--eval_strategy", "no"]
    (recipe,) = parse_recipe(["--config", train_step.RECIPES["real" if args.real else "tiny"], *flags])
    return recipe


if __name__ == "__main__":
    main()
