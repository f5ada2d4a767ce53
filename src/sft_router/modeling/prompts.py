"""Prompt rendering and stop tokens: the one chat template every stage renders with, where generation stops (the
model family's stop token, as token ids), and the scenes rows fall into (rows sharing one system prompt, so one tool
list, whose prompts share that prefix), and a list of prompts as every evaluated variant is asked it (PromptSet:
rendered once, with its scenes and the one token cap of its answers).

Usage: from sft_router.modeling.prompts import prompt_set, render_prompts, scenes, stop_token_ids
"""

from __future__ import annotations

from dataclasses import dataclass

from sft_router.core.router_format import target_text
from sft_router.modeling.families import family_of


def stop_token_ids(tokenizer, model) -> list[int]:
    """EOS and the end of turn of `model`'s family (a model, or anything families.family_of reads)."""
    return family_of(getattr(model, "config", model)).stop_token_ids(tokenizer)


def render_prompts(tokenizer, rows) -> list[str]:
    return [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) for row in rows]


def system_prompt(row) -> str:
    """A row's system prompt with its tool list ("" for a row without one)."""
    first = row["prompt"][0]
    return first["content"] if first["role"] == "system" else ""


def scenes(rows) -> list[list[int]]:
    """Row indices grouped by system prompt, scenes in the order they first appear, rows in theirs. A scene's
    prompts are byte-identical up to the request, so decoding them one after another reuses that prefix. Read from
    the prompts themselves, not a `scene` column: the same on data written before scenes existed."""
    grouped: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        grouped.setdefault(system_prompt(row), []).append(index)
    return list(grouped.values())


# Tokens past the longest target: enough to see an answer that runs on (trailing text) and score it as wrong.
NEW_TOKENS_SLACK = 8


def new_tokens_needed(tokenizer, rows, limit: int) -> int:
    """Decode no further than the longest target (plus slack) needs: a longer answer cannot be exact anyway. Rows
    without a target (BFCL's cases, graded by BFCL's checker) may take all of `limit`."""
    if not all("completion" in row for row in rows):
        return limit
    longest = max((len(tokenizer(target_text(row), add_special_tokens=False)["input_ids"]) for row in rows), default=0)
    return min(limit, longest + NEW_TOKENS_SLACK)


@dataclass(frozen=True)
class PromptSet:
    """One list of prompts (a split's rows, or one BFCL category's cases as rows) as every variant is asked it."""

    rows: list[dict]
    texts: list[str]  # each row's prompt rendered by the chat template
    scenes: list[list[int]]
    max_new_tokens: int
    label: str  # what the progress bars show: the split, or "bfcl <category>"


def prompt_set(tokenizer, rows: list[dict], limit: int, label: str) -> PromptSet:
    """The rows rendered once for every variant, their answers capped by new_tokens_needed: the one place the cap is
    decided, for split rows and BFCL cases alike."""
    texts = render_prompts(tokenizer, rows)
    return PromptSet(rows, texts, scenes(rows), new_tokens_needed(tokenizer, rows, limit), label)
