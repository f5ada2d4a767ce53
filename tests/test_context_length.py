"""One context length: `make data` refuses a row longer than the recipe's `max_length`, naming it, and writes nothing;
the GGUF's n_ctx is a power of two that holds the longest prompt and the longest generation."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from sft_router import data
from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError
from sft_router.core.router_format import published_system_prompt
from sft_router.datagen.catalog import load_catalog
from sft_router.modeling import context_length
from sft_router.modeling.loading import load_tokenizer


@pytest.fixture(scope="module")
def recipe():
    return parse_recipe(["--config", TINY])[0]


@pytest.fixture(scope="module")
def tokenizer(recipe):
    return load_tokenizer(recipe)


@pytest.fixture(scope="module")
def splits(recipe):
    return data.build_splits(recipe)


def test_row_lengths_count_the_tokens_training_sees(tokenizer, splits):
    rows = splits["test"][:6]
    tokens = [tokenizer.apply_chat_template(row["prompt"] + row["completion"])["input_ids"] for row in rows]
    assert context_length.row_lengths(tokenizer, rows) == [len(ids) for ids in tokens]


def test_a_row_past_max_length_fails_naming_split_row_tokens_and_fix(tokenizer, splits):
    lengths = context_length.row_lengths(tokenizer, splits["train"])
    longest = max(lengths)
    assert context_length.check_row_lengths(tokenizer, splits, longest + 5000, "r.yaml") >= longest
    index = next(i for i, n in enumerate(lengths) if n > longest - 1)
    with pytest.raises(UsageError) as error:
        context_length.check_row_lengths(tokenizer, {"train": splits["train"]}, longest - 1, "r.yaml")
    row = splits["train"][index]
    assert str(error.value) == (
        f"train row {index} ({row['id']}) is {longest} tokens, longer than max_length {longest - 1} (training would "
        "cut it): raise max_length in r.yaml or shorten the tools or system prompt"
    )


def test_make_data_refuses_a_recipe_whose_max_length_is_too_small_and_writes_nothing(workspace, capsys):
    with pytest.raises(SystemExit):
        data.main(["--config", TINY, "--max_length", "64"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train row 0 (train-000000) is ")
    assert "longer than max_length 64" in lines[0] and "raise max_length in recipes/tiny/router.yaml" in lines[0]
    assert not (workspace / "runs/tiny/dataset").exists()
    assert not list((workspace / "runs/tiny").glob(".dataset*"))  # no temporary folder left behind either


def test_make_data_writes_the_longest_rows_tokens_to_the_manifest(workspace, tokenizer):
    data.main(["--config", TINY])
    manifest = json.loads((workspace / "runs/tiny/dataset/manifest.json").read_text())
    folder = workspace / "runs/tiny/dataset"
    rows = [json.loads(line) for name in manifest["rows"] for line in (folder / f"{name}.jsonl").open()]
    assert manifest["longest_row_tokens"] == max(context_length.row_lengths(tokenizer, rows))


@pytest.mark.parametrize(("tokens", "rounded"), [(1, 1), (2, 2), (3, 4), (1024, 1024), (1025, 2048), (4441, 8192)])
def test_power_of_two_rounds_up(tokens, rounded):
    assert context_length.power_of_two(tokens) == rounded


def test_n_ctx_holds_the_published_prompt_or_max_length_and_the_longest_generation(recipe, tokenizer):
    system = published_system_prompt(recipe.data, load_catalog(recipe.data.catalog).tools.values())
    conversation = [{"role": "system", "content": system}, {"role": "user", "content": ""}]
    published = len(tokenizer.apply_chat_template(conversation, add_generation_prompt=True)["input_ids"])
    most = max(recipe.eval.eval_max_new_tokens, recipe.eval.bfcl_max_new_tokens)
    n_ctx = context_length.context_length(recipe, tokenizer, system)
    assert n_ctx >= max(recipe.training.max_length, published) + most > n_ctx // 2
    assert n_ctx & (n_ctx - 1) == 0
    short = context_length.context_length(recipe, tokenizer, "You route.")  # max_length decides then
    assert short == context_length.power_of_two(recipe.training.max_length + most)


def test_a_gguf_without_its_manifest_names_the_fix(tmp_path):
    with pytest.raises(UsageError, match="no manifest naming the GGUF's n_ctx: run `make gguf`"):
        context_length.gguf_context_length(tmp_path / "x.gguf")
