"""Every bad input of issue 13 and its one-line answer: the stage exits 2 with one `error:` line naming the problem
and the fix, and leaves no stage folder behind. The scorer CLI's malformed lines are in test_scorer_cli.py, publish
faults in test_publish.py, kills and undeletable files in test_stages.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, copy_recipe

from sft_router import data, publish, train

CATALOG = ROOT / "recipes/gemma-3-270m-it/catalog.yaml"
SMALL = ["--num_train", "8", "--num_validation", "2", "--num_test", "4"]


def recipe(replace: dict[str, str], folder: str = "tiny") -> list[str]:
    return ["--config", str(copy_recipe(TINY, Path(folder) / "router.yaml", replace).resolve())]


def catalog(change) -> list[str]:
    raw = yaml.safe_load(CATALOG.read_text())
    raw = change(raw) or raw
    Path("catalog.yaml").write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, allow_unicode=True))
    return recipe({"recipes/gemma-3-270m-it/catalog.yaml": str(Path("catalog.yaml").resolve())})


def set_family_text(raw):
    raw["tools"][0]["families"][0]["zh"] = "帮我查一下{date}的日程"


def refuse_mkdir(monkeypatch, code: int, reason: str):
    mkdir = os.mkdir

    def refused(path, *args, **kwargs):
        if "runs" in os.fspath(path):
            raise OSError(code, reason, os.fspath(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)


# (id, stage, argv maker, fault, expected part of the one line)
CASES = [
    ("recipe-yaml-syntax", data, lambda: recipe({"num_train: 96": "num_train: [96"}), None,
     "router.yaml: not valid YAML (line 17, column 15: did not find expected ',' or ']'"),
    ("recipe-not-a-mapping", data, lambda: recipe({"run_name: tiny": "- run_name: tiny"}), None,
     "not valid YAML"),
    ("recipe-a-list", data, lambda: (Path("tiny").mkdir(), Path("tiny/router.yaml").write_text("- a\n- b\n"),
                                      ["--config", "tiny/router.yaml"])[-1], None,
     "tiny/router.yaml: a recipe is a YAML mapping of `key: value` lines"),
    ("config-without-value", data, lambda: ["--config"], None, "--config needs a value: pass --config recipes/"),
    ("config-missing-file", data, lambda: ["--config", "nowhere/router.yaml"], None,
     "recipe nowhere/router.yaml does not exist"),
    ("wrong-type-int", data, lambda: recipe({"num_train: 96": "num_train: abc"}), None,
     "recipe key 'num_train' is 'abc', not a whole number; fix its value"),
    ("wrong-type-list", data, lambda: recipe({"num_train: 96": "num_train: [1, 2]"}), None,
     "recipe key 'num_train' is a list; give it one value"),
    ("wrong-type-float-for-int", data, lambda: recipe({"num_train: 96": "num_train: 9.5"}), None,
     "recipe key 'num_train' is 9.5, not a whole number"),
    ("wrong-type-number", train, lambda: recipe({"learning_rate: 5.0e-3": "learning_rate: fast"}), None,
     "recipe key 'learning_rate' is 'fast', not a number"),
    ("wrong-type-bool", train, lambda: recipe({"use_peft: true": "use_peft: maybe"}), None,
     "recipe key 'use_peft' is 'maybe', not true or false"),
    ("wrong-type-mapping", data, lambda: recipe({"max_distractors: 2": "max_distractors: {a: 1}"}), None,
     "recipe key 'max_distractors' is {'a': 1}, not a whole number"),
    ("flag-wrong-type", data, lambda: ["--config", TINY, "--num_train", "abc"], None,
     "command line: argument --num_train/--num-train: invalid int value: 'abc'"),
    ("run-name-of-another-folder", data, lambda: recipe({}, folder="x"), None,
     "run_name 'tiny' is not the recipe folder's name 'x'; set `run_name: x`"),
    ("run-name-a-number", data, lambda: recipe({"run_name: tiny": "run_name: 123"}), None,
     "set `run_name` to the recipe folder's name (tiny;"),
    ("num-train-zero", data, lambda: recipe({"num_train: 96": "num_train: 0"}), None,
     "`num_train` is 0; set it to at least 1"),
    ("num-test-zero", data, lambda: recipe({"num_test: 24": "num_test: 0"}), None,
     "`num_test` is 0; set it to at least 1"),
    ("missing-chat-template", data, lambda: recipe({"recipes/gemma-3-270m-it/chat_template.jinja": "gone.jinja"}),
     None, "chat_template_path gone.jinja does not exist; point it at a .jinja file"),
    ("bad-model-repo", publish, lambda: ["--config", TINY, "--model_repo", "bad name!"], None,
     "'your-namespace/bad name!' is not a valid Hub repo id for the model repo"),
    ("read-only-runs", data, lambda: ["--config", TINY, *SMALL],
     lambda mp: refuse_mkdir(mp, errno.EROFS, "Read-only file system"),
     "cannot write runs/tiny (Read-only file system): the file system is read-only"),
    ("runs-not-writable", data, lambda: ["--config", TINY, *SMALL],
     lambda mp: refuse_mkdir(mp, errno.EACCES, "Permission denied"),
     "cannot write runs/tiny (Permission denied): make it writable for this user"),
    ("catalog-zh-a-string", data, lambda: catalog(set_family_text), None,
     "catalog.yaml: `tools[0].families[0].zh` is '帮我查一下{date}的日程', a string; it must be a list"),
    ("catalog-a-list", data, lambda: catalog(lambda raw: [raw]), None,
     "catalog.yaml: the catalog is [{"),
    ("catalog-tools-a-mapping", data, lambda: catalog(lambda raw: raw.update(tools={"t": raw["tools"][0]})), None,
     "catalog.yaml: `tools` is {'t': {"),
    ("catalog-name-a-number", data, lambda: catalog(lambda raw: raw["tools"][1].update(name=123)), None,
     "catalog.yaml: `tools[1].name` is 123, a whole number; it must be a string"),
    ("catalog-pool-entry", data, lambda: catalog(lambda raw: raw["slots"]["date"]["zh"].append({"text": "x"})), None,
     "pool 'date': entry {'text': 'x'} must be a plain value or have exactly `text` and `value`"),
    ("catalog-no-call-item", data, lambda: catalog(lambda raw: raw["no_call"]["chat"].append("hi")), None,
     "is 'hi', a string; it must be a mapping"),
    ("catalog-yaml-syntax", data, lambda: catalog(lambda raw: CATALOG.read_text().replace("tools:\n", "tools: [\n")),
     None, "catalog.yaml: not valid YAML (line "),
    ("catalog-missing", data, lambda: recipe({"recipes/gemma-3-270m-it/catalog.yaml": "none.yaml"}), None,
     "catalog none.yaml does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("stage", "argv", "fault", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_answered_in_one_line(workspace, monkeypatch, capsys, stage, argv, fault, message):
    args = argv()
    if fault:
        fault(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        stage.main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0], err[0]
    assert not list(workspace.glob("runs/*/*/manifest.json"))  # nothing half-done that looks finished


def test_a_full_disk_is_one_line_and_keeps_the_finished_stage(workspace, monkeypatch, capsys):
    data.main(["--config", TINY, *SMALL])
    capsys.readouterr()
    finished = {p: p.read_bytes() for p in (workspace / "runs/tiny/dataset").rglob("*") if p.is_file()}

    def disk_full(splits, out, *rest):
        (out / "train.jsonl").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "hf"))

    monkeypatch.setattr(data, "write_dataset", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        data.main(["--config", TINY, *SMALL, "--dataset_seed", "7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "(No space left on device): free some disk space" in err[0]
    assert {p: p.read_bytes() for p in (workspace / "runs/tiny/dataset").rglob("*") if p.is_file()} == finished
    assert [p.name for p in (workspace / "runs/tiny").iterdir()] == ["dataset"]  # the half-written folder is gone
