"""LoRA (or full) SFT of the recipe's base model with TRL's SFTTrainer; loss on the completion only.

Writes checkpoints to runs/<name>/train/ and the final adapter (or, with `use_peft: false`, the full model) to
runs/<name>/adapter/, with the loss and learning-rate curves as training_curves.png. Rerunning after an
interruption resumes from the last checkpoint; a finished run (adapter manifest present) is not retrained.
Under `accelerate launch` every process trains and only the main one writes the stage folder.

Fast steps: Gemma 3 270M has a 262k vocabulary, so its LM head costs more than the 18 layers below it.
The router's loss covers only the completion (a few dozen tokens of a ~1000-token prompt), so
`CompletionOnlySFTTrainer` projects only the hidden states at labelled positions through the head, in
vocabulary-bounded chunks that are recomputed in backward: memory is set by the completion, not the sequence.

Usage: python -m sft_router.train --config recipes/tiny/router.yaml
"""

from __future__ import annotations

import functools
import json
import shutil
import time
import types
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import ModelOutput

from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError, one_line_errors
from sft_router.core.run_folder import fingerprint, is_current, stage_output
from sft_router.modeling.loading import load_base_model, load_tokenizer

# Logits held at once by the completion head: 2**26 fp32 values is 256 MiB, ~256 positions of Gemma's vocabulary.
LOGITS_PER_CHUNK = 2**26


SCENE = "scene"
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def complete_checkpoint(folder: Path) -> bool:
    """A checkpoint a kill did not interrupt: its trainer state and weights are both on disk."""
    return (folder / "trainer_state.json").is_file() and any((folder / name).is_file() for name in WEIGHTS)


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint; incomplete ones (a kill while saving) are removed with a one-line note."""
    folder = Path(output_dir)
    numbered = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for checkpoint in sorted(numbered, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if complete_checkpoint(checkpoint):
            return str(checkpoint)
        print(f"train: skipping incomplete {checkpoint} (interrupted while saving); removing it")
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def checkpoints_for(recipe) -> None:
    """Keep runs/<name>/train/ only if it was trained from the same inputs; checkpoints of other inputs go."""
    folder, current = Path(recipe.training.output_dir), fingerprint(recipe, "adapter")
    stamp = folder / "inputs.sha256"
    checkpoints = sorted(folder.glob("checkpoint-*"))
    if checkpoints and (not stamp.is_file() or stamp.read_text().strip() != current):
        print(f"train: {folder} holds checkpoints of other inputs; removing them and training from the start")
        for checkpoint in checkpoints:
            shutil.rmtree(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(current + "\n")


@dataclass
class CompletionLossOutput(ModelOutput):
    """The completion head's output; a ModelOutput (a registered pytree) so DDP finds the tensors in it."""

    loss: object = None
    num_correct: object = None
    num_labels: object = None


def _capped_logits(hidden, weight, bias, softcap):
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    if softcap is None:
        return logits, None
    capped = torch.tanh(logits / softcap)  # Gemma's final_logit_softcapping, as in its forward
    return capped * softcap, capped


def _chunk_loss(hidden, weight, bias, labels, softcap):
    """Summed cross-entropy and correct top-1 count of one chunk of labelled positions."""
    import torch.nn.functional as F

    logits, _ = _capped_logits(hidden, weight, bias, softcap)
    return F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(-1) == labels).sum()


# False: every chunk checkpointed, frozen head or not (the path before scenes; bench/train_step.py times both)
GRADIENT_IN_FORWARD = True


@functools.cache
def frozen_head_loss():
    """Cross-entropy through a frozen LM head (LoRA) whose gradient is computed in the forward pass.

    The gradient of the summed cross-entropy with respect to the logits is softmax - one-hot, known as soon as the
    logits are; so the forward multiplies it back through the head at once and keeps only that [positions, hidden]
    result for backward. Two matmuls with the 262k-row head instead of three (a checkpointed chunk recomputes its
    logits in backward), and the chunk's logits are freed before the next chunk, as with checkpointing.
    """
    import torch

    class FrozenHeadLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, labels, softcap):
            logits, capped = _capped_logits(hidden, weight, bias, softcap)
            log_z = torch.logsumexp(logits, dim=-1)
            loss = (log_z - logits.gather(1, labels[:, None])[:, 0]).sum()
            correct = (logits.argmax(-1) == labels).sum()
            grad = torch.exp(logits.sub_(log_z[:, None]))  # softmax, in the logits' memory
            grad[torch.arange(labels.shape[0], device=labels.device), labels] -= 1
            if capped is not None:
                grad.mul_(1 - capped.square_())
            ctx.save_for_backward(grad.to(hidden.dtype) @ weight)
            ctx.mark_non_differentiable(correct)
            return loss, correct

        @staticmethod
        def backward(ctx, grad_loss, _):
            (grad_hidden,) = ctx.saved_tensors
            return grad_hidden * grad_loss, None, None, None, None

    return FrozenHeadLoss


def completion_loss(hidden_states, labels, lm_head, softcap=None, num_items_in_batch=None):
    """Next-token loss over the positions whose label is set, projecting only those through `lm_head`."""
    import torch
    from torch.utils.checkpoint import checkpoint

    labels = labels[:, 1:].to(hidden_states.device)
    mask = labels != -100
    selected, targets = hidden_states[:, :-1][mask], labels[mask]
    weight, bias = lm_head.weight, lm_head.bias
    if hasattr(weight, "full_tensor"):  # FSDP2 shards the head as a DTensor; the backbone's output is plain
        weight, bias = weight.full_tensor(), None if bias is None else bias.full_tensor()
    trainable_head = weight.requires_grad or (bias is not None and bias.requires_grad) or not GRADIENT_IN_FORWARD
    rows = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    # `selected.sum() * 0` keeps a batch without labels connected to the graph, so backward (and DDP) still run
    total, correct = selected.sum() * 0.0, torch.zeros((), dtype=torch.long, device=selected.device)
    for start in range(0, selected.shape[0], rows):
        chunk = (selected[start : start + rows], weight, bias, targets[start : start + rows], softcap)
        if trainable_head:  # full fine-tuning: the head's own gradient too, from logits recomputed in backward
            chunk_loss, chunk_correct = checkpoint(_chunk_loss, *chunk, use_reentrant=False)
        else:
            chunk_loss, chunk_correct = frozen_head_loss().apply(*chunk)
        total, correct = total + chunk_loss, correct + chunk_correct
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return CompletionLossOutput(loss=total / denominator, num_correct=correct, num_labels=mask.sum())


def add_completion_head(model) -> None:
    """Let `model(..., completion_loss_only=True)` return the completion loss instead of logits.

    The head runs inside the model's forward, so DDP and FSDP wrappers see it as part of their module; any
    other call goes to the forward that was there before (TRL's), so generation and evaluation are unchanged.
    """
    previous_forward = model.forward

    def forward(self, *args, completion_loss_only=False, labels=None, num_items_in_batch=None, **kwargs):
        if not completion_loss_only:
            extra = {"labels": labels, "num_items_in_batch": num_items_in_batch}
            return previous_forward(*args, **kwargs, **{k: v for k, v in extra.items() if v is not None})
        hidden = self.base_model(*args, **{**kwargs, "use_cache": False}).last_hidden_state
        softcap = getattr(self.config.get_text_config(), "final_logit_softcapping", None)
        return completion_loss(hidden, labels, self.get_output_embeddings(), softcap, num_items_in_batch)

    model.forward = types.MethodType(forward, model)


def scene_packing_trainer(base):
    """`base` (an SFTTrainer class) training on packed scenes: a scene's rows stay adjacent in every batch and
    the `scene` column reaches the collator (see sft_router.modeling.scene_packing)."""
    from sft_router.modeling.scene_packing import SceneSampler

    class ScenePackingTrainer(base):
        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if SCENE not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, SCENE]

        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            if SCENE not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            return SceneSampler(dataset[SCENE], self.args.data_seed or self.args.seed)

    ScenePackingTrainer.__name__ = ScenePackingTrainer.__qualname__ = f"ScenePacking{base.__name__}"
    return ScenePackingTrainer


def sft_trainer_class():
    """`CompletionOnlySFTTrainer`, defined on first use so that importing this module stays light."""
    from accelerate.utils import is_peft_model
    from trl import SFTTrainer

    class CompletionOnlySFTTrainer(SFTTrainer):
        """SFTTrainer whose training loss projects only labelled positions through the LM head."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            add_completion_head(self.model.get_base_model() if is_peft_model(self.model) else self.model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            uses_other_loss = self.compute_loss_func or self.label_smoother or self.args.loss_type != "nll"
            if return_outputs or uses_other_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**inputs, completion_loss_only=True, num_items_in_batch=num_items_in_batch)
            loss = outputs.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL: DDP averages, the count spans every rank
            self._log_token_accuracy(outputs)
            return loss

        def _log_token_accuracy(self, outputs) -> None:
            mode = "train" if self.model.training else "eval"
            correct = self.accelerator.gather_for_metrics(outputs.num_correct).sum()
            labelled = self.accelerator.gather_for_metrics(outputs.num_labels).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / labelled.clamp(min=1)).item())

    return CompletionOnlySFTTrainer


def with_scenes(dataset):
    """The prompt-completion columns and a `scene` per row: the dataset's own, else the system prompt itself (rows
    that share it share a prefix, which is all packing needs)."""
    if dataset is None:
        return None
    if SCENE in dataset.column_names:
        return dataset.select_columns(["prompt", "completion", SCENE])
    from sft_router.modeling.prompts import system_prompt

    scenes = [system_prompt({"prompt": prompt}) for prompt in dataset["prompt"]]
    return dataset.select_columns(["prompt", "completion"]).add_column(SCENE, scenes)


def make_trainer(recipe, model, tokenizer, train_dataset, eval_dataset=None, trainer_class=None, callbacks=()):
    """The project's trainer, or `trainer_class` (TRL's SFTTrainer, for the benchmark), with the recipe's LoRA;
    with `scene_packing` each scene's rows train as one packed sequence."""
    from trl import get_peft_config

    trainer_class = trainer_class or sft_trainer_class()
    if not recipe.scenes.scene_packing:
        columns = ["prompt", "completion"]
        train_dataset = train_dataset.select_columns(columns)
        eval_dataset = eval_dataset.select_columns(columns) if eval_dataset is not None else None
        collator = None
    else:
        from sft_router.modeling.scene_packing import packing_collator

        trainer_class = scene_packing_trainer(trainer_class)
        train_dataset, eval_dataset = with_scenes(train_dataset), with_scenes(eval_dataset)
        collator = packing_collator(model, tokenizer.pad_token_id)
    return trainer_class(
        model=model,
        args=recipe.training,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(recipe.model),
        callbacks=list(callbacks),
    )


def build_trainer(recipe, callbacks=()):
    """The trainer of `make train`: seed first, then the recipe's base model and the run's dataset."""
    from transformers import set_seed

    from sft_router.datagen.catalog import load_split

    set_seed(recipe.training.seed)
    validation = load_split(recipe, "validation") if recipe.training.eval_strategy != "no" else None
    return make_trainer(
        recipe,
        load_base_model(recipe),
        load_tokenizer(recipe),
        load_split(recipe, "train"),
        validation,
        None,
        callbacks,
    )


def plot_training_curves(log_history: list[dict], path: Path) -> None:
    """Loss (train and, if logged, eval) and learning rate against the step, for the model card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, lr_axes) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("loss", "train"), ("eval_loss", "validation")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            loss_axes.plot(*zip(*points), marker=".", label=label)
    loss_axes.set(xlabel="step", ylabel="loss", title="Loss (completion tokens)")
    loss_axes.legend()
    rates = [(entry["step"], entry["learning_rate"]) for entry in log_history if "learning_rate" in entry]
    if rates:
        lr_axes.plot(*zip(*rates), color="tab:orange")
    lr_axes.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_adapter_stage(
    recipe, trainer, result, saved: Path, resumed_from: str | None, seconds: float, started: float
):
    """Main process only: the saved weights, tokenizer, metrics and curves become runs/<name>/adapter/.

    train_wall_time_s is the training loop's `seconds` (and saving the weights); the manifest's wall_time_s runs from
    `started`, the start of the stage: loading the model too.
    """
    with stage_output(recipe, "adapter", started, resumed_from=resumed_from) as (out, facts):
        shutil.copytree(saved, out, dirs_exist_ok=True)
        trainer.processing_class.save_pretrained(str(out))
        trainer.save_metrics("train", result.metrics)  # writes train_results.json into the trainer's output_dir
        shutil.copyfile(Path(recipe.training.output_dir) / "train_results.json", out / "train_results.json")
        plot_training_curves(trainer.state.log_history, out / "training_curves.png")
        facts["full_fine_tuning"] = not recipe.model.use_peft
        facts["world_size"] = trainer.args.world_size
        facts["train_wall_time_s"] = round(seconds, 2)
        facts["train_metrics"] = result.metrics
        facts["log_history"] = trainer.state.log_history


def train(recipe, callbacks=()) -> Path | None:
    """Train (resuming if a checkpoint exists); the adapter folder on the main process, None on the others."""
    if recipe.training.completion_only_loss is False:
        raise UsageError(f"{recipe.path}: completion_only_loss must stay true; the router learns only its answers")
    started = time.time()
    trainer = build_trainer(recipe, callbacks)
    if trainer.is_world_process_zero():
        checkpoints_for(recipe)
    trainer.accelerator.wait_for_everyone()
    resume = last_checkpoint(recipe.training.output_dir)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    # Every process takes part in saving (FSDP gathers the weights); Trainer writes files on the main one only
    saved = Path(recipe.training.output_dir) / "final"
    trainer.save_model(str(saved))
    main_process = trainer.is_world_process_zero()
    if main_process:
        write_adapter_stage(recipe, trainer, result, saved, resume, time.time() - start, started)
    trainer.accelerator.wait_for_everyone()  # the others return only once the stage folder is in place
    return recipe.stage_dir("adapter") if main_process else None


def log_losses(adapter_dir: Path) -> list[float]:
    """Training losses in logging order, from a finished adapter's manifest."""
    history = json.loads((Path(adapter_dir) / "manifest.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    (recipe,) = parse_recipe(argv)
    if is_current(recipe, "adapter"):
        print(f"train: {recipe.stage_dir('adapter')} is finished and made from these inputs; delete it to retrain")
        return
    start = time.time()
    out = train(recipe)
    if out is not None:
        print(f"train: adapter written to {out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
