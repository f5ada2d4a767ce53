"""Training: the loss mask covers exactly the completion, one <bos>, LoRA moves only adapter weights."""

from __future__ import annotations

import pytest
from conftest import TINY

from sft_router import data
from sft_router.core.config import parse_recipe
from sft_router.train import build_trainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    import os

    from conftest import make_workspace

    ws = make_workspace(tmp_path_factory.mktemp("mask"))
    old = os.getcwd()
    os.chdir(ws)
    try:
        data.main(["--config", TINY, "--num_train", "8", "--num_validation", "2", "--num_test", "2"])
        (recipe,) = parse_recipe(["--config", TINY])
        yield build_trainer(recipe)
    finally:
        os.chdir(old)


def test_label_mask_covers_exactly_the_completion_tokens(trainer):
    """Labels are set on the completion's tokens (the target and its <end_of_turn>) and nowhere else."""
    tokenizer = trainer.processing_class
    rows = load_split_rows(trainer)
    for index, row in enumerate(rows[:4]):
        batch = trainer.data_collator([trainer.train_dataset[index]])
        labels, ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        prefix = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert full.startswith(prefix)
        expected = tokenizer(full[len(prefix) :], add_special_tokens=False).input_ids
        trained = [i for i, label in zip(ids, labels) if label != -100]
        assert trained == expected
        assert ids[-len(expected) :] == expected and labels[: len(ids) - len(expected)] == [-100] * (
            len(ids) - len(expected)
        )
        assert tokenizer.decode(trained).startswith(row["completion"][0]["content"])
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def load_split_rows(trainer):
    from datasets import load_from_disk

    return list(load_from_disk("runs/tiny/dataset/hf")["train"])


def test_completion_text_is_the_target(trainer):
    tokenizer = trainer.processing_class
    row = trainer.train_dataset[0]
    labels = trainer.data_collator([row])["labels"][0].tolist()
    ids = trainer.data_collator([row])["input_ids"][0].tolist()
    prompt_part = tokenizer.decode([i for i, label in zip(ids, labels) if label == -100])
    assert prompt_part.endswith("<start_of_turn>model\n")
