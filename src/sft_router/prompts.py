"""Prompt rendering and stop tokens: the one chat template every stage renders with, and where generation stops
(the router format's STOP_TOKEN, as token ids).

Usage: from sft_router.prompts import render_prompts, stop_token_ids
"""

from __future__ import annotations

from sft_router.router_format import STOP_TOKEN
from sft_router.scoring import target_text


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(STOP_TOKEN)]


def render_prompts(tokenizer, rows) -> list[str]:
    return [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) for row in rows]


# Tokens past the longest target: enough to see an answer that runs on (trailing text) and score it as wrong.
NEW_TOKENS_SLACK = 8


def new_tokens_needed(tokenizer, rows, limit: int) -> int:
    """Decode no further than the longest target (plus slack) needs: a longer answer cannot be exact anyway."""
    longest = max((len(tokenizer(target_text(row), add_special_tokens=False)["input_ids"]) for row in rows), default=0)
    return min(limit, longest + NEW_TOKENS_SLACK)
