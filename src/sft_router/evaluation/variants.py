"""The variants `make eval` scores, built once per evaluation and asked for every split and for BFCL: each a name, the
runtime it answers under and how it answers a list of prompts (prompts.PromptSet) with output strings.

`baseline`: the recipe's base model under transformers. `finetuned`: the same weights with the adapter merged in.
`gguf` and `gguf_grammar`: the fine-tuned model's GGUF under llama.cpp, free and constrained by the prompt's tool
grammar (sft_router.evaluation.gguf_eval), only where the GGUF is scored. `lookup`: no model
(sft_router.evaluation.lookup). Each model is loaded the first time a variant answers with it and then kept (Models),
so a process loads none twice: not for a second split, not for BFCL.

Usage: from sft_router.evaluation.variants import build_variants
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sft_router.evaluation.gguf_eval import eval_gguf_file, gguf_outputs
from sft_router.modeling.prompts import PromptSet

TRANSFORMERS = "transformers"
GGUF_VARIANTS = (("gguf", False), ("gguf_grammar", True))  # (name, decoding constrained by the tool grammar)


@dataclass(frozen=True)
class Variant:
    name: str
    runtime: str  # "transformers", "llama.cpp (<file>)", or "none" (the lookup)
    answer: Callable[[PromptSet], list[str]]  # outputs in the prompts' order


class Models:
    """The models of one evaluation, each loaded the first time a variant asks for it, then kept."""

    def __init__(self, recipe, gguf_file: Path | None):
        self.recipe, self.gguf_file = recipe, gguf_file

    @cached_property
    def base(self):
        from sft_router.modeling.loading import load_generation_model

        return load_generation_model(self.recipe)

    @cached_property
    def finetuned(self):
        from sft_router.modeling.loading import load_finetuned_generation_model

        return load_finetuned_generation_model(self.recipe, self.recipe.stage_dir("adapter"), lambda: self.base)

    @cached_property
    def gguf(self):
        from sft_router.modeling.llama_runtime import load_gguf

        return load_gguf(self.gguf_file)

    @cached_property
    def lookup(self):
        from sft_router.evaluation.lookup import build_lookup

        return build_lookup(self.recipe)


def transformers_variant(name: str, model: Callable, tokenizer, batch_size: int) -> Variant:
    """`model` returns the model (loaded on the first answer): batched greedy decoding, scene by scene."""
    from sft_router.modeling.loading import generate

    def answer(prompts: PromptSet) -> list[str]:
        desc = f"{name} ({prompts.label})"
        return generate(model(), tokenizer, prompts.texts, batch_size, prompts.max_new_tokens, desc, prompts.scenes)

    return Variant(name, TRANSFORMERS, answer)


def gguf_variant(name: str, models: Models, constrained: bool) -> Variant:
    def answer(prompts: PromptSet) -> list[str]:
        return gguf_outputs(models.gguf, prompts, constrained, f"{name} ({prompts.label})")

    return Variant(name, f"llama.cpp ({models.gguf_file.name})", answer)


def build_variants(recipe, tokenizer) -> dict[str, Variant]:
    """Every variant by name, in the order the tables show them; nothing is loaded until a variant answers."""
    models = Models(recipe, eval_gguf_file(recipe))
    size = recipe.eval.eval_batch_size
    variants = [
        transformers_variant("baseline", lambda: models.base, tokenizer, size),
        transformers_variant("finetuned", lambda: models.finetuned, tokenizer, size),
    ]
    if models.gguf_file is not None:
        variants += [gguf_variant(name, models, constrained) for name, constrained in GGUF_VARIANTS]
    variants.append(Variant("lookup", "none", lambda prompts: models.lookup.route_rows(prompts.rows)))
    return {variant.name: variant for variant in variants}
