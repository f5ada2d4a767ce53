"""Stages that cannot lose a finished result, and stale means rerun: atomic replacement, leftovers of dead runs,
incomplete checkpoints, the per-stage input fingerprints that make compares, and the Makefile wired as the stage
registry (sft_router.core.stages) says."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, copy_recipe

from sft_router import train
from sft_router.core import run_folder as run
from sft_router.core.config import parse_recipe
from sft_router.core.run_folder import fingerprint, stage_output, write_fingerprints
from sft_router.core.stages import COMMANDS, STAGES


@pytest.fixture
def recipe(workspace):
    return parse_recipe(["--config", TINY])[0]


def finish(recipe, stage: str, files: dict[str, str]) -> Path:
    with stage_output(recipe, stage) as (out, _):
        for name, text in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
    return recipe.stage_dir(stage)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failing_stage_keeps_the_finished_one(recipe):
    final = finish(recipe, "dataset", {"rows.txt": "old"})
    with pytest.raises(RuntimeError), stage_output(recipe, "dataset") as (out, _):
        (out / "rows.txt").write_text("half")
        raise RuntimeError("killed midway")
    assert (final / "rows.txt").read_text() == "old" and (final / "manifest.json").is_file()
    assert sorted(p.name for p in final.parent.iterdir()) == ["dataset"]


def test_an_undeletable_file_in_the_old_stage_loses_nothing(recipe, monkeypatch, capsys):
    final = finish(recipe, "dataset", {"stuck/rows.txt": "old"})
    unlink = os.unlink

    def refuse(path, *args, **kwargs):  # the file system refuses to delete this one file
        if os.fspath(path) == "rows.txt":
            raise PermissionError(1, "Operation not permitted", "rows.txt")
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse)
    finish(recipe, "dataset", {"rows.txt": "new"})
    assert (final / "rows.txt").read_text() == "new" and not (final / "stuck").exists()
    assert json.loads((final / "manifest.json").read_text())["stage"] == "dataset"
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("note: could not remove") and "by hand" in note[0]
    assert [p.name for p in final.parent.glob(".dataset.old-*")] == [f".dataset.old-{os.getpid()}"]
    monkeypatch.setattr(os, "unlink", unlink)
    finish(recipe, "dataset", {"rows.txt": "newer"})  # the next run of the stage removes the leftover
    assert sorted(p.name for p in final.parent.iterdir()) == ["dataset"]


def test_leftovers_of_dead_runs_are_cleaned_and_a_stage_moved_aside_comes_back(recipe):
    final = finish(recipe, "adapter", {"weights": "finished"})
    pid = dead_pid()
    (final.parent / f".adapter.tmp-{pid}").mkdir()
    (final.parent / f".hub.tmp-{pid}").mkdir()  # another stage's leftover waits for that stage
    final.rename(final.parent / f".adapter.old-{pid}")  # killed between moving the old one aside and the new one in
    run.clean_leftovers(final)
    assert (final / "weights").read_text() == "finished"
    assert sorted(p.name for p in final.parent.iterdir()) == [f".hub.tmp-{pid}", "adapter"]


def test_a_live_runs_folders_are_left_alone(recipe):
    final = finish(recipe, "gguf", {"model.gguf": "x"})
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (final.parent / f".gguf.tmp-{live.pid}").mkdir()
        run.clean_leftovers(final)
        assert (final.parent / f".gguf.tmp-{live.pid}").is_dir()
    finally:
        live.kill()
        live.wait()


def checkpoint(folder: Path, step: int, files: tuple[str, ...]) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text("{}")
    return path


def test_resume_skips_checkpoints_a_kill_interrupted(tmp_path, capsys):
    complete = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt")
    checkpoint(tmp_path, 2, complete)
    checkpoint(tmp_path, 10, complete)
    no_state = checkpoint(tmp_path, 12, ("adapter_model.safetensors",))  # killed before trainer_state.json
    no_weights = checkpoint(tmp_path, 14, ("trainer_state.json",))
    empty = checkpoint(tmp_path, 16, ())
    assert train.last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    notes = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[3] for line in notes] == [str(empty), str(no_weights), str(no_state)]
    assert all(line.startswith("train: skipping incomplete") for line in notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-2"]
    assert train.last_checkpoint(str(tmp_path / "nothing")) is None


def changed(workspace: Path, replace: dict[str, str]):
    path = copy_recipe(TINY, workspace / "tiny/router.yaml", replace)
    return parse_recipe(["--config", str(path)])[0]


BELOW = {"dataset": {"dataset", "adapter", "merged", "gguf", "eval", "card", "hub-data", "hub"},
         "adapter": {"adapter", "merged", "gguf", "eval", "card", "hub"}}  # fmt: skip


@pytest.mark.parametrize(
    ("replace", "rerun"),
    [
        ({"learning_rate: 5.0e-3": "learning_rate: 1.0e-3"}, BELOW["adapter"]),
        ({"num_train: 96": "num_train: 95"}, BELOW["dataset"]),
        ({"eval_batch_size: 8": "eval_batch_size: 4"}, {"eval", "card", "hub"}),
        ({"gguf_outtypes: [q8_0]": "gguf_outtypes: [f16]"}, {"gguf", "eval", "card", "hub"}),
        ({"max_length: 2048": "max_length: 1536"}, BELOW["dataset"]),  # every row is held to it, and the n_ctx
        ({"bfcl_max_new_tokens: 16": "bfcl_max_new_tokens: 24"}, {"gguf", "eval", "card", "hub"}),  # the n_ctx
        ({"model_repo: tiny-router": "model_repo: other-router"}, {"card", "hub", "hub-data"}),
        ({"# Tiny CPU recipe": "# A comment"}, set()),
    ],
    ids=[
        "learning_rate",
        "num_train",
        "eval_batch_size",
        "gguf_outtypes",
        "max_length",
        "bfcl_max_new_tokens",
        "model_repo",
        "comment",
    ],
)
def test_editing_what_a_stage_reads_changes_its_fingerprint_and_those_below_only(workspace, replace, rerun):
    before, after = changed(workspace, {}), changed(workspace, replace)
    assert {stage for stage in STAGES if fingerprint(before, stage) != fingerprint(after, stage)} == rerun


def test_editing_the_catalog_file_reruns_the_dataset_and_everything_below(workspace):
    catalog = workspace / "catalog.yaml"
    catalog.write_text((ROOT / "recipes/gemma-3-270m-it/catalog.yaml").read_text())
    recipe = changed(workspace, {"recipes/gemma-3-270m-it/catalog.yaml": str(catalog)})
    before = {stage: fingerprint(recipe, stage) for stage in STAGES}
    catalog.write_text(catalog.read_text() + "\n# one more line\n")
    assert {stage for stage in STAGES if fingerprint(recipe, stage) != before[stage]} == BELOW["dataset"]


def test_fingerprint_files_change_only_with_their_inputs_and_date_back_to_a_matching_stage(workspace):
    recipe = changed(workspace, {})
    manifest = finish(recipe, "dataset", {"rows.txt": "x"}) / "manifest.json"
    made = time.time() - 3600
    os.utime(manifest, (made, made))  # a run made an hour ago, before the fingerprint files existed
    assert write_fingerprints(recipe) == []
    inputs = recipe.run_dir / ".inputs"
    assert sorted(p.stem for p in inputs.iterdir()) == sorted(STAGES)
    assert (inputs / "dataset.sha256").stat().st_mtime_ns == manifest.stat().st_mtime_ns  # make: current
    times = {p.name: p.stat().st_mtime_ns for p in inputs.iterdir()}
    write_fingerprints(recipe)
    assert {p.name: p.stat().st_mtime_ns for p in inputs.iterdir()} == times  # unchanged inputs: untouched
    edited = changed(workspace, {"num_train: 96": "num_train: 90"})
    assert write_fingerprints(edited) == [inputs / "dataset.sha256"]
    assert (inputs / "dataset.sha256").stat().st_mtime > manifest.stat().st_mtime  # make sees it stale
    assert (inputs / "dataset.sha256").read_text() == fingerprint(edited, "dataset") + "\n"


def test_a_finished_adapter_of_other_inputs_is_trained_again(workspace, monkeypatch, capsys):
    recipe = changed(workspace, {})
    finish(recipe, "adapter", {"adapter_model.safetensors": "old"})
    old_checkpoint = checkpoint(Path(recipe.training.output_dir), 6, ("trainer_state.json", "model.safetensors"))

    class Trained(Exception):
        pass

    def trains(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(train, "build_trainer", trains)  # stands for loading the model: it says whether train ran
    train.main(["--config", str(recipe.path)])
    assert "is finished and made from these inputs" in capsys.readouterr().out
    edited = changed(workspace, {"learning_rate: 5.0e-3": "learning_rate: 1.0e-3"})
    with pytest.raises(Trained):
        train.main(["--config", str(edited.path)])
    train.checkpoints_for(edited)  # what train() does before resuming: checkpoints of other inputs go
    assert not old_checkpoint.exists() and "other inputs" in capsys.readouterr().out


def make(workspace: Path, target: str) -> list[str]:
    """`make <target>` for the recipe tiny/router.yaml with stand-in stages; returns the stages it ran."""
    stand_in = workspace / "stage.sh"
    stand_in.write_text(
        f'#!/bin/sh\nif [ "$2" = sft_router.core.run_folder ]; then exec {sys.executable} "$@"; fi\n'
        'stage=$(echo "$2" | sed "s/sft_router.//; s/^train$/adapter/; s/^data$/dataset/")\n'
        'echo "$stage" >> stages.log\nmkdir -p runs/tiny/$stage\n'
        'printf \'{"fingerprint": "%s"}\' $(cat runs/tiny/.inputs/$stage.sha256) > runs/tiny/$stage/manifest.json\n'
    )
    stand_in.chmod(0o755)
    (workspace / "stages.log").write_text("")
    skip = str(ROOT / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = ["make", "-f", str(ROOT / "Makefile"), target, "RECIPE=tiny/router.yaml", f"PY={stand_in}",
               f"VENV={skip}", "-o", skip]  # fmt: skip
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return (workspace / "stages.log").read_text().split()


def test_make_reruns_a_stage_whose_inputs_changed_and_nothing_else(workspace):
    recipe = changed(workspace, {})
    finish(recipe, "dataset", {"rows.txt": "x"})
    finish(recipe, "adapter", {"adapter_model.safetensors": "x"})
    # (that make reruns nothing when nothing changed: the `published` fixture of test_publish.py)
    changed(workspace, {"learning_rate: 5.0e-3": "learning_rate: 1.0e-3", "eval_batch_size: 8": "eval_batch_size: 4"})
    assert make(workspace, "train") == ["adapter"]  # a training key: train again, not the data; an eval key: not yet
    assert json.loads((workspace / "runs/tiny/adapter/manifest.json").read_text())["fingerprint"] == fingerprint(
        parse_recipe(["--config", "tiny/router.yaml"])[0], "adapter"
    )


@dataclasses.dataclass
class Rule:
    prerequisites: list[str]
    order_only: list[str]
    recipe: list[str]


def makefile_rules(text: str) -> dict[str, Rule]:
    """Each target's prerequisites, order-only prerequisites and recipe lines, with make's variables unexpanded."""
    rules: dict[str, Rule] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.recipe.append(line.strip())
            continue
        match = re.match(r"([^\s#:=][^:=]*):(?!=)(.*)", line)
        current = None
        if match and match[1].strip() != ".PHONY":
            normal, _, order_only = match[2].split(";")[0].partition("|")
            current = Rule(normal.split(), order_only.split(), [])
            rules.update({target: current for target in match[1].split()})
    return rules


def launched(line: str) -> str:
    """The train line's accelerate variant, read as the `$(PY) -m` line it falls back to (the same module)."""
    return re.sub(
        r"\$\(if \$\(ACCELERATE_CONFIG\),[^,]* -m (sft_router\.[\w.]+),\$\(PY\) -m \1\)", r"$(PY) -m \1", line
    )


def stage_misfits(rules: dict[str, Rule], stage) -> list[str]:
    output = f"$(R)/{stage.folder}/manifest.json"
    if stage.target not in rules or rules[stage.target].prerequisites != [output] or output not in rules:
        return [f"{stage.folder}: `make {stage.target}` is not `{stage.target}: {output}` with a rule for {output}"]
    rule, misfits = rules[output], []
    command = " ".join(("$(PY) -m", f"sft_router.{stage.module}", "--config $(RECIPE)", *stage.args))
    if [launched(line) for line in rule.recipe] != [command]:
        misfits.append(f"{stage.folder}: recipe {rule.recipe}, the registry says {command}")
    # A stage that reads no other stage waits for the venv itself; the others have it through what they read.
    wanted = {f"$(IN)/{stage.folder}.sha256", *(f"$(R)/{name}/manifest.json" for name in stage.upstream)}
    wanted |= set() if stage.upstream else {"$(VENV)"}
    if sorted(rule.prerequisites) != sorted(wanted):
        misfits.append(
            f"{stage.folder}: prerequisites {sorted(rule.prerequisites)}, the registry says {sorted(wanted)}"
        )
    if rule.order_only != (["$(RUNTIME)"] if stage.runtime else []):
        misfits.append(f"{stage.folder}: order-only {rule.order_only}, the registry says runtime={stage.runtime}")
    return misfits


def command_misfits(rules: dict[str, Rule], command) -> list[str]:
    """The target's rule and those of its prerequisites that run the same module (`bfcl` writes summary.json)."""
    if command.target not in rules:
        return [f"{command.name}: no `make {command.target}`"]
    first = rules[command.target]
    chain = [first, *(rules[p] for p in first.prerequisites if p in rules and runs(rules[p], command.module))]
    prerequisites = {p for rule in chain for p in rule.prerequisites}
    found = {
        "runs": any(runs(rule, command.module) for rule in chain),
        "output": command.output is None or f"$(R)/{command.output}" in first.prerequisites,
        "upstream": {p for p in prerequisites if re.fullmatch(r"\$\(R\)/[^/]+/manifest\.json", p)},
        "fingerprints": {p for p in prerequisites if p.startswith("$(IN)/")},
        "runtime": any("$(RUNTIME)" in rule.order_only for rule in chain),
    }
    wanted = {
        "runs": True,
        "output": True,
        "upstream": {f"$(R)/{name}/manifest.json" for name in command.upstream},
        "fingerprints": {f"$(IN)/{command.part_of}.sha256"} if command.part_of else set(),
        "runtime": command.runtime,
    }
    return [
        f"{command.name}: {key} is {found[key]}, the registry says {wanted[key]}"
        for key in found
        if found[key] != wanted[key]
    ]


def runs(rule: Rule, module: str) -> bool:
    return any(re.search(rf"\$\(PY\) -m sft_router\.{re.escape(module)}\b", line) for line in rule.recipe)


def makefile_misfits(text: str) -> list[str]:
    """Where the Makefile and the stage registry disagree, one line each; [] when they agree."""
    rules = makefile_rules(text)
    misfits = [m for stage in STAGES.values() for m in stage_misfits(rules, stage)]
    misfits += [m for command in COMMANDS for m in command_misfits(rules, command)]
    run_modules = {
        m for rule in rules.values() for line in rule.recipe for m in re.findall(r"-m sft_router\.([\w.]+)", line)
    }
    registered = {stage.module for stage in STAGES.values()} | {command.module for command in COMMANDS}
    misfits += [
        f"`python -m sft_router.{m}` runs in the Makefile but is not registered"
        for m in sorted(run_modules - registered)
    ]
    folders = {match[1] for target in rules if (match := re.fullmatch(r"\$\(R\)/(.+)/manifest\.json", target))}
    misfits += [
        f"the Makefile writes $(R)/{f}/manifest.json, no registered stage" for f in sorted(folders - set(STAGES))
    ]
    return misfits


MAKEFILE = (ROOT / "Makefile").read_text()


def test_the_makefile_wires_every_stage_and_command_as_the_registry_says():
    assert makefile_misfits(MAKEFILE) == []


EVAL_RULE = "$(R)/eval/manifest.json: $(IN)/eval.sha256 $(R)/adapter/manifest.json"
EXPORT_STAGE = (
    "export: $(R)/export/manifest.json\n$(R)/export/manifest.json: $(IN)/export.sha256\n\t$(PY) -m sft_router.export"
)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        (f"{EVAL_RULE} $(R)/gguf/manifest.json", EVAL_RULE, "eval: prerequisites"),
        (
            "gguf/manifest.json\n\t$(PY) -m sft_router.card",
            "gguf/manifest.json | $(RUNTIME)\n\t$(PY) -m sft_router.card",
            "card: order-only",
        ),
        ("-m sft_router.merge --config $(RECIPE)", "-m sft_router.merge --config $(RECIPE) --fast", "merged: recipe"),
        ("\nclean:", f"\n{EXPORT_STAGE} --config $(RECIPE)\n\nclean:", "sft_router.export` runs"),
        ("lookup: $(R)/dataset/manifest.json", "lookup:", "lookup: upstream"),
        ("\nbfcl: $(R)/eval/bfcl/summary.json", "\nbfcl-scores: $(R)/eval/bfcl/summary.json", "no `make bfcl`"),
    ],
    ids=[
        "a prerequisite dropped",
        "llama.cpp added",
        "another command",
        "a new stage",
        "lookup's input",
        "a renamed target",
    ],
)
def test_a_makefile_that_parts_from_the_registry_is_named(old, new, named):
    assert MAKEFILE.count(old) == 1
    misfits = makefile_misfits(MAKEFILE.replace(old, new))
    assert any(named in misfit for misfit in misfits), misfits
