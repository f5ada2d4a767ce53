"""Model and tokenizer loading shared by the stages: the recipe's base (or trained) weights, its tokenizer with the
recipe's chat template, the tokenizer files llama.cpp's converter needs, and batched greedy generation
(shared by `make eval` and `make bfcl`), a scene's prompt prefix prefilled once.

Usage: from sft_router.models import load_tokenizer, load_base_model, load_trained_model, generate
"""

from __future__ import annotations

import json
from pathlib import Path

from sft_router.prompts import stop_token_ids


def load_tokenizer(recipe, source: str | None = None):
    """The base tokenizer with the recipe's chat template: the one template every stage renders with."""
    from transformers import AutoTokenizer

    from sft_router.base_models import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(source or resolve_base_model(recipe.model.model_name_or_path))
    tokenizer.chat_template = Path(recipe.training.chat_template_path).read_text()
    return tokenizer


def load_base_model(recipe, source: str | None = None):
    """Gemma 3 trains with eager attention (its documented requirement); bf16 only where the device has it.
    `source` loads other weights (a fully fine-tuned model) the same way."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft_router.base_models import resolve_base_model

    dtype = torch.bfloat16 if recipe.training.bf16 else torch.float32
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


def load_finetuned_generation_model(recipe, base, adapter: Path):
    """The fine-tuned model for generation: `base` (from load_generation_model) with the LoRA adapter merged in (in
    memory: a merged projection costs one matmul, an unmerged LoRA one pays two more in every layer), or, after full
    fine-tuning (`use_peft: false`), the whole model the adapter folder holds."""
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    return load_generation_model(recipe, source=str(adapter))


def base_file(recipe, filename: str) -> Path:
    """A file of the base model's repo: from its local folder, else from the Hub (cached)."""
    from huggingface_hub import hf_hub_download

    from sft_router.base_models import resolve_base_model

    source = resolve_base_model(recipe.model.model_name_or_path)
    if Path(source).is_dir():
        return Path(source) / filename
    return Path(hf_hub_download(source, filename, revision=recipe.model.model_revision))


def added_tokens_decoder(folder: Path) -> dict:
    """`added_tokens_decoder` rebuilt from tokenizer.json, which transformers 5 no longer writes to the config.

    Without it llama.cpp's converter types <start_of_turn>/<end_of_turn> as text, so the GGUF splits them
    into characters and never stops at the turn end.
    """
    added = json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", [])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    decoder = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    return {**decoder, **config.get("added_tokens_decoder", {})}


def shared_prefix_length(id_lists: list[list[int]]) -> int:
    """Tokens every prompt starts with (<bos>, the turn header, the system prompt and, within a scene, its tools)."""
    first = id_lists[0] if id_lists else []
    length = len(first)
    for ids in id_lists[1:]:
        length = next((i for i, (a, b) in enumerate(zip(first[:length], ids)) if a != b), min(length, len(ids)))
    return length


def common_prefix(id_lists: list[list[int]]) -> list[int]:
    """The longest common token prefix, one token of every prompt kept out: generation needs one new position."""
    length = min(shared_prefix_length(id_lists), min(map(len, id_lists)) - 1)
    return id_lists[0][: max(0, length)]


def prefill_prefix(model, prefix: list[int]):
    """The KV cache of a shared prefix, computed once: each batch that shares it starts from a copy."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix], device=model.device), past_key_values=cache, use_cache=True)
    return cache


def batch_inputs(id_lists: list[list[int]], prefix: list[int], pad_id: int, device):
    """Prefix, then each prompt's own suffix left padded against it: pads sit between the two, masked out, so
    positions (from the mask's running count) continue the prefix exactly as in an unpadded prompt."""
    import torch

    suffixes = [ids[len(prefix) :] for ids in id_lists]
    width = max(len(s) for s in suffixes)
    input_ids = torch.tensor([prefix + [pad_id] * (width - len(s)) + s for s in suffixes], device=device)
    mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
    return input_ids, mask


def sliding_window(model) -> float:
    """Gemma 3's local-attention window in tokens (infinite for a model without one)."""
    config = getattr(model.config, "text_config", None) or model.config
    return getattr(config, "sliding_window", None) or float("inf")


def prefix_groups(scenes: list[list[int]]) -> list[list[int]]:
    """Prompt indices that share one prefix cache: each scene of two or more prompts, then all prompts alone in their
    scene together (alone, a prompt's prefix would be all of it and save nothing; together they share the static
    instructions and fill batches)."""
    alone = [index for scene in scenes if len(scene) == 1 for index in scene]
    return [scene for scene in scenes if len(scene) > 1] + ([alone] if alone else [])


def window_safe_batches(batch: list[int], id_lists, prefix: list[int], max_new_tokens: int, window: float):
    """`batch` as (indices, prefix) batches that decode what each prompt would alone.

    Pads sit between prefix and suffix, and a sliding-window layer counts its window in cache slots: once a padded
    row's slots outgrow the window it would see fewer real tokens than unpadded. Such a batch keeps the prefix and
    decodes one prompt at a time (no pads) when the prefix is most of the prompt (a scene's tools), else drops it for
    plain left padding (pads leave the window first)."""
    lengths = [len(id_lists[i]) for i in batch]
    if max(lengths) + max_new_tokens <= window or len(set(lengths)) == 1:
        return [(batch, prefix)]
    if 2 * len(prefix) >= max(lengths):
        return [([index], prefix) for index in batch]
    return [(batch, [])]


def plan_batches(id_lists, scenes, batch_size: int, max_new_tokens: int, window: float, reuse_prefix: bool = True):
    """(indices, prefix) per batch, group after group (prefix_groups), longest prompts first within a group so that
    little is padding; the prefix is the group's common prefix, or none without `reuse_prefix` or a second prompt to
    share it."""
    plan = []
    for group in prefix_groups(scenes):
        prefix = common_prefix([id_lists[i] for i in group]) if reuse_prefix and len(group) > 1 else []
        order = sorted(group, key=lambda i: -len(id_lists[i]))
        for start in range(0, len(order), batch_size):
            plan += window_safe_batches(order[start : start + batch_size], id_lists, prefix, max_new_tokens, window)
    return plan


def generate_batch(model, tokenizer, id_lists, prefix: list[int], cache, max_new_tokens: int) -> list[str]:
    """Greedy completions of one batch, from a copy of the prefix's cache (if any); specials stripped."""
    import copy

    import torch

    input_ids, mask = batch_inputs(id_lists, prefix, tokenizer.pad_token_id, model.device)
    past = None
    if cache is not None:
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(id_lists))
    with torch.inference_mode():
        generated = model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=past,
                                   max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                   eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)  # fmt: skip
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
    Each group's longest common token prefix is prefilled once and its cache copied into each of its batches, so a
    batch computes only its requests (see prefix_groups, window_safe_batches). `reuse_prefix=False` prefills every
    prompt whole: the same answers, the reference the tests and the bench compare with.
    """
    from tqdm.auto import tqdm

    if not prompts:
        return []
    id_lists = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    scenes = scenes or [list(range(len(prompts)))]
    plan = plan_batches(id_lists, scenes, batch_size, max_new_tokens, sliding_window(model), reuse_prefix)
    outputs: list[str] = [""] * len(prompts)
    prefix, cache = None, None
    for indices, batch_prefix in tqdm(plan, desc=desc, unit="batch"):
        if batch_prefix and batch_prefix != prefix:  # a group's batches come together: one cache at a time
            prefix, cache = batch_prefix, prefill_prefix(model, batch_prefix)
        texts = generate_batch(model, tokenizer, [id_lists[i] for i in indices], batch_prefix,
                               cache if batch_prefix else None, max_new_tokens)  # fmt: skip
        for index, text in zip(indices, texts):
            outputs[index] = text
    return outputs
