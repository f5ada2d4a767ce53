"""Merge the LoRA adapter into the base model: a standalone folder that llama.cpp and gguf-my-repo can convert.

A full fine-tune (`use_peft: false`) has nothing to merge: its trained model is saved as it is.

transformers 5 `save_pretrained` writes neither `tokenizer.model` nor the template inside
`tokenizer_config.json`; llama.cpp's converter needs the first (else it falls back to a score-less BPE
vocabulary) and gguf-my-repo downloads `*.json` but not `*.jinja`, so both are put there by hand.

Usage: python -m sft_router.merge --config recipes/tiny/router.yaml   (writes runs/<name>/merged/)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError, one_line_errors
from sft_router.core.run_folder import stage_output
from sft_router.modeling.loading import added_tokens_decoder, base_file


def save_tokenizer_files(tokenizer, recipe, out: Path) -> None:
    """Tokenizer files as llama.cpp and gguf-my-repo need them: `tokenizer.model` beside them, the chat template
    and `added_tokens_decoder` inside tokenizer_config.json (the Space downloads *.json but not *.jinja)."""
    tokenizer.save_pretrained(str(out))
    shutil.copyfile(base_file(recipe, "tokenizer.model"), out / "tokenizer.model")
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = tokenizer.chat_template
    config["added_tokens_decoder"] = added_tokens_decoder(out)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def merge_adapter(recipe, out: Path) -> None:
    """LoRA: fold the adapter into the base weights. Full fine-tuning (`use_peft: false`): the model as trained."""
    from peft import PeftModel
    from transformers import GenerationConfig

    from sft_router.modeling.loading import load_tokenizer, load_trained_model
    from sft_router.modeling.prompts import stop_token_ids

    tokenizer = load_tokenizer(recipe)
    model = load_trained_model(recipe)
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    merged.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(tokenizer, merged),
        do_sample=False,
    )
    merged.save_pretrained(str(out))
    save_tokenizer_files(tokenizer, recipe, out)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    started = time.time()
    (recipe,) = parse_recipe(argv)
    if not (recipe.stage_dir("adapter") / "manifest.json").is_file():
        raise UsageError(f"no finished adapter in {recipe.stage_dir('adapter')}: run `make train` first")
    with stage_output(recipe, "merged", started) as (out, _):
        merge_adapter(recipe, out)
    print(f"merge: merged model written to {recipe.stage_dir('merged')}")


if __name__ == "__main__":
    main()
