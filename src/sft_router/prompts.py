"""Prompt rendering and stop tokens: the one chat template every stage renders with, and where generation stops.

Usage: from sft_router.prompts import render_prompts, stop_token_ids, STOP_TOKEN
"""

from __future__ import annotations

from sft_router.scoring import target_text

STOP_TOKEN = "<end_of_turn>"


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]


def render_prompts(tokenizer, rows) -> list[str]:
    return [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) for row in rows]


# Tokens past the longest target: enough to see an answer that runs on (trailing text) and score it as wrong.
NEW_TOKENS_SLACK = 8


def new_tokens_needed(tokenizer, rows, limit: int) -> int:
    """Decode no further than the longest target (plus slack) needs: a longer answer cannot be exact anyway."""
    longest = max((len(tokenizer(target_text(row), add_special_tokens=False)["input_ids"]) for row in rows), default=0)
    return min(limit, longest + NEW_TOKENS_SLACK)
