"""Prompt rendering and stop tokens: the one chat template every stage renders with, and where generation stops.

Usage: from sft_router.prompts import render_prompts, stop_token_ids, STOP_TOKEN
"""

from __future__ import annotations

STOP_TOKEN = "<end_of_turn>"


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]


def render_prompts(tokenizer, rows) -> list[str]:
    return [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) for row in rows]
