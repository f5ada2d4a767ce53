"""Model and tokenizer loading shared by the stages: the recipe's base (or trained) weights, its tokenizer with the
recipe's chat template, the tokenizer files llama.cpp's converter needs, and batched greedy generation
(shared by `make eval` and `make bfcl`), a scene's prompt prefix prefilled once.

Usage: from sft_router.modeling.loading import load_tokenizer, load_base_model, load_trained_model, generate
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from sft_router.core.router_format import shared_prefix_length
from sft_router.modeling.prompts import stop_token_ids


def load_tokenizer(recipe, source: str | None = None):
    """The base tokenizer with the recipe's chat template: the one template every stage renders with."""
    from transformers import AutoTokenizer

    from sft_router.modeling.base_models import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(source or resolve_base_model(recipe.model.model_name_or_path))
    tokenizer.chat_template = Path(recipe.training.chat_template_path).read_text()
    return tokenizer


def load_base_model(recipe, source: str | None = None):
    """Gemma 3 trains with eager attention (its documented requirement); bf16 only where the device has it.
    `source` loads other weights (a fully fine-tuned model) the same way."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft_router.modeling.base_models import resolve_base_model

    # bf16 weights on a GPU; on a CPU the weights stay fp32 and a bf16 recipe trains under CPU autocast
    dtype = torch.bfloat16 if recipe.training.bf16 and torch.cuda.is_available() else torch.float32
    return AutoModelForCausalLM.from_pretrained(
        source or resolve_base_model(recipe.model.model_name_or_path),
        attn_implementation=recipe.model.attn_implementation or "eager",
        dtype=dtype,
    )


def load_trained_model(recipe):
    """The fine-tuned model from runs/<name>/adapter/: base plus LoRA adapter, or the full model it holds."""
    from peft import PeftModel

    adapter = recipe.stage_dir("adapter")
    if (adapter / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(load_base_model(recipe), str(adapter))
    return load_base_model(recipe, str(adapter))


def load_generation_model(recipe, source: str | None = None):
    """The recipe's base model for generation. Eager attention is Gemma 3's training requirement; for
    inference SDPA computes the same attention (Gemma 3 has no attention soft-capping) and prefills a
    batch of long prompts about twice as fast on CPU, so an eager recipe generates with SDPA. On a GPU
    unless the recipe says `use_cpu`."""
    import torch

    model = load_base_model(recipe, source).eval()
    if model.config._attn_implementation == "eager":
        model.set_attn_implementation("sdpa")
    return model.to("cuda") if torch.cuda.is_available() and not recipe.training.use_cpu else model


def load_finetuned_generation_model(recipe, adapter: Path, base=None):
    """The fine-tuned model for generation: the base model with the LoRA adapter merged in (in memory: a merged
    projection costs one matmul, an unmerged LoRA one pays two more in every layer), or, after full fine-tuning
    (`use_peft: false`), the whole model the adapter folder holds. `base`, when given, returns the base model already
    loaded for generation (load_generation_model's): the merge goes into a copy of it, so that it stays the base
    model and no weights are read twice; without it the base model is loaded here."""
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        model = copy.deepcopy(base()) if base is not None else load_generation_model(recipe)
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    return load_generation_model(recipe, source=str(adapter))


def base_file(recipe, filename: str) -> Path:
    """A file of the base model's repo: from its local folder, else from the Hub (cached)."""
    from huggingface_hub import hf_hub_download

    from sft_router.modeling.base_models import resolve_base_model

    source = resolve_base_model(recipe.model.model_name_or_path)
    if Path(source).is_dir():
        return Path(source) / filename
    return Path(hf_hub_download(source, filename, revision=recipe.model.model_revision))


def added_tokens_decoder(folder: Path) -> dict:
    """`added_tokens_decoder` rebuilt from tokenizer.json, which transformers 5 no longer writes to the config.

    Without it llama.cpp's converter types the turn tokens (Gemma's <start_of_turn>/<end_of_turn>) as text, so the GGUF splits them
    into characters and never stops at the turn end.
    """
    added = json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", [])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    decoder = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    return {**decoder, **config.get("added_tokens_decoder", {})}


def common_prefix(id_lists: list[list[int]]) -> list[int]:
    """The longest common token prefix, one token of every prompt kept out: generation needs one new position."""
    length = min(shared_prefix_length(id_lists), min(map(len, id_lists)) - 1)
    return id_lists[0][: max(0, length)]


def prefill_prefix(model, prefix: list[int]):
    """The KV cache of a shared prefix, computed once. Built without the model's config, so that its sliding-window
    layers keep every position too: a batch may take the prefix cut short (see batch_cache)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix], device=model.device), cache=cache, use_cache=True)
    return cache


def left_padded(id_lists: list[list[int]], pad_id: int, device):
    """The batch's input ids and attention mask, each prompt left padded to the longest."""
    import torch

    width = max(map(len, id_lists))
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in id_lists], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in id_lists], device=device)
    return input_ids, mask


def right_aligned(states, cut: int, slots: int):
    """The first `cut` positions of `states` ([1, heads, positions, dim]) at the end of `slots` slots, zeros before."""
    import torch

    pad = states.new_zeros((1, states.shape[1], slots - cut, states.shape[3]))
    return torch.cat([pad, states[:, :, :cut]], dim=2)


def batch_cache(id_lists: list[list[int]], prefixes: list[list[int]], caches: list):
    """The cache of one left-padded batch (left_padded) as if it had prefilled its first slots itself, each row's
    from its own prefix's cache (rows of several scenes share a batch). The slots end where the longest remainder
    (prompt past its prefix) begins; a row takes as many of its prefix positions as end there and evaluates the rest
    with its request. Pads come only before a row's tokens, never between two, so a sliding-window layer, which
    counts its window in cache slots, counts positions: exact at any prompt length. None when nothing is cached."""
    import torch
    from transformers import DynamicCache

    width = max(map(len, id_lists))
    slots = width - max(len(ids) - len(prefix) for ids, prefix in zip(id_lists, prefixes))
    if slots == 0:
        return None
    cuts = [max(0, len(ids) - (width - slots)) for ids in id_lists]
    template = next(cache for cache in caches if cache is not None)  # a row without one (cut 0) gets zeros
    cache = DynamicCache()
    for index in range(len(template.layers)):
        layers = [(template if row_cache is None else row_cache).layers[index] for row_cache in caches]
        keys = [right_aligned(layer.keys, cut, slots) for layer, cut in zip(layers, cuts)]
        values = [right_aligned(layer.values, cut, slots) for layer, cut in zip(layers, cuts)]
        cache.update(torch.cat(keys), torch.cat(values), index)
    return cache


def prefix_groups(scenes: list[list[int]]) -> list[list[int]]:
    """Prompt indices that share one prefix cache: each scene of two or more prompts, then all prompts alone in their
    scene together (alone, a prompt's prefix would be all of it and save nothing; together they share the static
    instructions)."""
    alone = [index for scene in scenes if len(scene) == 1 for index in scene]
    return [scene for scene in scenes if len(scene) > 1] + ([alone] if alone else [])


def plan_batches(id_lists, scenes, batch_size: int, reuse_prefix: bool = True):
    """The prefix of each group (prefix_groups: its common prefix, or none without `reuse_prefix` or a second prompt
    to share it), and the batches: (group, prompt index) pairs, group after group, longest prompts first within a
    group; a batch fills up across groups, so scenes smaller than a batch still fill it."""
    groups = prefix_groups(scenes)
    prefixes = [
        common_prefix([id_lists[i] for i in group]) if reuse_prefix and len(group) > 1 else [] for group in groups
    ]
    order = [(g, i) for g, group in enumerate(groups) for i in sorted(group, key=lambda i: -len(id_lists[i]))]
    return prefixes, [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generate_batch(model, tokenizer, id_lists, prefixes: list[list[int]], caches: list, max_new_tokens: int):
    """Greedy completions of one batch, from each row's prefix cache (None: no prefix); specials stripped."""
    import torch

    input_ids, mask = left_padded(id_lists, tokenizer.pad_token_id, model.device)
    past = batch_cache(id_lists, prefixes, caches) if any(cache is not None for cache in caches) else None
    with torch.inference_mode():
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            cache=past,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=stop_token_ids(tokenizer, model),
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in texts]


def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    max_new_tokens: int,
    desc: str = "generate",
    scenes: list[list[int]] | None = None,
    reuse_prefix: bool = True,
) -> list[str]:
    """Greedy completions in the prompts' order, `batch_size` prompts at a time; specials stripped.

    `scenes` groups the indices of prompts that share a system prompt (prompts.scenes; default: all one group).
    Each group's longest common token prefix is prefilled once and every row of it starts from that cache, so a
    batch computes only its requests (see prefix_groups, plan_batches, batch_cache). `reuse_prefix=False` prefills every prompt
    whole: the same answers, the reference the tests and the bench compare with.
    """
    from tqdm.auto import tqdm

    if not prompts:
        return []
    id_lists = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    prefixes, batches = plan_batches(id_lists, scenes or [list(range(len(prompts)))], batch_size, reuse_prefix)
    outputs: list[str] = [""] * len(prompts)
    caches: dict[int, object] = {}
    for batch in tqdm(batches, desc=desc, unit="batch"):
        # Groups come one after another: keep the caches of this batch's groups only, each prefilled once.
        groups = [g for g in dict.fromkeys(g for g, _ in batch) if prefixes[g]]
        caches = {g: caches[g] if g in caches else prefill_prefix(model, prefixes[g]) for g in groups}
        texts = generate_batch(
            model,
            tokenizer,
            [id_lists[i] for _, i in batch],
            [prefixes[g] for g, _ in batch],
            [caches.get(g) for g, _ in batch],
            max_new_tokens,
        )
        for (_, index), text in zip(batch, texts):
            outputs[index] = text
    return outputs
