"""Build the router dataset from a recipe's tool catalog: prompts like production, exact targets, leak-free splits.

Each row is a TRL conversational prompt-completion pair: the system prompt listing the shown tools
(the seed's format) and the user message, then the target, either one JSON tool call or a reply, labelled by the
rules written at the top of the catalog. Rows come in scenes (sft_router.datagen.scenes): `scene_size` requests of
mixed kinds against one system prompt and tool list, a scene's rows together and named by their `scene` column. Train,
validation and test use disjoint paraphrase families (the last fifth of each tool's families is test, the one
before them validation) and disjoint no-call items; a third of each value pool beyond its most common entries never
appears in train; the catalog's `unseen_tools` are left out of train, validation and test and make up the
`test_unseen` split; a share of train rows calls procedurally generated tools. `function_share` of train, validation and test rows are
scenes of BFCL-style functions (sft_router.datagen.functions: typed arguments in English prose), the other rows keeping
the catalog's mix; the `test_procedural` split calls only functions of domains no other split shows.
Messages get seeded noise (typos, fillers, politeness, curt forms, context, mixed languages, numbers as words,
corrections) at the recipe's rates. Every row is checked (schema, tool in prompt, replies, no leak, its tokens under
the recipe's tokenizer within `max_length`) before anything is written, and the same recipe and seed give the same
bytes.

Usage: python -m sft_router.data --config recipes/gemma-3-270m-it/router.yaml   (writes runs/<name>/dataset/)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError, one_line_errors
from sft_router.core.router_format import (
    load_system_prompt,
    tools_in_prompt,
)
from sft_router.core.run_folder import stage_output
from sft_router.datagen.catalog import (
    ARGUMENT_TYPES,
    CALL_KINDS,
    KINDS,
    LANGS,
    NO_CALL_KINDS,
    SPLITS,
    Catalog,
    load_catalog,
)
from sft_router.datagen.checks import TrainMessages, assert_no_leaks, check_leaks, check_rows
from sft_router.datagen.functions import FAMILY as FUNCTION_FAMILY
from sft_router.datagen.functions import load_functions
from sft_router.datagen.generator import Generator
from sft_router.datagen.noise import RULES
from sft_router.modeling.context_length import check_row_lengths

RATES = (
    "no_call_share",
    "procedural_share",
    "correction_rate",
    "function_share",
    "function_mask_rate",
    *(f"noise_{rule}" for rule in RULES),
)


def _check_mix(args) -> None:
    for name in RATES:
        if not 0 <= getattr(args, name) <= 1:
            raise UsageError(f"{name} is {getattr(args, name)}; set it between 0 and 1")
    for name in (
        "num_train",
        "num_validation",
        "num_test",
        "num_test_unseen",
        "num_test_procedural",
        "max_distractors",
    ):
        if getattr(args, name) < 0:
            raise UsageError(f"{name} is {getattr(args, name)}; set it to 0 or more")
    if args.min_tools < 1:
        raise UsageError(f"min_tools is {args.min_tools}; set it to 1 or more")
    if args.scene_size < 1:
        raise UsageError(f"scene_size is {args.scene_size}; set it to 1 or more (1: a tool list per row)")


def _check_catalog_for(args, catalog: Catalog) -> None:
    if args.num_test_unseen and not catalog.unseen_tools:
        raise UsageError(
            f"{catalog.path}: no `unseen_tools` for the {args.num_test_unseen} test_unseen rows; "
            "list the tools to hold out, or set num_test_unseen: 0"
        )
    if args.procedural_share and not catalog.procedural:
        raise UsageError(
            f"{catalog.path}: no `procedural` section for procedural_share {args.procedural_share}; "
            "add one, or set procedural_share: 0"
        )
    if (args.function_share or args.num_test_procedural) and not args.functions:
        raise UsageError(
            f"function_share {args.function_share} and num_test_procedural {args.num_test_procedural} "
            "need a `functions` spec; set `functions`, or set both to 0"
        )


def build_splits(recipe, catalog: Catalog | None = None, applied: dict | None = None) -> dict[str, list[dict]]:
    """Generate every split and check every row and every split boundary; raises before anything is written.
    `applied`, if given, receives per split how often each noise rule fired."""
    args = recipe.data
    _check_mix(args)
    catalog = catalog or load_catalog(args.catalog)
    _check_catalog_for(args, catalog)
    system_prompt = load_system_prompt(args.system_prompt)
    sizes = {
        "train": args.num_train,
        "validation": args.num_validation,
        "test": args.num_test,
        "test_unseen": args.num_test_unseen,
        "test_procedural": args.num_test_procedural,
    }
    splits: dict[str, list[dict]] = {}
    avoid = None
    functions = load_functions(args.functions) if args.functions else None
    for name in SPLITS:
        generator = Generator(catalog, system_prompt, args, name, functions)
        if name != "train" and args.functions:  # function requests are drawn so that none leaks
            generator.avoid = avoid = avoid or TrainMessages(splits["train"])
        splits[name] = generator.rows(sizes[name])
        if applied is not None:
            applied[name] = {rule: generator.applied[rule] for rule in (*RULES, "correction")}
    check_rows(splits, catalog, functions)
    assert_no_leaks(splits)
    return splits


def content_hash(splits: dict[str, list[dict]]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        for row in splits[name]:
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode())
    return digest.hexdigest()


def split_mix(rows: list[dict], catalog: Catalog, train_values: set[str]) -> dict:
    """What one split holds: counts per kind, language and tool, the no-call share, rows with unseen values,
    distinct templates and messages, tool-list sizes, argument kinds, how many prompts show a confusable distractor,
    and its scenes (how many, and how many scenes have each number of rows)."""
    kinds = Counter(row["kind"] for row in rows)
    tools = Counter(row["tool_name"] for row in rows if row["tool_name"])
    calls = [row for row in rows if row["kind"] in CALL_KINDS]
    unseen = sum(any(v not in train_values for v in json.loads(row["values"]).values()) for row in rows)
    unseen_calls = sum(any(v not in train_values for v in json.loads(row["values"]).values()) for row in calls)
    sizes = Counter(len(row["tools"]) for row in rows)
    scenes = Counter(row["scene"] for row in rows)
    confusable = sum(
        bool(set(catalog.confusable_with(row["tool_name"])) & set(row["tools"]))
        for row in calls
        if row["tool_name"] in catalog.tools
    )
    return {
        "kind": {kind: kinds[kind] for kind in KINDS},
        "lang": {lang: sum(row["lang"] == lang for row in rows) for lang in LANGS},
        "tool": {name: tools[name] for name in catalog.tools},
        "procedural_calls": sum(row["family"] == "procedural" for row in rows),
        "function_rows": sum(row["family"].startswith(FUNCTION_FAMILY) for row in rows),
        "no_call_share": round(sum(kinds[k] for k in NO_CALL_KINDS) / len(rows), 4) if rows else 0.0,
        "rows_with_unseen_values": unseen,
        "call_rows_with_unseen_values": unseen_calls,
        "calls_with_confusable_distractor": confusable,
        "distinct_templates": len({row["template"] for row in rows}),
        "distinct_messages": len({row["user"] for row in rows}),
        "tool_list_sizes": {str(size): sizes[size] for size in sorted(sizes)},
        "argument_types": argument_types(rows),
        "scenes": len(scenes),
        "rows_per_scene": {str(size): count for size, count in sorted(Counter(scenes.values()).items())},
        "longest_prompt_chars": max((sum(len(m["content"]) for m in row["prompt"]) for row in rows), default=0),
    }


def argument_type(value, schema: dict) -> str:
    """The kind of one argument value: its JSON type, with a string drawn from an enum counted as `enum`."""
    if isinstance(value, str):
        return "enum" if "enum" in schema else "string"
    kinds = {bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}
    return kinds.get(type(value), "string")


def argument_types(rows: list[dict]) -> dict[str, int]:
    """How many call arguments of the rows are of each kind, read against the schemas their prompts show."""
    counts: Counter = Counter()
    shown: dict[str, dict] = {}
    for row in rows:
        if not row["tool_name"]:
            continue
        system = row["prompt"][0]["content"]
        if system not in shown:
            shown[system] = {t["tool_name"]: t["arguments"].get("properties", {}) for t in tools_in_prompt(system)}
        schemas = shown[system][row["tool_name"]]
        counts.update(argument_type(v, schemas.get(k, {})) for k, v in json.loads(row["arguments"]).items())
    return {kind: counts[kind] for kind in ARGUMENT_TYPES}


def pool_sizes(catalog: Catalog) -> dict[str, dict[str, int]]:
    return {name: {lang: len(pool.get(lang) or []) for lang in LANGS} for name, pool in catalog.slots.items()}


def dataset_facts(splits: dict[str, list[dict]], catalog: Catalog, recipe, applied: dict) -> dict:
    """The manifest's account of the data; the dataset card reads its numbers from here."""
    args = recipe.data
    train_values = {v for row in splits["train"] for v in json.loads(row["values"]).values()}
    return {
        "rows": {name: len(rows) for name, rows in splits.items()},
        "mix": {name: split_mix(rows, catalog, train_values) for name, rows in splits.items()},
        "no_call_share": args.no_call_share,
        "procedural_share": args.procedural_share,
        "max_distractors": args.max_distractors,
        "scene_size": args.scene_size,
        "rates": {name: getattr(args, name) for name in RATES},
        "noise_applied": applied,
        "pool_sizes": pool_sizes(catalog),
        "unseen_tools": list(catalog.unseen_tools),
        "dataset_seed": args.dataset_seed,
        "catalog": str(catalog.path),
        "catalog_sha256": hashlib.sha256(catalog.path.read_bytes()).hexdigest(),
        "tools": len(catalog.tools),
        "domains": sorted({tool["domain"] for tool in catalog.tools.values()}),
        "function_domains": sorted(load_functions(args.functions).domains) if args.functions else [],
        "held_out_function_domains": sorted(load_functions(args.functions).held_out) if args.functions else [],
        "image_marker": catalog.image_marker,
        "leaks": len(check_leaks(splits)),
        "content_sha256": content_hash(splits),
    }


def _dataset(rows: list[dict], fingerprint: str):
    from datasets import Dataset

    # save_to_disk records the fingerprint in state.json: derive it from the content hash, so the saved bytes
    # are stable by construction rather than by how the library happens to hash an in-memory table
    table = Dataset.from_list(rows)
    return Dataset(table.data, info=table.info, split=table.split, fingerprint=fingerprint)


def write_dataset(splits: dict[str, list[dict]], out: Path, digest: str | None = None) -> None:
    from datasets import DatasetDict

    digest = digest or content_hash(splits)
    fingerprints = {name: hashlib.sha256(f"{digest}:{name}".encode()).hexdigest()[:16] for name in splits}
    DatasetDict({name: _dataset(rows, fingerprints[name]) for name, rows in splits.items()}).save_to_disk(out / "hf")
    for name, rows in splits.items():
        lines = (json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows)
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def longest_row_tokens(recipe, splits: dict[str, list[dict]]) -> int:
    """Tokens of the longest row under the recipe's tokenizer and chat template; a row past `max_length` fails the
    build before anything is written (training would silently cut its answer)."""
    from sft_router.modeling.loading import load_tokenizer

    max_length = recipe.training.max_length or float("inf")  # max_length: null truncates nothing
    return check_row_lengths(load_tokenizer(recipe), splits, max_length, recipe.path)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    started = time.time()
    (recipe,) = parse_recipe(argv)
    catalog = load_catalog(recipe.data.catalog)
    applied: dict = {}
    splits = build_splits(recipe, catalog, applied)
    facts = dataset_facts(splits, catalog, recipe, applied)
    facts["longest_row_tokens"] = longest_row_tokens(recipe, splits)
    with stage_output(recipe, "dataset", started, **facts) as (out, _):
        write_dataset(splits, out, facts["content_sha256"])
    print(f"dataset: {facts['rows']}, {facts['leaks']} leaks -> {recipe.stage_dir('dataset')}")


if __name__ == "__main__":
    main()
