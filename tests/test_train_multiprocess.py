"""`accelerate launch` with two CPU processes: both train (DDP over gloo), one writes the adapter, loss falls."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from test_train_loss import short_prompt_recipe

from sft_router import data


def test_two_processes_write_the_adapter_once_and_loss_falls(workspace):
    recipe = short_prompt_recipe(workspace)
    data.main(["--config", str(recipe), "--num_train", "16", "--num_validation", "1", "--num_test", "1"])
    flags = ["--max_steps", "6", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_steps", "3"]
    # `--cpu` alone starts one process (several need mpirun); `--multi_gpu` starts them through torchrun, and
    # the recipe's `use_cpu: true` makes accelerate join them over gloo on the CPU (MULTI_CPU)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, "-m", "sft_router.train", "--config", str(recipe), *flags],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("train: adapter written to") == 1  # printed by the main process only
    run = workspace / "runs/tiny"
    facts = json.loads((run / "adapter/manifest.json").read_text())
    assert facts["world_size"] == 2 and (run / "adapter/adapter_model.safetensors").is_file()
    assert not list(run.glob(".*.tmp-*"))  # no second, half-written stage folder
    losses = [entry["loss"] for entry in facts["log_history"] if "loss" in entry]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])
