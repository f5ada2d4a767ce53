"""Score the GGUF under llama.cpp on the test split exactly as `make eval` scores transformers.

Same rendered prompts (the training chat template), greedy decoding stopped at <end_of_turn>, the
same shared scorer. Two variants: `gguf` (free decoding, what Ollama and llama-cli do with the
Modelfile's parameters) and `gguf_grammar` (decoding constrained by the prompt's tool grammar, see
sft_router.grammar). Each writes runs/<name>/eval/<variant>/{metrics.json,predictions.jsonl}.

The llama.cpp runtime is required (`make eval` installs it first). Only where its wheel cannot be built
does SFT_ROUTER_GGUF_EVAL=skip leave the GGUF unscored (the test suite sets it then, and says why).

Usage: called by `python -m sft_router.evaluate --config recipes/tiny/router.yaml` (make eval)
"""

from __future__ import annotations

import os
from pathlib import Path

from sft_router.prompts import new_tokens_needed, render_prompts
from sft_router.run import gguf_path, read_manifest
from sft_router.scoring import write_variant


def eval_gguf_file(recipe) -> Path | None:
    """The GGUF `make eval` scores: the first of the recipe's gguf_outtypes (Q8_0 by default), if converted."""
    if read_manifest(recipe.stage_dir("gguf")) is None:
        return None
    return gguf_path(recipe, recipe.export.gguf_outtypes[0])


def gguf_outputs(llm, prompts: list[str], rows: list[dict], max_new_tokens: int, constrained: bool, desc: str):
    from llama_cpp import LlamaGrammar
    from tqdm.auto import tqdm

    from sft_router.grammar import build_grammar
    from sft_router.runtime import complete

    outputs = []
    for prompt, row in tqdm(list(zip(prompts, rows)), desc=desc, unit="prompt"):
        system = row["prompt"][0]["content"] if row["prompt"][0]["role"] == "system" else ""
        grammar = LlamaGrammar.from_string(build_grammar(system), verbose=False) if constrained else None
        outputs.append(complete(llm, prompt, max_new_tokens, grammar=grammar))
    return outputs


def evaluate_gguf(recipe, tokenizer, rows: list[dict], out: Path) -> dict[str, dict]:
    """Metrics of the `gguf` and `gguf_grammar` variants; none (with a note) when no GGUF was converted yet."""
    from sft_router.runtime import load_gguf

    path = eval_gguf_file(recipe)
    if path is None or os.environ.get("SFT_ROUTER_GGUF_EVAL") == "skip":
        print(
            f"eval: the GGUF in {recipe.stage_dir('gguf')} is not scored (not converted, or SFT_ROUTER_GGUF_EVAL=skip)"
        )
        return {}
    prompts = render_prompts(tokenizer, rows)
    llm = load_gguf(path)
    max_new_tokens = new_tokens_needed(tokenizer, rows, recipe.eval.eval_max_new_tokens)
    results = {}
    for variant, constrained in (("gguf", False), ("gguf_grammar", True)):
        outputs = gguf_outputs(llm, prompts, rows, max_new_tokens, constrained, variant)
        results[variant] = write_variant(out / variant, rows, outputs)
    return results
