"""Rows per second of one training step, side by side in one run: yesterday's path, padded rows, packed scenes.

Every variant trains the same rows (one batch of `--rows`, scenes of the recipe's data), from the same LoRA
initialisation, each in its own process so that one's peak resident memory does not hide another's:

- `today`      the path `make demo` took before scenes: activation checkpointing on, every row padded on its own,
               the completion head's chunks checkpointed (logits recomputed in backward)
- `padded`     checkpointing off, rows padded on their own (the project's completion-only head, its gradient
               computed in the forward pass: two matmuls with the 262k-row head instead of three)
- `packed`     checkpointing off, each scene packed: its shared prefix once, then every request (what `make train`
               does now; sft_router.modeling.scene_packing)
- `packed-bf16` packed, the step under CPU autocast to bf16 (weights stay fp32; the matmuls run in bf16)
- `packed-trl` the same packed batch through TRL 1.16's fused LM head instead of the project's completion head:
               on a CPU TRL scores every position through the 262k-vocabulary head (it compacts to the labelled
               positions only on Triton devices), the project's head only the labelled ones

It prints the CPU, each variant's seconds per step, rows per second, its ratio to `today`, peak memory and loss
(the losses must agree to 1e-4 relative: the same tokens are scored).

Measured on 2 CPU cores (AMD EPYC, AVX2), nothing else running, 2 threads, 8 demo train rows (one scene), one run:
  python bench/train_step.py --real --rows 8 --steps 2
      today       8 x 353 tokens  18.49 s/step  0.433 rows/s  1.00x   peak 4164 MiB  loss 3.047836
      padded      8 x 353 tokens  12.18 s/step  0.657 rows/s  1.52x   peak 8404 MiB  loss 3.047857
      packed      1 x 605 tokens   3.72 s/step  2.153 rows/s  4.98x   peak 3451 MiB  loss 3.047858 (rel. 7.0e-06)
      packed-trl  1 x 605 tokens  12.13 s/step  0.659 rows/s  1.52x   peak 3780 MiB  loss 3.047857
  (CPU time 34.94 -> 6.92 s a step, 5.05x.) TRL's fused head costs 3.3x the project's on the same packed batch:
  on a CPU it projects all 605 positions through the head, the project's head only the ~240 labelled ones.
  python bench/train_step.py --real --recipe recipes/gemma-3-270m-it/router.yaml --rows 8 --steps 1 --variants today,packed
      today   8 x 788 tokens   43.18 s/step  0.185 rows/s  1.00x  peak 7043 MiB  loss 3.148749
      packed  1 x 1020 tokens   5.97 s/step  1.340 rows/s  7.23x  peak 4946 MiB  loss 3.148772 (rel. 7.5e-06)
  (the published recipe's first train scene: 8 rows of ~700 prompt tokens, shorter than its ~1,900-token average)

Usage: python bench/train_step.py [--real] [--recipe RECIPE] [--rows 8] [--steps 2] [--variants today,packed]
       (tiny: ~1 min; --real: the PyPI Gemma 3 270M, `pip install -e '.[demo]'`, a few minutes a variant)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"tiny": "recipes/tiny/router.yaml", "real": "recipes/gemma-3-270m-demo/router.yaml"}
REAL_MODEL = "sft-router/gemma-3-270m-pypi"
VARIANTS = {  # activation checkpointing, scene packing, LM head
    "today": (True, False, "project-checkpointed"),
    "padded": (False, False, "project"),
    "packed": (False, True, "project"),
    "packed-trl": (False, True, "trl"),
    "packed-bf16": (False, True, "project"),
}
# Variants whose step runs under CPU autocast to bf16 (what `bf16: true` makes Accelerate do): the matmuls in bf16,
# fast where the CPU has avx512_bf16 or AMX, emulated (slow) where it has neither.
AUTOCAST_BF16 = {"packed-bf16"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="the PyPI Gemma 3 270M weights instead of the tiny model")
    parser.add_argument(
        "--recipe", help="recipe whose data and prompts are timed (default: tiny, or demo with --real)"
    )
    parser.add_argument("--rows", type=int, default=8, help="rows in the timed batch (whole scenes of the data)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after one untimed warm-up step")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set in the child processes
    return parser.parse_args(argv)


def bench_recipe(args):
    from sft_router.core.config import parse_recipe

    checkpointing, packing, _ = VARIANTS[args.variant]
    recipe_file = args.recipe or RECIPES["real" if args.real else "tiny"]
    flags = ["--num_train", str(args.rows * 4), "--num_validation", "1", "--num_test", "1", "--num_test_unseen", "0"]
    flags += ["--eval_strategy", "no", "--activation_checkpointing", str(checkpointing).lower()]
    flags += ["--scene_packing", str(packing).lower()] + (["--model_name_or_path", REAL_MODEL] if args.real else [])
    (recipe,) = parse_recipe(["--config", recipe_file, *flags])
    return recipe


def timed_rows(recipe, count: int) -> list[dict]:
    """The first `count` train rows: whole scenes, which the generator writes adjacent, as far as they fit."""
    from sft_router.data import build_splits

    return build_splits(recipe)["train"][:count]


def trl_head_trainer():
    """TRL's SFTTrainer loss through its own fused head (`fused_lm_head=True`), as its compute_loss does; only the
    token-count metric, which reads a tensor attention mask, is left out."""
    from trl import SFTTrainer

    class TRLFusedHead(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs, use_cache=False, fused_lm_head=True)
            count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            return -outputs.log_probs.sum() / count.clamp(min=1)

    return TRLFusedHead


def build_bench_trainer(args, output_dir: str):
    from datasets import Dataset
    from transformers import set_seed

    from sft_router import train
    from sft_router.modeling.loading import load_base_model, load_tokenizer
    from sft_router.train import make_trainer

    recipe = bench_recipe(args)
    recipe.training.output_dir = output_dir
    rows = Dataset.from_list(timed_rows(recipe, args.rows))
    set_seed(recipe.training.seed)
    head = VARIANTS[args.variant][2]
    train.GRADIENT_IN_FORWARD = head != "project-checkpointed"
    trainer_class = trl_head_trainer() if head == "trl" else None
    trainer = make_trainer(recipe, load_base_model(recipe), load_tokenizer(recipe), rows, trainer_class=trainer_class)
    if recipe.training.activation_checkpointing:  # as Trainer.train() turns it on
        trainer.model.gradient_checkpointing_enable(recipe.training.gradient_checkpointing_kwargs)
    return trainer


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_steps(trainer, steps: int) -> dict:
    """Seconds of each forward+backward on one fixed batch (weights unchanged, so every loss is the same)."""
    rows = len(trainer.train_dataset)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(rows)]))
    num_items = (batch["labels"][:, 1:] != -100).sum()
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which the benchmark bypasses
    memory_before = peak_memory_mib()
    seconds, cpu_seconds, losses = [], [], []
    for _ in range(steps + 1):
        trainer.model.zero_grad()
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(trainer.training_step(trainer.model, dict(batch), num_items).item())
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return {
        "rows": rows,
        "seconds_per_step": sum(seconds[1:]) / steps,
        "cpu_seconds_per_step": sum(cpu_seconds[1:]) / steps,
        "loss": losses[0],
        "batch_shape": list(batch["input_ids"].shape),
        "labelled_tokens": int(num_items),
        "peak_memory_mib": peak_memory_mib(),
        "step_memory_mib": peak_memory_mib() - memory_before,
    }


def run_variant(args) -> None:
    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    bf16 = args.variant in AUTOCAST_BF16
    with tempfile.TemporaryDirectory() as output_dir, torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        result = time_steps(build_bench_trainer(args, output_dir), args.steps)
    print("RESULT " + json.dumps(result))


def run_child(args, variant: str) -> dict:
    command = [sys.executable, __file__, "--variant", variant, "--rows", str(args.rows), "--steps", str(args.steps)]
    command += (["--real"] if args.real else []) + (["--recipe", args.recipe] if args.recipe else [])
    command += ["--threads", str(args.threads)] if args.threads else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.variant:
        return run_variant(args)
    sys.path.insert(0, str(ROOT / "src"))
    model = "Gemma 3 270M (PyPI Q4_K_M dequantised, fp32)" if args.real else "tiny Gemma 3"
    from sft_router.core.run_folder import hardware

    print(f"{hardware()}; {model}; recipe {args.recipe or RECIPES['real' if args.real else 'tiny']}", flush=True)
    results = {}
    for variant in args.variants.split(","):
        results[variant] = result = run_child(args, variant)
        rows_per_s = result["rows"] / result["seconds_per_step"]
        base = results.get("today") or result
        ratio = base["seconds_per_step"] / result["seconds_per_step"]
        relative = abs(result["loss"] - base["loss"]) / abs(base["loss"])
        print(
            f"{variant:>10}: batch {result['batch_shape'][0]} x {result['batch_shape'][1]} tokens, "
            f"{result['seconds_per_step']:.2f} s/step = {rows_per_s:.3f} rows/s ({ratio:.2f}x today; CPU time "
            f"{result['cpu_seconds_per_step']:.2f} s), loss {result['loss']:.6f} (rel. diff {relative:.1e}), "
            f"peak {result['peak_memory_mib']:.0f} MiB (step +{result['step_memory_mib']:.0f} MiB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
