"""Every recipe parses with the pinned libraries; a misspelled key fails in every stage, naming the key."""

from __future__ import annotations

import pytest
from conftest import ROOT, TINY, copy_recipe

from sft_router import data, evaluate, train
from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError

RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").glob("*/router.yaml"))


@pytest.mark.parametrize("path", RECIPES)
def test_every_recipe_parses_and_names_its_run_after_its_folder(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    (recipe,) = parse_recipe(["--config", path])
    assert recipe.name == recipe.path.parent.name  # the Makefile derives runs/<name>/ from the folder
    assert recipe.training.output_dir == f"runs/{recipe.name}/train"
    assert (ROOT / recipe.training.chat_template_path).is_file()


def test_command_line_flag_overrides_recipe(monkeypatch):
    monkeypatch.chdir(ROOT)
    (recipe,) = parse_recipe(["--config", TINY, "--learning_rate", "0.123", "--num_train", "7"])
    assert recipe.training.learning_rate == 0.123
    assert recipe.data.num_train == 7


@pytest.mark.parametrize("stage", [data, train, evaluate])
def test_misspelled_key_fails_in_each_stage_naming_it(stage, workspace, capsys):
    bad = copy_recipe(TINY, workspace / "tiny/bad.yaml", {"learning_rate:": "learnin_rate:"})
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["--config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown recipe key 'learnin_rate'" in err[0] and "learning_rate" in err[0]
    assert not (workspace / "runs").exists()  # nothing half-written


def test_key_dropped_by_transformers_fails_before_any_model_loads(workspace):
    bad = copy_recipe(
        TINY, workspace / "tiny/old.yaml", {"lr_scheduler_type:": "warmup_ratio: 0.1\nlr_scheduler_type:"}
    )
    with pytest.raises(UsageError, match="warmup_ratio.*warmup_steps"):
        parse_recipe(["--config", str(bad)])


def test_unknown_command_line_flag_is_named(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UsageError, match="'lerning_rate'"):
        parse_recipe(["--config", TINY, "--lerning_rate", "1"])


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True),
                                             ({"avx2", "avx512f"}, False)])  # fmt: skip
def test_a_cpu_recipe_trains_in_bf16_only_where_the_cpu_has_bf16_units(flags, expected, monkeypatch):
    import torch

    from sft_router.core import config

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config, "cpu_flags", lambda: flags)
    (laptop,) = parse_recipe(["--config", "recipes/gemma-3-270m-laptop/router.yaml"])
    assert laptop.training.bf16 is expected and laptop.training.bf16_full_eval is False
    for path in (TINY, "recipes/gemma-3-270m-demo/router.yaml", "recipes/gemma-3-270m-it/router.yaml"):
        (recipe,) = parse_recipe(["--config", path])  # no `bf16: true` with `use_cpu: true`: fp32 on any CPU
        assert recipe.training.bf16 is False, path
