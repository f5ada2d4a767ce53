"""The completion-only LM head: the same loss and gradients as TRL's default step, chunked or not, softcapped."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY, copy_recipe, make_workspace

from sft_router import data, train
from sft_router.core.config import parse_recipe


def short_prompt_recipe(ws, replace: dict[str, str] | None = None):
    """The tiny recipe with a one-line system prompt: the same stages on ~250-token rows, so tests stay fast."""
    (ws / "short_prompt.txt").write_text("Call one of these tools, or reply:\n{tools}\n")
    replace = {"recipes/gemma-3-270m-it/system_prompt.txt": "short_prompt.txt", **(replace or {})}
    return copy_recipe(TINY, ws / "tiny/short.yaml", replace)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("loss"))
    old = os.getcwd()
    os.chdir(ws)
    try:
        argv = ["--config", str(short_prompt_recipe(ws)), "--num_train", "6", "--num_validation", "1"]
        data.main([*argv, "--num_test", "1"])
        # padded rows: the head is compared with TRL's and the full logits on one batch (packing: test_scene_packing)
        (recipe,) = parse_recipe([*argv, "--scene_packing", "false"])
        yield train.build_trainer(recipe)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def batch(trainer):
    """Rows of different lengths, so the batch has padding as well as prompt tokens without labels."""
    rows = [trainer.train_dataset[i] for i in range(4)]
    collated = trainer._prepare_inputs(trainer.data_collator(rows))
    assert len({len(row["input_ids"]) for row in rows}) > 1
    return collated


def loss_and_grads(trainer, compute_loss, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = compute_loss(dict(batch))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def assert_same_grads(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys() and ours
    for name, grad in ours.items():
        assert torch.allclose(grad, reference[name], atol=1e-5, rtol=1e-4), name


def test_project_step_matches_trl_default_loss_and_gradients(trainer, batch):
    from trl import SFTTrainer

    ours, our_grads = loss_and_grads(trainer, lambda b: trainer.compute_loss(trainer.model, b), batch)
    trl, trl_grads = loss_and_grads(trainer, lambda b: SFTTrainer.compute_loss(trainer, trainer.model, b), batch)
    full, full_grads = loss_and_grads(trainer, lambda b: trainer.model(**b).loss, batch)  # full logits
    assert abs(ours - trl) < 1e-4 and abs(ours - full) < 1e-4
    assert_same_grads(our_grads, trl_grads)
    assert_same_grads(our_grads, full_grads)
    assert any("lora_B" in name for name in our_grads) and not any("embed" in name for name in our_grads)


def test_chunked_head_gives_the_same_loss_and_gradients(trainer, batch, monkeypatch):
    """Three labelled positions a chunk: many chunks, each recomputed in backward, add up to one pass."""
    whole, whole_grads = loss_and_grads(trainer, lambda b: trainer.compute_loss(trainer.model, b), batch)
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(train, "LOGITS_PER_CHUNK", 3 * vocab)
    chunked, chunked_grads = loss_and_grads(trainer, lambda b: trainer.compute_loss(trainer.model, b), batch)
    assert abs(whole - chunked) < 1e-5
    assert_same_grads(chunked_grads, whole_grads)


def test_only_labelled_positions_reach_the_lm_head(trainer, batch, monkeypatch):
    """The head projects as many rows as there are labelled next tokens, never batch x sequence."""
    import torch.nn.functional as F

    head = trainer.model.get_output_embeddings()
    projected_rows, real_linear = [], F.linear

    def counting_linear(x, weight, bias=None):
        if weight is head.weight:
            projected_rows.append(x.shape[0])
        return real_linear(x, weight, bias)

    monkeypatch.setattr(F, "linear", counting_linear)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert sum(projected_rows) == labelled and labelled < batch["labels"].numel() / 4


def test_softcapping_is_applied_like_gemmas_forward(trainer, batch):
    model = trainer.model.get_base_model()
    model.config.final_logit_softcapping = 0.5  # the random model's logits are small: a low cap changes them
    try:
        with torch.no_grad():
            ours = trainer.compute_loss(trainer.model, dict(batch)).item()
            full = trainer.model(**dict(batch)).loss.item()
    finally:
        model.config.final_logit_softcapping = None
    with torch.no_grad():
        uncapped = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert abs(ours - full) < 1e-5 and abs(ours - uncapped) > 1e-3


def test_a_batch_without_labels_gives_zero_loss_and_still_backpropagates(trainer, batch):
    unlabelled = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, unlabelled)
    loss.backward()
    assert loss.item() == 0.0
    trainer.model.zero_grad()


def test_padding_changes_no_loss_so_length_grouped_batches_only_save_time(trainer, batch):
    """A padded batch of rows of different lengths gives the token-weighted mean of each row's unpadded loss:
    padding is pure waste, which length-grouped batches (`train_sampling_strategy: group_by_length`) cut."""
    trainer.model.eval()
    rows = [trainer.train_dataset[i] for i in range(4)]
    with torch.no_grad():
        padded = trainer.compute_loss(trainer.model, dict(batch)).item()
        losses, counts = [], []
        for row in rows:
            alone = trainer._prepare_inputs(trainer.data_collator([row]))
            assert alone["input_ids"].shape[1] == len(row["input_ids"])  # no padding at all
            losses.append(trainer.compute_loss(trainer.model, dict(alone)).item())
            counts.append(int((alone["labels"][:, 1:] != -100).sum()))
    assert batch["input_ids"].shape[1] > min(len(row["input_ids"]) for row in rows)  # the batch did pad
    assert padded == pytest.approx(sum(loss * n for loss, n in zip(losses, counts)) / sum(counts), abs=1e-5)


def test_gradient_in_forward_matches_checkpointed_chunks(trainer, batch, monkeypatch):
    """The frozen head's gradient computed in the forward pass is the one a checkpointed chunk gives in backward,
    softcapped or not."""
    model = trainer.model.get_base_model().config
    for cap in (None, 0.5):
        monkeypatch.setattr(model, "final_logit_softcapping", cap)
        fused, fused_grads = loss_and_grads(trainer, lambda b: trainer.compute_loss(trainer.model, b), batch)
        monkeypatch.setattr(train, "GRADIENT_IN_FORWARD", False)
        checkpointed, checkpointed_grads = loss_and_grads(
            trainer, lambda b: trainer.compute_loss(trainer.model, b), batch
        )
        monkeypatch.setattr(train, "GRADIENT_IN_FORWARD", True)
        assert abs(fused - checkpointed) < 1e-5
        assert_same_grads(fused_grads, checkpointed_grads)
