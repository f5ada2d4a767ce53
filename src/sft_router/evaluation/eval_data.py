"""The rows each evaluated split holds: generated splits from the dataset stage, and the hand-written split.

`eval_splits` in the recipe names the splits `make eval` scores, `test` first (the split the cards headline).
A generated split (`test`, `test_unseen`, `validation`) comes from runs/<name>/dataset/; one the dataset does not
have (`test_unseen` from a generator that makes none) is skipped with a one-line note. `handwritten` comes from
the recipe's `handwritten` JSONL file, written by hand and never generated, one row a line:

    {"id": "hw-001", "lang": "zh", "user": "明早7点叫我", "tools": ["set_alarm", "set_timer"],
     "expected": {"tool_name": "set_alarm", "arguments": {"time": "明早7点"}}}

`tools` names catalog tools (the prompt shows them in that order), `expected` is the call or null for a reply.
Each line is rendered at load time with the recipe's own system prompt and the catalog's tool entries, so the
split tracks the recipe, and is checked first: the tools exist, the call names a shown tool and satisfies its
schema; a line that breaks a rule fails in one line naming it.

Usage: from sft_router.evaluation.eval_data import load_eval_splits; splits = load_eval_splits(recipe)  # {name: rows}
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from sft_router.core.errors import UsageError
from sft_router.core.router_format import load_system_prompt, render_call, render_system_prompt
from sft_router.datagen.catalog import LANGS, Catalog, load_catalog

HEADLINE_SPLIT = "test"
HANDWRITTEN = "handwritten"
GENERATED = ("test", "test_unseen", "test_procedural", "validation", "train")
# The reference of a reply row: the scorer checks only that a reply attempts no call, never its wording.
REPLY_REFERENCE = {"zh": "（回复，不调用工具）", "en": "(a reply, no tool call)"}
FIELDS = {"id", "lang", "user", "tools", "expected"}


def check_split_names(names: list[str]) -> None:
    known = (*GENERATED, HANDWRITTEN)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"eval_splits names '{unknown[0]}'; use {', '.join(known)}")
    if not names or names[0] != HEADLINE_SPLIT or len(set(names)) != len(names):
        raise UsageError(f"eval_splits is {names}; list `test` first (the cards' headline split), each split once")


def load_eval_splits(recipe, notes: list[str] | None = None) -> dict[str, list[dict]]:
    """Rows of every split in `eval_splits`, each cut to `eval_limit`; a generated split the dataset lacks is
    skipped with a note appended to `notes` (and printed)."""
    names = list(recipe.eval.eval_splits)
    check_split_names(names)
    splits = {}
    for name in names:
        rows = load_handwritten(recipe) if name == HANDWRITTEN else _generated(recipe, name)
        if rows is None:
            note = f"eval: split '{name}' is not in {recipe.stage_dir('dataset')} (this generator makes none); skipped"
            print(note)
            (notes if notes is not None else []).append(note)
            continue
        limit = recipe.eval.eval_limit
        splits[name] = rows[:limit] if limit else rows
    return splits


def _generated(recipe, name: str) -> list[dict] | None:
    from datasets import load_from_disk

    path = recipe.stage_dir("dataset") / "hf"
    if not path.is_dir():
        raise UsageError(f"no dataset at {path}: run `make data RECIPE={recipe.path}` first")
    dataset = load_from_disk(str(path))
    if name not in dataset and name == HEADLINE_SPLIT:
        raise UsageError(f"the dataset at {path} has no `test` split: rerun `make data RECIPE={recipe.path}`")
    return list(dataset[name]) if name in dataset else None


def load_handwritten(recipe) -> list[dict]:
    path = recipe.eval.handwritten
    if not path:
        raise UsageError(f"{recipe.path}: eval_splits names `handwritten` but no `handwritten` file is set; set it")
    catalog = load_catalog(recipe.data.catalog)
    return read_handwritten(path, catalog, load_system_prompt(recipe.data.system_prompt))


def read_handwritten(path: str | Path, catalog: Catalog, system_prompt: str) -> list[dict]:
    """The checked, rendered rows of a hand-written JSONL file (see the module docstring for its format)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"hand-written split {path} does not exist: set `handwritten` to an existing JSONL file")
    validators = {
        name: jsonschema.Draft202012Validator({**tool["parameters"], "additionalProperties": False})
        for name, tool in catalog.tools.items()
    }
    rows, ids = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            where = f"{path}:{number}"
            record = _record(line, where)
            where = f"{where} ({record['id']})"
            if record["id"] in ids:
                raise UsageError(f"{where}: id used twice; give every row its own id")
            ids.add(record["id"])
            _check_record(record, catalog, validators, where)
            rows.append(render_handwritten(record, catalog, system_prompt))
    if not rows:
        raise UsageError(f"{path}: no rows; write at least one")
    return rows


def _record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc.msg}); fix the line") from exc
    if not isinstance(record, dict) or set(record) != FIELDS:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise UsageError(f"{where}: has {keys}; give exactly {', '.join(sorted(FIELDS))}")
    return record


def _check_record(record: dict, catalog: Catalog, validators: dict, where: str) -> None:
    if record["lang"] not in LANGS or not isinstance(record["user"], str) or not record["user"].strip():
        raise UsageError(f"{where}: `lang` must be one of {', '.join(LANGS)} and `user` a non-empty message")
    tools = record["tools"]
    unknown = [name for name in tools if name not in catalog.tools] if isinstance(tools, list) else [tools]
    if not tools or unknown or len(set(tools)) != len(tools):
        raise UsageError(f"{where}: `tools` must list distinct catalog tools (bad: {unknown or tools}); fix the list")
    expected = record["expected"]
    if expected is None:
        return
    if not isinstance(expected, dict) or set(expected) != {"tool_name", "arguments"}:
        raise UsageError(f'{where}: `expected` must be null or {{"tool_name": ..., "arguments": {{...}}}}')
    if expected["tool_name"] not in tools:
        raise UsageError(f"{where}: expected tool '{expected['tool_name']}' is not in `tools`; show it or fix it")
    error = next(iter(validators[expected["tool_name"]].iter_errors(expected["arguments"])), None)
    if error is not None:
        raise UsageError(
            f"{where}: arguments {json.dumps(expected['arguments'], ensure_ascii=False)} break the schema of "
            f"'{expected['tool_name']}' ({error.message}); fix the row"
        )


def render_handwritten(record: dict, catalog: Catalog, system_prompt: str) -> dict:
    """A row shaped like a generated one (prompt, completion, kind, user, tools, tool_name, arguments)."""
    expected = record["expected"]
    system = render_system_prompt(system_prompt, [catalog.tools[name] for name in record["tools"]])
    target = render_call(expected["tool_name"], expected["arguments"]) if expected else REPLY_REFERENCE[record["lang"]]
    return {
        "id": record["id"],
        "prompt": [{"role": "system", "content": system}, {"role": "user", "content": record["user"]}],
        "completion": [{"role": "assistant", "content": target}],
        "kind": "call" if expected else "reply",
        "lang": record["lang"],
        "user": record["user"],
        "tools": list(record["tools"]),
        "tool_name": expected["tool_name"] if expected else "",
        "arguments": json.dumps(expected["arguments"], ensure_ascii=False) if expected else "",
    }
