"""The fine-tuned model as users run it, its GGUF under llama.cpp, asked as `make eval` asks transformers: the one
GGUF decode loop of split evaluation, grammar-constrained evaluation and BFCL.

Same rendered prompts (the training chat template), greedy decoding stopped at <end_of_turn>, the same shared
scorer. Two variants (sft_router.evaluation.variants): `gguf` (free decoding, what Ollama and llama-cli do with the
Modelfile's parameters) and `gguf_grammar` (decoding constrained by the prompt's tool grammar, see
sft_router.evaluation.grammar). Prompts are decoded scene by scene (rows sharing one system prompt, see
prompts.scenes): llama.cpp keeps the KV state of the last prompt and evaluates only what the next one adds, so a
scene's system prompt and tools are evaluated once (runtime.load_gguf's `swa_full` keeps that state whole for Gemma 3's
sliding-window layers); each list of prompts starts from an empty cache.

The llama.cpp runtime is required (`make eval` installs it first). Only where its wheel cannot be built
does SFT_ROUTER_GGUF_EVAL=skip leave the GGUF unscored (the test suite sets it then, and says why).

Usage: from sft_router.evaluation.gguf_eval import eval_gguf_file, gguf_outputs
"""

from __future__ import annotations

import os
from pathlib import Path

from sft_router.core.run_folder import gguf_path, read_manifest
from sft_router.modeling.prompts import PromptSet, system_prompt


def eval_gguf_file(recipe) -> Path | None:
    """The GGUF `make eval` scores: the first of the recipe's gguf_outtypes (Q8_0 by default), if converted and not
    skipped (SFT_ROUTER_GGUF_EVAL=skip)."""
    if read_manifest(recipe.stage_dir("gguf")) is None or os.environ.get("SFT_ROUTER_GGUF_EVAL") == "skip":
        return None
    return gguf_path(recipe, recipe.export.gguf_outtypes[0])


def scene_grammars(rows: list[dict], groups: list[list[int]]) -> list:
    """The tool grammar of each scene's system prompt, built once per scene."""
    from llama_cpp import LlamaGrammar

    from sft_router.evaluation.grammar import build_grammar

    texts = [build_grammar(system_prompt(rows[scene[0]])) for scene in groups]
    return [LlamaGrammar.from_string(text, verbose=False) for text in texts]


def gguf_outputs(llm, prompts: PromptSet, constrained: bool, desc: str) -> list[str]:
    """Answers in row order, decoded scene by scene so that each scene's prompt prefix is evaluated once;
    `constrained`: each scene under its tool grammar. The list starts from an empty cache, as from a fresh load: what
    another list (a split, BFCL) left in it changes no answer, whatever order the variants are asked in."""
    from sft_router.modeling.llama_runtime import complete_by_scene

    llm.reset()
    grammars = scene_grammars(prompts.rows, prompts.scenes) if constrained else None
    return complete_by_scene(llm, prompts.texts, prompts.scenes, prompts.max_new_tokens, grammars, desc=desc)
