"""Training runs: resume reproduces an uninterrupted run, a finished run is kept, the report is written,
full fine-tuning works by one recipe switch, and a key TRL renamed fails before any model loads."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest
import torch
from conftest import TINY, copy_recipe, make_workspace
from test_train_loss import short_prompt_recipe

from sft_router import data, merge, train
from sft_router.core.config import parse_recipe

STEPS = ["--max_steps", "4", "--save_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2"]
ROWS = ["--num_train", "8", "--num_validation", "1", "--num_test", "1"]


class Interrupted(Exception):
    """Stands for a killed job: raised in the middle of writing the checkpoint of `step`."""


@pytest.fixture
def in_folder(tmp_path):
    """Run a function inside a fresh workspace folder, returning to the old working folder after it."""

    def run(name: str, function):
        ws = make_workspace(tmp_path / name)
        old = os.getcwd()
        os.chdir(ws)
        try:
            return function(ws)
        finally:
            os.chdir(old)

    return run


def adapter_tensors(ws) -> dict:
    from safetensors.torch import load_file

    return load_file(ws / "runs/tiny/adapter/adapter_model.safetensors")


def manifest(ws, stage: str = "adapter") -> dict:
    return json.loads((ws / f"runs/tiny/{stage}/manifest.json").read_text())


def uninterrupted(ws):
    argv = ["--config", str(short_prompt_recipe(ws)), *STEPS]
    data.main([*argv, *ROWS])
    train.main(argv)
    return argv


def killed_while_saving(step: int):
    """Stands for a kill during the checkpoint of `step`: its weights and optimizer are written, its state is not."""
    from transformers.trainer_callback import TrainerState

    save = TrainerState.save_to_json

    def save_or_die(self, path):
        if self.global_step == step:
            raise Interrupted(step)
        return save(self, path)

    return mock.patch.object(TrainerState, "save_to_json", save_or_die)


def interrupted_then_resumed(ws):
    argv = ["--config", str(short_prompt_recipe(ws)), *STEPS]
    data.main([*argv, *ROWS])
    (recipe,) = parse_recipe(argv)
    with pytest.raises(Interrupted), killed_while_saving(4):
        train.train(recipe)
    checkpoints = ws / "runs/tiny/train"
    assert (checkpoints / "checkpoint-2/trainer_state.json").is_file() and not (ws / "runs/tiny/adapter").exists()
    assert (checkpoints / "checkpoint-4").is_dir() and not (checkpoints / "checkpoint-4/trainer_state.json").exists()
    train.main(argv)  # skips the incomplete checkpoint-4 with a note, resumes from checkpoint-2


def test_resumed_run_gives_the_uninterrupted_runs_adapter(in_folder):
    in_folder("straight", uninterrupted)
    in_folder("resumed", interrupted_then_resumed)
    straight, resumed = in_folder("straight", adapter_tensors), in_folder("resumed", adapter_tensors)
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-5), name
    assert any(t.abs().sum() > 0 for name, t in straight.items() if "lora_B" in name)
    assert in_folder("resumed", manifest)["resumed_from"].endswith("checkpoint-2")
    assert in_folder("straight", manifest)["resumed_from"] is None
    history = {name: in_folder(name, manifest)["log_history"] for name in ("straight", "resumed")}
    steps = {name: [e["step"] for e in entries if "loss" in e] for name, entries in history.items()}
    losses = {name: [e["loss"] for e in entries if "loss" in e] for name, entries in history.items()}
    assert steps["straight"] == steps["resumed"] == [1, 2, 3, 4]  # the resumed history includes the first half
    assert losses["resumed"] == pytest.approx(losses["straight"], abs=1e-4)


def test_finished_run_is_not_retrained_and_carries_its_report(in_folder, monkeypatch, capsys):
    argv = in_folder("done", uninterrupted)
    before = in_folder("done", lambda ws: (ws / "runs/tiny/adapter/manifest.json").read_bytes())

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train, "build_trainer", must_not_train)
    in_folder("done", lambda ws: train.main(argv))
    assert "is finished" in capsys.readouterr().out
    assert in_folder("done", lambda ws: (ws / "runs/tiny/adapter/manifest.json").read_bytes()) == before
    report = in_folder("done", lambda ws: ws / "runs/tiny/adapter")
    assert (report / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / "training_curves.png").stat().st_size > 10_000
    results = json.loads((report / "train_results.json").read_text())
    assert results["train_loss"] > 0 and results["epoch"] > 0
    facts = in_folder("done", manifest)
    assert facts["world_size"] == 1 and facts["full_fine_tuning"] is False
    assert [e["learning_rate"] for e in facts["log_history"] if "learning_rate" in e] == [5.0e-3] * 4


def test_progress_bar_stays_on():
    (recipe,) = parse_recipe(["--config", TINY])
    assert recipe.training.disable_tqdm is False


def test_full_fine_tuning_by_one_switch_trains_and_merge_saves_it(in_folder):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sft_router.modeling.base_models import resolve_base_model

    def full_run(ws):
        recipe = short_prompt_recipe(ws, {"use_peft: true": "use_peft: false"})
        argv = ["--config", str(recipe), *STEPS, "--max_steps", "2"]
        data.main([*argv, *ROWS])
        train.main(argv)
        merge.main(argv)
        return ws / "runs/tiny"

    run = in_folder("full", full_run)
    assert not (run / "adapter/adapter_config.json").exists() and manifest(run.parents[1])["full_fine_tuning"]
    trained, merged = load_file(run / "adapter/model.safetensors"), load_file(run / "merged/model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(resolve_base_model("sft-router/tiny-gemma3")).state_dict()
    assert trained.keys() == merged.keys()
    assert all(torch.equal(trained[name], merged[name]) for name in trained)
    moved = [name for name in trained if not torch.equal(trained[name], base[name])]
    assert any("q_proj" in name for name in moved) and any("embed_tokens" in name for name in moved)
    assert (run / "merged/tokenizer.model").is_file()


@pytest.mark.parametrize(
    ("line", "renamed", "hint"),
    [("max_length: 2048", "max_seq_length: 2048", "max_length"), ("seed: 42", "seed: 42\nwarmup_ratio: 0.1", "")],
)
def test_a_key_trl_renamed_or_dropped_fails_before_any_model_loads(
    line, renamed, hint, workspace, monkeypatch, capsys
):
    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded for a recipe with a bad key")

    monkeypatch.setattr(train, "load_base_model", must_not_load)
    bad = copy_recipe(TINY, workspace / "tiny/old.yaml", {line: renamed})
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(bad)])
    key = renamed.splitlines()[-1].split(":")[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and f"unknown recipe key '{key}'" in err[0]
    assert hint in err[0] and not (workspace / "runs").exists()
