"""Score the fine-tuned model as users run it, its GGUF under llama.cpp, on every evaluated split, exactly as
`make eval` scores transformers.

Same rendered prompts (the training chat template), greedy decoding stopped at <end_of_turn>, the same shared
scorer. Two variants: `gguf` (free decoding, what Ollama and llama-cli do with the Modelfile's parameters) and
`gguf_grammar` (decoding constrained by the prompt's tool grammar, see sft_router.grammar). Each writes
runs/<name>/eval/[<split>/]<variant>/{metrics.json,predictions.jsonl}. Rows are decoded scene by scene (rows sharing
one system prompt, see prompts.scenes): llama.cpp keeps the KV state of the last prompt and evaluates only what the
next one adds, so a scene's system prompt and tools are evaluated once (runtime.load_gguf's `swa_full` keeps that
state whole for Gemma 3's sliding-window layers).

The llama.cpp runtime is required (`make eval` installs it first). Only where its wheel cannot be built
does SFT_ROUTER_GGUF_EVAL=skip leave the GGUF unscored (the test suite sets it then, and says why).

Usage: called by `python -m sft_router.evaluate --config recipes/tiny/router.yaml` (make eval)
"""

from __future__ import annotations

import os
from pathlib import Path

from sft_router.prompts import new_tokens_needed, render_prompts, scenes, system_prompt
from sft_router.run import gguf_path, read_manifest
from sft_router.scoring import write_variant


def eval_gguf_file(recipe) -> Path | None:
    """The GGUF `make eval` scores: the first of the recipe's gguf_outtypes (Q8_0 by default), if converted and not
    skipped (SFT_ROUTER_GGUF_EVAL=skip)."""
    if read_manifest(recipe.stage_dir("gguf")) is None or os.environ.get("SFT_ROUTER_GGUF_EVAL") == "skip":
        return None
    return gguf_path(recipe, recipe.export.gguf_outtypes[0])


def scene_grammars(rows: list[dict], groups: list[list[int]]) -> list:
    """The tool grammar of each scene's system prompt, built once per scene."""
    from llama_cpp import LlamaGrammar

    from sft_router.grammar import build_grammar

    texts = [build_grammar(system_prompt(rows[scene[0]])) for scene in groups]
    return [LlamaGrammar.from_string(text, verbose=False) for text in texts]


def gguf_outputs(llm, prompts: list[str], rows: list[dict], max_new_tokens: int, constrained: bool, desc: str):
    """Answers in row order, decoded scene by scene so that each scene's prompt prefix is evaluated once."""
    from sft_router.runtime import complete_by_scene

    groups = scenes(rows)
    grammars = scene_grammars(rows, groups) if constrained else None
    return complete_by_scene(llm, prompts, groups, max_new_tokens, grammars, desc=desc)


def evaluate_gguf(recipe, tokenizer, splits: dict[str, list[dict]], out_dirs: dict[str, Path]) -> dict[str, dict]:
    """Metrics of the `gguf` and `gguf_grammar` variants by split (written under each split's folder in `out_dirs`),
    the model loaded once; none (with a note) when no GGUF is scored."""
    from sft_router.runtime import load_gguf

    path = eval_gguf_file(recipe)
    if path is None:
        print(
            f"eval: the GGUF in {recipe.stage_dir('gguf')} is not scored (not converted, or SFT_ROUTER_GGUF_EVAL=skip)"
        )
        return {split: {} for split in splits}
    llm = load_gguf(path)
    return {split: evaluate_split(llm, tokenizer, rows, recipe, out_dirs[split]) for split, rows in splits.items()}


def evaluate_split(llm, tokenizer, rows: list[dict], recipe, out: Path) -> dict[str, dict]:
    prompts = render_prompts(tokenizer, rows)
    max_new_tokens = new_tokens_needed(tokenizer, rows, recipe.eval.eval_max_new_tokens)
    results = {}
    for variant, constrained in (("gguf", False), ("gguf_grammar", True)):
        outputs = gguf_outputs(llm, prompts, rows, max_new_tokens, constrained, variant)
        results[variant] = write_variant(out / variant, rows, outputs)
    return results
