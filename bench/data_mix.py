"""What the generated messages and prompts look like next to the hand-written split: the table of issue 20.

For each split of a recipe's generated dataset (built in-process, nothing written) and for the recipe's hand-written
split, one row of: English messages that start lower case, messages with an informal token, prompts showing one
tool (all rows, and call rows), call arguments of each kind, and messages with an affix from the catalog's noise
tables at their start (a filler, polite or context prefix) or with two affixes. The informal tokens are a fixed list
here, not the generator's table, so the figure does not merely count what the generator wrote.

Usage: PYTHONPATH=src .venv/bin/python bench/data_mix.py --config recipes/gemma-3-270m-it/router.yaml
"""

from __future__ import annotations

import argparse
import re

from sft_router.core.config import parse_recipe
from sft_router.core.router_format import load_system_prompt
from sft_router.data import argument_types, build_splits
from sft_router.datagen.catalog import ARGUMENT_TYPES, load_catalog
from sft_router.evaluation.eval_data import read_handwritten
from sft_router.evaluation.markdown_tables import markdown_table

INFORMAL = re.compile(r"\b(pls|plz|u|ur|ok|k|thx|ty|gonna|wanna|gotta|rn|im|tmrw|tmr|lol|btw|tbh|abt|cuz|bc|w/|ya)\b"
                      r"|啥|咋|嘞|好滴|3q", re.IGNORECASE)  # fmt: skip
LETTER = re.compile(r"[A-Za-z]")


def prefixes(catalog) -> list[str]:
    """The affix prefixes of the catalog's noise tables, lower-cased (a message may have been typed in lower case)."""
    words = []
    for table in ("filler", "polite", "context"):
        prefix = catalog.noise.get(table, {}).get("prefix", {})
        words += [word.lower() for lang in prefix for word in prefix[lang]]
    return words


def message(row: dict, marker: str) -> str:
    return row["prompt"][-1]["content"].removeprefix(marker)


def share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def mix_row(name: str, rows: list[dict], catalog) -> list[str]:
    marker, starts = catalog.image_marker, prefixes(catalog)
    english = [message(row, marker) for row in rows if row["lang"] == "en"]
    lower = sum(bool(m) and (first := LETTER.search(m)) is not None and first.group().islower() for m in english)
    texts = [message(row, marker) for row in rows]
    informal = sum(bool(INFORMAL.search(text)) for text in texts)
    calls = [row for row in rows if row["tool_name"]]
    single = sum(len(row["tools"]) == 1 for row in rows)
    single_calls = sum(len(row["tools"]) == 1 for row in calls)
    kinds = argument_types(rows)
    total = sum(kinds.values())
    typed = total - kinds["string"] - kinds["enum"]
    prefixed = sum(any(text.lower().startswith(p) for p in starts) for text in texts)
    cells = [name, str(len(rows)), share(lower, len(english)), share(informal, len(texts)), share(single, len(rows)),
             share(single_calls, len(calls)), *(share(kinds[k], total) for k in ARGUMENT_TYPES), share(typed, total),
             str(kinds["object"]), share(prefixed, len(texts))]  # fmt: skip
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    (recipe,) = parse_recipe(["--config", args.config])
    catalog = load_catalog(recipe.data.catalog)
    splits = build_splits(recipe, catalog)
    header = ["split", "rows", "en lower-case start", "informal token", "1-tool prompts", "1-tool call prompts",
              *ARGUMENT_TYPES, "non-string args", "object args", "affix prefix"]  # fmt: skip
    table = [mix_row(name, rows, catalog) for name, rows in splits.items()]
    if recipe.eval.handwritten:
        system = load_system_prompt(recipe.data.system_prompt)
        table.append(mix_row("handwritten", read_handwritten(recipe.eval.handwritten, catalog, system), catalog))
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
