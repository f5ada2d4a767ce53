"""One chat template everywhere: the data rows, training's tokens, evaluation's prompts, the merged model's
tokenizer and the GGUF all render a conversation to the same string, from the recipe's one template file."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from sft_router.core.config import parse_recipe
from sft_router.modeling.loading import load_tokenizer
from sft_router.modeling.prompts import render_prompts

CONVERSATIONS = 4


@pytest.fixture(scope="module")
def run(tiny_run):
    """The tiny run's recipe, recipe tokenizer and a few train rows (each a system, user and model turn)."""
    import os

    old = os.getcwd()
    os.chdir(tiny_run)
    try:
        (recipe,) = parse_recipe(["--config", TINY])
        rows = [json.loads(line) for line in (tiny_run / "runs/tiny/dataset/train.jsonl").read_text().splitlines()]
        yield {"ws": tiny_run, "recipe": recipe, "tokenizer": load_tokenizer(recipe), "rows": rows[:CONVERSATIONS]}
    finally:
        os.chdir(old)


def render(tokenizer, row, generation_prompt: bool = False) -> str:
    messages = row["prompt"] + ([] if generation_prompt else row["completion"])
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def test_data_rows_render_in_gemmas_turn_format(run):
    for row in run["rows"]:
        text = render(run["tokenizer"], row)
        system, user = row["prompt"][0]["content"], row["prompt"][1]["content"]
        assert row["prompt"][0]["role"] == "system" and text.count("<bos>") == 1 and text.startswith("<bos>")
        assert "<start_of_turn>system" not in text  # Gemma has no system role: folded into the first user turn
        assert text.startswith(f"<bos><start_of_turn>user\n{system.strip()}\n\n{user.strip()}<end_of_turn>\n")
        assert text.endswith(f"<start_of_turn>model\n{row['completion'][0]['content'].strip()}<end_of_turn>\n")


def test_training_tokens_decode_to_the_data_rendering(run):
    """What SFTTrainer trains on is the rendered conversation, token for token."""
    tokenizer, rows = run["tokenizer"], run["rows"]
    trainer = _tokenizing_trainer(run)
    for index, row in enumerate(rows):
        ids = trainer.train_dataset[index]["input_ids"]
        assert tokenizer.decode(ids) == render(tokenizer, row)
        assert ids == tokenizer(render(tokenizer, row), add_special_tokens=False).input_ids


def _tokenizing_trainer(run):
    """SFTTrainer tokenizes its dataset when it is built: the rows as the training loop will see them."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from sft_router.modeling.base_models import resolve_base_model
    from sft_router.train import make_trainer

    recipe = run["recipe"]
    model = AutoModelForCausalLM.from_pretrained(resolve_base_model(recipe.model.model_name_or_path))
    rows = Dataset.from_list(run["rows"])
    return make_trainer(recipe, model, run["tokenizer"], rows)


def test_evaluation_prompts_are_the_data_rendering_up_to_the_model_turn(run):
    tokenizer, rows = run["tokenizer"], run["rows"]
    for prompt, row in zip(render_prompts(tokenizer, rows), rows):
        assert prompt == render(tokenizer, row, generation_prompt=True)
        assert render(tokenizer, row).startswith(prompt) and prompt.endswith("<start_of_turn>model\n")


def test_merged_tokenizer_renders_identically(run):
    from transformers import AutoTokenizer

    merged = AutoTokenizer.from_pretrained(str(run["ws"] / "runs/tiny/merged"))
    assert merged.chat_template == run["tokenizer"].chat_template
    for row in run["rows"]:
        assert render(merged, row) == render(run["tokenizer"], row)
        assert render(merged, row, True) == render(run["tokenizer"], row, True)


def test_gguf_carries_the_same_template_text(run):
    from gguf import GGUFReader

    reader = GGUFReader(run["ws"] / "runs/tiny/gguf/tiny-Q8_0.gguf")
    field = reader.fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode("utf-8")
    recipe_file = (run["ws"] / run["recipe"].training.chat_template_path).read_text()
    assert template == recipe_file == run["tokenizer"].chat_template


def openai_tools(recipe, names: list[str]) -> list[dict]:
    """The row's tools as an OpenAI client sends them: {"type": "function", "function": {name, description,
    parameters}}."""
    from sft_router.datagen.catalog import load_catalog

    tools = load_catalog(recipe.data.catalog).tools
    return [{"type": "function", "function": {"name": name, "description": tools[name]["description"],
                                              "parameters": tools[name]["parameters"]}} for name in names]  # fmt: skip


def test_tools_argument_renders_the_training_prompt(run):
    """apply_chat_template(messages, tools=tools) with the system prompt template equals the training row's prompt."""
    from sft_router.datagen.catalog import load_catalog

    template = (run["ws"] / run["recipe"].data.system_prompt).read_text()
    catalog = load_catalog(run["recipe"].data.catalog).tools
    rows = [row for row in run["rows"] if set(row["tools"]) <= set(catalog)]  # not the procedurally generated tools
    assert rows
    for row in rows:
        messages = [{"role": "system", "content": template}, row["prompt"][1]]
        with_tools = run["tokenizer"].apply_chat_template(
            messages, tools=openai_tools(run["recipe"], row["tools"]), tokenize=False, add_generation_prompt=True
        )
        assert with_tools == render(run["tokenizer"], row, generation_prompt=True)


def test_list_valued_content_renders_like_strings(run):
    """OpenAI content parts: text parts joined, an image part as Gemma's image marker; system content too."""
    row = run["rows"][0]
    system, user = row["prompt"][0]["content"], row["prompt"][1]["content"]
    parts = [{"role": "system", "content": [{"type": "text", "text": system}]},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user + "\n"}]}]  # fmt: skip
    expected = [{"role": "system", "content": system}, {"role": "user", "content": "<start_of_image>" + user}]
    tokenizer = run["tokenizer"]
    assert tokenizer.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == (
        tokenizer.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
    )
