"""Sweep points for a recipe: train with a few keys changed, score the fine-tuned model on the validation split only.

A point is the recipe with `--set key=value` overrides, written to runs/sweep/sweep-<name>/router.yaml (its
run_name is that folder's name, so it trains into runs/sweep-<name>/ and never touches the recipe's own run). The
point builds its data and trains with the stage modules `make data` and `make train` run, then scores the adapter
under transformers on `validation` (never a test split: choices made on test would be tuned to it; predictions in runs/sweep/<name>/) and appends one
JSON line to runs/sweep/points.jsonl: the overrides, rows and steps trained, training wall time and seconds a step
(from the adapter manifest), the validation metrics with bootstrap intervals and the CPU. `--checkpoints` also
scores every saved checkpoint of the point (a learning curve; under a decaying schedule a checkpoint is not the
same as a shorter run). `--run RECIPE` scores a finished run of a recipe the same way (its adapter and checkpoints),
without training. `--table` prints the points so far as the markdown table the recipe README carries.

Usage: python bench/sweep.py --config recipes/gemma-3-270m-laptop/router.yaml --name lr2e-3 \\
           --set learning_rate=2e-3 --set max_steps=80 [--checkpoints]
       python bench/sweep.py --run recipes/gemma-3-270m-laptop/router.yaml   (a finished run's learning curve)
       python bench/sweep.py --table
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP = Path("runs/sweep")
POINTS = SWEEP / "points.jsonl"
SPLIT = "validation"
SHOWN = [("exact_match_rate", "exact match"), ("average_argument_f1", "argument F1"),
         ("tool_name_accuracy", "tool name"), ("no_call_accuracy", "no-call")]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the recipe the points start from")
    parser.add_argument("--name", help="the point's name (letters, digits, . _ -)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe key to change")
    parser.add_argument("--checkpoints", action="store_true", help="also score every saved checkpoint")
    parser.add_argument("--run", metavar="RECIPE", help="score a finished run of RECIPE and its checkpoints")
    parser.add_argument("--table", action="store_true", help="print the table of the points so far and stop")
    args = parser.parse_args(argv)
    if not args.table and not args.run and not (args.config and args.name):
        parser.error("give --config and --name (or --run RECIPE, or --table)")
    return args


def overrides(pairs: list[str]) -> dict:
    """`key=value` pairs with YAML-typed values (2e-3 a float, [q_proj, v_proj] a list, true a bool)."""
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"sweep: --set {pair!r} is not KEY=VALUE; write e.g. --set learning_rate=2e-3")
        changes[key] = yaml.safe_load(value)
    return changes


def point_recipe(config: str, name: str, changes: dict) -> Path:
    """runs/sweep/sweep-<name>/router.yaml: the recipe with the changes; the run's name is the folder's."""
    recipe = yaml.safe_load(Path(config).read_text())
    unknown = [key for key in changes if key not in recipe and key not in known_keys()]
    if unknown:
        sys.exit(f"sweep: '{unknown[0]}' is not a recipe key; see `python -m sft_router.train --help`")
    run_name = f"sweep-{name}"
    recipe.update(changes, run_name=run_name)
    path = SWEEP / run_name / "router.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return path


def known_keys() -> set[str]:
    """Every recipe key (computed on demand: the argument classes import torch)."""
    import dataclasses

    from trl import ModelConfig, SFTConfig

    from sft_router.core.config import PROJECT_ARGUMENTS

    return {f.name for cls in (*PROJECT_ARGUMENTS, SFTConfig, ModelConfig) for f in dataclasses.fields(cls)}


def run_stage(module: str, recipe: Path) -> None:
    done = subprocess.run([sys.executable, "-m", f"sft_router.{module}", "--config", str(recipe)])
    if done.returncode:
        sys.exit(f"sweep: `python -m sft_router.{module} --config {recipe}` failed (exit {done.returncode})")


def score_validation(recipe_path: Path, folders: list[Path], out: Path) -> list[dict]:
    """Validation metrics of the fine-tuned weights in each folder (the adapter, then any checkpoints), each with
    its predictions in out/<folder>/ (never inside a stage folder, which make and the Hub push own)."""
    from sft_router.core.config import parse_recipe
    from sft_router.evaluation.eval_data import _generated
    from sft_router.evaluation.scoring import write_variant
    from sft_router.evaluation.variants import transformers_variant
    from sft_router.modeling.loading import load_finetuned_generation_model, load_tokenizer
    from sft_router.modeling.prompts import prompt_set

    (recipe,) = parse_recipe(["--config", str(recipe_path)])
    rows, tokenizer, scored = _generated(recipe, SPLIT), load_tokenizer(recipe), []
    asked = prompt_set(tokenizer, rows, recipe.eval.eval_max_new_tokens, SPLIT)
    for folder in folders:
        start = time.perf_counter()
        model = functools.partial(load_finetuned_generation_model, recipe, folder)  # loaded by the first answer
        variant = transformers_variant(folder.name, model, tokenizer, recipe.eval.eval_batch_size)
        metrics = write_variant(out / folder.name, rows, variant.answer(asked))
        scored.append({"weights": folder.name, "score_wall_s": round(time.perf_counter() - start, 1), **metrics})
    return scored


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in POINTS.read_text().splitlines()] if POINTS.is_file() else []))
        return
    from sft_router.core.run_folder import hardware

    changes = overrides(args.set)
    if args.run:  # a finished run: its own adapter and checkpoints, nothing trained
        recipe, args.name, args.config, args.checkpoints = Path(args.run), Path(args.run).parent.name, args.run, True
    else:
        recipe = point_recipe(args.config, args.name, changes)
        run_stage("data", recipe)
        run_stage("train", recipe)
    adapter = Path("runs") / recipe.parent.name / "adapter"
    if not (adapter / "manifest.json").is_file():
        sys.exit(f"sweep: no finished adapter at {adapter}; train it first (make train RECIPE={recipe})")
    manifest = json.loads((adapter / "manifest.json").read_text())
    loaded = yaml.safe_load(recipe.read_text())
    steps, batch = loaded.get("max_steps"), loaded.get("per_device_train_batch_size")
    checkpoints = sorted((adapter.parent / "train").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    checkpoints = [p for p in checkpoints if int(p.name.split("-")[-1]) != steps]  # the last one is the adapter
    scored = score_validation(recipe, [adapter, *(checkpoints if args.checkpoints else [])], SWEEP / args.name)
    train_s = manifest.get("train_wall_time_s") or manifest.get("wall_time_s")
    point = {"name": args.name, "base_recipe": args.config, "set": changes, "num_train": loaded.get("num_train"),
             "max_steps": steps, "rows_a_step": batch, "train_wall_s": train_s,
             "s_per_step": round(train_s / steps, 2) if train_s and steps else None, "hardware": hardware(),
             "validation_rows": scored[0]["total_samples"],
             "scores": [{k: v for k, v in s.items() if not isinstance(v, dict | list) or k.endswith("_ci95")}
                        for s in scored]}  # fmt: skip
    POINTS.parent.mkdir(parents=True, exist_ok=True)
    with POINTS.open("a") as out:
        out.write(json.dumps(point) + "\n")
    print(table([point]))


def table(points: list[dict]) -> str:
    from sft_router.evaluation.markdown_tables import markdown_table, metric_cell

    rows, notes = [], []
    for point in points:
        changes = ", ".join(f"{k}={v}" for k, v in point["set"].items()) or "(the recipe)"
        wall = f"{point['train_wall_s'] / 60:.1f} min" if point.get("train_wall_s") else "n/a"
        mark = ""
        if point.get("note"):  # a point that did not run as planned says why, under the table
            notes.append(point["note"])
            mark = f" ({len(notes)})"
        for scores in point["scores"] or [{"weights": "adapter"}]:
            checkpoint = scores["weights"] != "adapter"
            label = point["name"] + (f" @{scores['weights']}" if checkpoint else "") + mark
            steps = f"{scores['weights'].split('-')[-1]} of {point['max_steps']}" if checkpoint else point["max_steps"]
            figures = [metric_cell(scores, key, digits=2, missing="n/a") for key, _ in SHOWN]
            rows.append([label, changes, f"{steps} x {point['rows_a_step']}", wall, *figures])
    lines = [markdown_table(["point", "changes", "steps x rows", "train wall", *(label for _, label in SHOWN)], rows)]
    return "\n".join(lines + [""] + [f"({i}) {note}" for i, note in enumerate(notes, 1)] if notes else lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
