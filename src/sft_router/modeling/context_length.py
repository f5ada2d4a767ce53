"""The context length, decided once: `make data` holds every row to the recipe's `max_length`, and `make gguf` derives
the GGUF's context from it and writes it to the gguf manifest (`n_ctx`), which llama.cpp (`make eval`), `make serve`,
Ollama's `params` (`num_ctx`) and the cards' snippets all read.

The context covers the longest prompt the model may be shown, at least `max_length` (every training row fits it) and at
least the published system prompt listing every tool of the catalog (what Ollama's `system` file sends), plus the most
tokens a generation may take (`eval_max_new_tokens`, `bfcl_max_new_tokens`), rounded up to a power of two as
llama.cpp's and Ollama's own sizes are.

Usage: n_ctx = context_length(recipe, tokenizer, system_prompt)   (make gguf writes it to the gguf manifest)
       n_ctx = gguf_context_length(gguf_file)                      (what the GGUF is loaded with)
"""

from __future__ import annotations

from pathlib import Path

from sft_router.core.errors import UsageError
from sft_router.core.run_folder import read_manifest


def conversation_lengths(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool = False) -> list[int]:
    """Token counts of conversations rendered with the chat template, tokenised in one batch (the template writes
    <bos> as text, so no special tokens are added)."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=add_generation_prompt)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def row_lengths(tokenizer, rows: list[dict]) -> list[int]:
    """Tokens of each row as training sees it: the prompt and the answer, rendered together."""
    return conversation_lengths(tokenizer, [row["prompt"] + row["completion"] for row in rows])


def check_row_lengths(tokenizer, splits: dict[str, list[dict]], max_length: int, recipe_path) -> int:
    """The longest row's tokens; a row past `max_length` (which training would cut) fails naming it."""
    longest = 0
    for split, rows in splits.items():
        lengths = row_lengths(tokenizer, rows)
        for index, (row, length) in enumerate(zip(rows, lengths)):
            if length > max_length:
                raise UsageError(
                    f"{split} row {index} ({row['id']}) is {length} tokens, longer than max_length {max_length} "
                    f"(training would cut it): raise max_length in {recipe_path} or shorten the tools or system prompt"
                )
        longest = max([longest, *lengths])
    return longest


def power_of_two(tokens: int) -> int:
    return 1 << max(tokens - 1, 0).bit_length()


def new_tokens_allowed(recipe) -> int:
    """The most tokens one generation of `make eval` may take (a split's answer, a BFCL case's)."""
    return max(recipe.eval.eval_max_new_tokens, recipe.eval.bfcl_max_new_tokens)


def context_length(recipe, tokenizer, system_prompt: str) -> int:
    """The GGUF's context: the longest prompt (max_length, or the system prompt with every tool and an empty
    request) plus the most new tokens, rounded up to a power of two."""
    (published,) = conversation_lengths(
        tokenizer, [[{"role": "system", "content": system_prompt}, {"role": "user", "content": ""}]], True
    )
    return power_of_two(max(recipe.training.max_length or 0, published) + new_tokens_allowed(recipe))


def gguf_context_length(gguf_file: Path) -> int:
    """The context `make gguf` chose for this GGUF, from the manifest beside it."""
    folder = Path(gguf_file).parent
    n_ctx = (read_manifest(folder) or {}).get("n_ctx")
    if not n_ctx:
        raise UsageError(f"{folder} has no manifest naming the GGUF's n_ctx: run `make gguf`, or give n_ctx")
    return n_ctx
