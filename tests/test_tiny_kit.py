"""The tiny base model kit: a tokenizer that survives save/load, Gemma turn tokens, Gemma 3's layer pattern."""

from __future__ import annotations

import pytest

from sft_router.modeling.base_models import resolve_base_model

SAMPLE = '帮我查一下今天的日程 {"tool_name": "get_calendar_events", "arguments": {"date": "今天"}} Remind me at 3pm'


@pytest.fixture(scope="module")
def tiny_dir():
    return resolve_base_model("sft-router/tiny-gemma3")


def test_chinese_sample_encodes_identically_after_save_and_load(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tokenizer(SAMPLE).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == SAMPLE
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(SAMPLE).input_ids == ids


def test_turn_tokens_are_single_special_tokens(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    for token in ("<start_of_turn>", "<end_of_turn>", "<start_of_image>"):
        assert tokenizer(token, add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer("x").input_ids[0] == tokenizer.bos_token_id


def test_model_keeps_gemma3_layer_pattern_and_sentencepiece_file(tiny_dir):
    from pathlib import Path

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.model_type == "gemma3_text"
    assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert (Path(tiny_dir) / "tokenizer.model").stat().st_size > 1000


def test_build_is_cached(tiny_dir):
    assert resolve_base_model("sft-router/tiny-gemma3") == tiny_dir
    assert resolve_base_model("google/gemma-3-270m-it") == "google/gemma-3-270m-it"


def test_tiny_qwen3_has_qwens_special_tokens_no_bos_and_full_attention():
    from transformers import AutoConfig, AutoTokenizer

    qwen_dir = resolve_base_model("sft-router/tiny-qwen3")
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tokenizer(token, add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(token)]
    assert (
        tokenizer.bos_token is None and tokenizer("x").input_ids == tokenizer("x", add_special_tokens=False).input_ids
    )
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    ids = tokenizer(SAMPLE).input_ids
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == SAMPLE
    config = AutoConfig.from_pretrained(qwen_dir)
    assert config.model_type == "qwen3" and config.layer_types == ["full_attention"] * 2
