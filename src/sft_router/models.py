"""Model and tokenizer loading shared by the stages: the recipe's base (or trained) weights, its tokenizer with the
recipe's chat template, the tokenizer files llama.cpp's converter needs, and batched greedy generation.

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
    """The fine-tuned model for generation: `base` (from load_generation_model) with the LoRA adapter, or, after
    full fine-tuning (`use_peft: false`), the whole model the adapter folder holds."""
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(adapter)).eval()
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


def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, desc: str = "generate"):
    """Greedy completions in the prompts' order, `batch_size` prompts at a time, left padded; specials stripped."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    # Longest first, so that prompts batched together are of similar length and padding wastes little.
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        indices = order[start : start + batch_size]
        batch = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)  # fmt: skip
        with torch.inference_mode():
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                       eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for index, text in zip(indices, texts):
            outputs[index] = text.strip()
    return outputs
