"""One evaluation path: `make eval` builds its variants once, loads each model once, and BFCL asks the same variants
the splits were scored with; the token cap of every list of prompts is decided in one place."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter

import pytest
from conftest import ROOT, TINY, copy_recipe, make_workspace

from sft_router import evaluate
from sft_router.core.config import parse_recipe
from sft_router.evaluation import variants
from sft_router.modeling import llama_runtime as runtime
from sft_router.modeling import loading as models
from sft_router.modeling.prompts import NEW_TOKENS_SLACK, prompt_set


def test_the_token_cap_follows_the_longest_target_and_rows_without_one_take_the_limit():
    (recipe,) = parse_recipe(["--config", str(ROOT / TINY)])
    tokenizer = models.load_tokenizer(recipe)
    targets = ["hi", '{"tool_name": "set_timer", "arguments": {"minutes": 3}}']
    rows = [{"prompt": [{"role": "user", "content": "x"}], "completion": [{"content": t}]} for t in targets]
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets)
    assert prompt_set(tokenizer, rows, 100, "test").max_new_tokens == longest + NEW_TOKENS_SLACK < 100
    assert prompt_set(tokenizer, rows, 5, "test").max_new_tokens == 5
    cases = [{"prompt": row["prompt"]} for row in rows]  # BFCL's cases: no target, graded by BFCL's checker
    assert prompt_set(tokenizer, cases, 100, "bfcl simple_python").max_new_tokens == 100


def count_calls(monkeypatch, module, name: str, calls: Counter) -> None:
    """Count calls of module.name; the real function still runs."""
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def recording(variant, asked: list) -> variants.Variant:
    """The variant, its every answer logged as (the variant handed out, the list's label, the outputs)."""

    def answer(prompts):
        outputs = variant.answer(prompts)
        asked.append((handed, prompts.label, outputs))
        return outputs

    handed = dataclasses.replace(variant, answer=answer)
    return handed


def read_outputs(path) -> list[str]:
    return [json.loads(line)["output"] for line in path.read_text().splitlines()]


@pytest.fixture
def small_eval(tiny_run, tmp_path, monkeypatch):
    """A copy of the tiny run's data, adapter and GGUF, and a recipe scoring 4 rows a split and 1 BFCL case a
    category."""
    workspace = make_workspace(tmp_path / "ws")
    for stage in ("dataset", "adapter", "gguf"):
        shutil.copytree(tiny_run / "runs/tiny" / stage, workspace / "runs/tiny" / stage, symlinks=True)
    monkeypatch.chdir(workspace)
    smaller = {"eval_limit: 24": "eval_limit: 4", "bfcl_limit: 2 ": "bfcl_limit: 1 "}
    recipe = copy_recipe(TINY, workspace / "variants/tiny/router.yaml", smaller)
    return parse_recipe(["--config", str(recipe)])[0]


def test_make_eval_loads_each_model_once_and_bfcl_asks_the_variants_the_splits_were_scored_with(
    small_eval, monkeypatch
):
    loads, built, asked = Counter(), [], []
    count_calls(monkeypatch, models, "load_base_model", loads)
    count_calls(monkeypatch, models, "load_finetuned_generation_model", loads)
    count_calls(monkeypatch, runtime, "load_gguf", loads)
    build = variants.build_variants

    def recorded_build(recipe, tokenizer):
        built.append({name: recording(variant, asked) for name, variant in build(recipe, tokenizer).items()})
        return built[-1]

    monkeypatch.setattr(variants, "build_variants", recorded_build)
    evaluate.run_eval(small_eval)
    (registry,) = built  # built once, for every split and BFCL
    gguf_scored = not os.environ.get("SFT_ROUTER_RUNTIME_UNAVAILABLE")
    assert ("gguf" in registry) == gguf_scored
    assert loads == Counter(load_base_model=1, load_finetuned_generation_model=1, load_gguf=int(gguf_scored))
    bfcl_finetuned = registry["gguf" if gguf_scored else "finetuned"]
    labels = {(variant.name, label) for variant, label, _ in asked}
    for category in ("simple_python", "multiple", "irrelevance"):
        assert {("baseline", f"bfcl {category}"), (bfcl_finetuned.name, f"bfcl {category}")} <= labels
    assert {("baseline", "test"), ("baseline", "handwritten"), (bfcl_finetuned.name, "handwritten")} <= labels
    split_variants = [variant for variant, label, _ in asked if not label.startswith("bfcl")]
    bfcl_variants = [variant for variant, label, _ in asked if label.startswith("bfcl")]
    assert all(any(v is s for s in split_variants) for v in bfcl_variants) and len(bfcl_variants) == 6
    eval_dir = small_eval.stage_dir("eval")
    for name, variant in (("baseline", registry["baseline"]), ("finetuned", bfcl_finetuned)):
        answers = [out for v, label, outputs in asked if v is variant and label.startswith("bfcl") for out in outputs]
        assert read_outputs(eval_dir / "bfcl" / name / "predictions.jsonl") == answers
        assert json.loads((eval_dir / "bfcl" / name / "metrics.json").read_text())["runtime"] == variant.runtime
    test_answers = next(outputs for v, label, outputs in asked if v is registry["baseline"] and label == "test")
    assert read_outputs(eval_dir / "baseline" / "predictions.jsonl") == test_answers
