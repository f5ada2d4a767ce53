"""LoRA (or full) SFT of the recipe's base model with TRL's SFTTrainer; loss on the completion only.

Writes checkpoints to runs/<name>/train/ and the final adapter to runs/<name>/adapter/. Rerunning after
an interruption resumes from the last checkpoint; a finished run (adapter present) is not retrained.

Usage: python -m sft_router.train --config recipes/tiny/router.yaml
"""

from __future__ import annotations

from pathlib import Path

from sft_router.config import parse_recipe
from sft_router.errors import UsageError, one_line_errors
from sft_router.run import stage_output


def load_tokenizer(recipe, source: str | None = None):
    """The base tokenizer with the recipe's chat template: the one template every stage renders with."""
    from transformers import AutoTokenizer

    from sft_router.base_models import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(source or resolve_base_model(recipe.model.model_name_or_path))
    tokenizer.chat_template = Path(recipe.training.chat_template_path).read_text()
    return tokenizer


def load_base_model(recipe):
    """Gemma 3 trains with eager attention (its documented requirement); bf16 only where the device has it."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft_router.base_models import resolve_base_model

    dtype = torch.bfloat16 if recipe.training.bf16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(
        resolve_base_model(recipe.model.model_name_or_path),
        attn_implementation=recipe.model.attn_implementation or "eager",
        dtype=dtype,
    )


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def build_trainer(recipe):
    from transformers import set_seed
    from trl import SFTTrainer, get_peft_config

    from sft_router.data import load_split

    set_seed(recipe.training.seed)
    train, validation = load_split(recipe, "train"), load_split(recipe, "validation")
    columns = ["prompt", "completion"]
    return SFTTrainer(
        model=load_base_model(recipe),
        args=recipe.training,
        train_dataset=train.select_columns(columns),
        eval_dataset=validation.select_columns(columns) if recipe.training.eval_strategy != "no" else None,
        processing_class=load_tokenizer(recipe),
        peft_config=get_peft_config(recipe.model),
    )


def train(recipe) -> Path:
    if recipe.training.completion_only_loss is False:
        raise UsageError(f"{recipe.path}: completion_only_loss must stay true; the router learns only its answers")
    trainer = build_trainer(recipe)
    resume = last_checkpoint(recipe.training.output_dir)
    with stage_output(recipe, "adapter", resumed_from=resume) as (out, facts):
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out))
        trainer.processing_class.save_pretrained(str(out))
        trainer.save_metrics("train", result.metrics)
        facts["train_metrics"] = result.metrics
        facts["log_history"] = trainer.state.log_history
    return recipe.stage_dir("adapter")


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    (recipe,) = parse_recipe(argv)
    if recipe.stage_dir("adapter").joinpath("manifest.json").is_file():
        print(f"train: {recipe.stage_dir('adapter')} is finished; delete it to retrain")
        return
    print(f"train: adapter written to {train(recipe)}")


if __name__ == "__main__":
    main()
