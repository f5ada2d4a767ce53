"""Shared-prefix packing is exact: a packed scene gives the loss and LoRA gradients of its rows padded one by one."""

from __future__ import annotations

import os

import pytest
from conftest import TINY, copy_recipe, make_workspace

from sft_router import data, train
from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError
from sft_router.modeling.loading import load_base_model, load_tokenizer
from sft_router.modeling.scene_packing import SceneSampler, pack_scene, packing_collator

SHORT = "Call one of these tools, or reply:\n{tools}\n"


def scene_rows(rows: list[dict], sizes: tuple[int, ...]) -> list[dict]:
    """Rows regrouped into scenes of `sizes`: every row of a scene shows the first row's system prompt."""
    out, start = [], 0
    for number, size in enumerate(sizes):
        system = rows[start]["prompt"][0]
        for row in rows[start : start + size]:
            out.append({**row, "prompt": [system, row["prompt"][1]], "scene": f"s{number}"})
        start += size
    return out


@pytest.fixture(scope="module")
def packing_ws(tmp_path_factory):
    """One workspace for the module, where each recipe's data is built."""
    ws = make_workspace(tmp_path_factory.mktemp("packing"))
    old = os.getcwd()
    os.chdir(ws)
    (ws / "short_prompt.txt").write_text(SHORT)
    try:
        yield ws
    finally:
        os.chdir(old)


def short_recipe(ws, source: str, run: str):
    """`source` with the short system prompt, and its data (16 train rows) built in `ws`."""
    replace = {"recipes/gemma-3-270m-it/system_prompt.txt": "short_prompt.txt"}
    recipe_file = copy_recipe(source, ws / f"{run}/short.yaml", replace)
    argv = ["--config", str(recipe_file), "--num_train", "16", "--num_validation", "1", "--num_test", "1"]
    data.main(argv)
    return parse_recipe(argv[:2])[0]


@pytest.fixture(scope="module")
def workspace_recipe(packing_ws):
    return short_recipe(packing_ws, TINY, "tiny")


@pytest.fixture(scope="module")
def qwen3_recipe(packing_ws):
    return short_recipe(packing_ws, "recipes/tiny-qwen3/router.yaml", "tiny-qwen3")


def trainer_for(recipe, rows: list[dict], packing: bool, window: int | None = None):
    from datasets import Dataset
    from transformers import set_seed

    set_seed(0)
    recipe.scenes.scene_packing = packing
    model = load_base_model(recipe)
    if window is not None:  # a window smaller than the prompt, so the sliding layers really cut
        model.config.sliding_window = window
    return train.make_trainer(recipe, model, load_tokenizer(recipe), Dataset.from_list(rows))


def loss_and_grads(trainer) -> tuple[float, dict]:
    dataset = trainer.train_dataset
    batch = trainer._prepare_inputs(trainer.data_collator([dataset[i] for i in range(len(dataset))]))
    num_items = (batch["labels"][:, 1:] != -100).sum()
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.item(), grads, batch


def assert_exact(packed, padded) -> None:
    (loss, grads, _), (ref_loss, ref_grads, _) = packed, padded
    assert abs(loss - ref_loss) <= 1e-4 * abs(ref_loss)
    assert grads.keys() == ref_grads.keys() and any("lora_B" in name for name in grads)
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max().clamp(min=1e-12)
        assert (grad - ref_grads[name]).abs().max() / scale <= 1e-4, name


@pytest.fixture(scope="module")
def train_rows(workspace_recipe):
    from sft_router.datagen.catalog import load_split

    return [dict(row) for row in load_split(workspace_recipe, "train")]


@pytest.mark.parametrize("window", [None, 16], ids=["model-window", "window-16"])
def test_packed_scenes_match_rows_one_by_one(workspace_recipe, train_rows, window):
    rows = scene_rows(train_rows, (4, 3, 1))
    packed = loss_and_grads(trainer_for(workspace_recipe, rows, True, window))
    padded = loss_and_grads(trainer_for(workspace_recipe, rows, False, window))
    batch = packed[2]
    assert batch["input_ids"].shape[0] == 3 and isinstance(batch["attention_mask"], dict)  # one sequence a scene
    assert batch["input_ids"].numel() < padded[2]["input_ids"].numel() * 0.7  # the prefix counted once
    if window is not None:
        assert batch["position_ids"].max() > window  # the cut falls inside the packed sequences
    assert_exact(packed, padded)


def test_rows_of_different_prompts_in_one_scene_still_train_exactly(workspace_recipe, train_rows):
    """A wrong scene label costs only speed: the shared prefix is then short (<bos> and the turn header)."""
    firsts = {row["prompt"][0]["content"]: row for row in reversed(train_rows)}  # a row of each scene
    rows = [{**row, "scene": "one"} for row in list(firsts.values())[:4]]
    assert len({row["prompt"][0]["content"] for row in rows}) == 4
    assert_exact(loss_and_grads(trainer_for(workspace_recipe, rows, True)),
                 loss_and_grads(trainer_for(workspace_recipe, rows, False)))  # fmt: skip


def test_each_row_keeps_its_own_tokens_whatever_the_boundary():
    """Token-level prefix: a row whose tokens part from the others mid-word keeps exactly its own tokens."""
    rows = [
        {"input_ids": [2, 10, 11, 12, 40, 41, 7], "labels": [-100] * 5 + [41, 7]},
        {"input_ids": [2, 10, 11, 13, 50, 8], "labels": [-100] * 4 + [50, 8]},  # parts at the 4th token
        {"input_ids": [2, 10, 11, 12, 40, 60, 61, 9], "labels": [-100] * 6 + [61, 9]},
    ]
    packed = pack_scene(rows)
    assert packed["input_ids"][:3] == [2, 10, 11]
    for index, row in enumerate(rows):
        own = [i for i, segment in enumerate(packed["segments"]) if segment == index]
        tokens = packed["input_ids"][:3] + [packed["input_ids"][i] for i in own]
        assert tokens == row["input_ids"]
        assert [packed["position_ids"][i] for i in own] == list(range(3, len(row["input_ids"])))
        assert packed["labels"][own[0]] == -100  # a remainder's first token is never a target


def test_the_prefix_stops_before_a_rows_first_target():
    """Two rows with one prompt and different answers: each first target is predicted inside its own remainder."""
    rows = [{"input_ids": [2, 5, 6, 7], "labels": [-100, -100, 6, 7]},
            {"input_ids": [2, 5, 6, 8], "labels": [-100, -100, 6, 8]}]  # fmt: skip
    packed = pack_scene(rows)
    assert packed["input_ids"] == [2, 5, 6, 7, 5, 6, 8]
    assert packed["position_ids"] == [0, 1, 2, 3, 1, 2, 3]


def test_sampler_keeps_scenes_together_and_shuffles_them():
    scenes = ["a", "a", "b", "b", "b", "c", "d", "d"]
    sampler = SceneSampler(scenes, seed=3)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(8))
        runs = [scenes[i] for i in order]
        assert [s for i, s in enumerate(runs) if i == 0 or runs[i - 1] != s] == list(dict.fromkeys(runs))  # adjacent
        assert all(order.index(i) < order.index(i + 1) for i in (0, 2, 3, 6))  # in their dataset order
        orders.append(order)
    assert len({tuple(order) for order in orders}) > 1
    sampler.set_epoch(0)
    assert list(sampler) == orders[0]


def test_a_family_without_mask_mapping_is_refused_in_one_line():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64))  # fmt: skip
    with pytest.raises(UsageError, match="scene_packing: false"):
        packing_collator(model, 0)


def test_training_packs_scenes_and_the_recipe_can_turn_it_off(workspace_recipe):
    (recipe,) = parse_recipe(["--config", str(workspace_recipe.path), "--scene_packing", "false"])
    assert recipe.scenes.scene_packing is False
    (recipe,) = parse_recipe(["--config", str(workspace_recipe.path)])
    assert recipe.scenes.scene_packing is True


def test_generated_scenes_pack_one_sequence_each(workspace_recipe, train_rows):
    """The data's own scene column: two scenes of the tiny recipe (scene_size 4) train as two sequences, exactly."""
    rows = train_rows[:8]
    assert len({row["scene"] for row in rows}) == 2
    packed = loss_and_grads(trainer_for(workspace_recipe, rows, True))
    assert packed[2]["input_ids"].shape[0] == 2
    assert_exact(packed, loss_and_grads(trainer_for(workspace_recipe, rows, False)))


def test_qwen3_packed_scenes_match_rows_one_by_one(qwen3_recipe):
    """The second family: Qwen3 takes the mask of its one layer type (`full_attention`) and position_ids."""
    from sft_router.datagen.catalog import load_split

    rows = scene_rows([dict(row) for row in load_split(qwen3_recipe, "train")], (4, 3, 1))
    packed = loss_and_grads(trainer_for(qwen3_recipe, rows, True))
    padded = loss_and_grads(trainer_for(qwen3_recipe, rows, False))
    assert packed[2]["input_ids"].shape[0] == 3 and set(packed[2]["attention_mask"]) == {"full_attention"}
    assert packed[2]["input_ids"].numel() < padded[2]["input_ids"].numel() * 0.7
    assert_exact(packed, padded)
