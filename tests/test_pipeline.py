"""Every stage on the tiny recipe, end to end: each leaves the file the next stage and make depend on."""

from __future__ import annotations

import json

import pytest

from sft_router.core.stages import STAGES

SEED_KEYS = ["exact_match_rate", "tool_name_accuracy", "average_argument_precision", "average_argument_recall",
             "average_argument_f1", "total_samples"]  # fmt: skip


def test_every_stage_writes_its_output_and_manifest(tiny_run):
    run = tiny_run / "runs" / "tiny"
    for stage in [name for name in STAGES if name != "hub-data"]:  # (the tiny run publishes every repo at once)
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["run"] == "tiny" and manifest["stage"] == stage and len(manifest["recipe_sha256"]) == 64
        assert manifest["wall_time_s"] > 0
    adapter = json.loads((run / "adapter" / "manifest.json").read_text())
    assert adapter["wall_time_s"] >= adapter["train_wall_time_s"] > 0  # the stage's wall time covers its training
    assert (run / "dataset" / "test.jsonl").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "gguf" / "tiny-Q8_0.gguf").stat().st_size > 100_000
    assert not list(run.glob(".*.tmp-*"))  # no half-written stage folders


@pytest.mark.parametrize("variant", ["baseline", "finetuned"])
def test_metrics_carry_the_seed_keys(tiny_run, variant):
    metrics = json.loads((tiny_run / "runs/tiny/eval" / variant / "metrics.json").read_text())
    assert list(metrics)[: len(SEED_KEYS)] == SEED_KEYS and metrics["total_samples"] == 24
    predictions = (tiny_run / "runs/tiny/eval" / variant / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 24 and {"id", "expected", "output", "exact_match"} <= set(json.loads(predictions[0]))


def test_training_moved_the_adapter_and_the_loss_fell(tiny_run):
    from safetensors.torch import load_file

    weights = load_file(tiny_run / "runs/tiny/adapter/adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # PEFT initialises B at zero
    history = json.loads((tiny_run / "runs/tiny/adapter/manifest.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0]


def test_merged_model_matches_the_adapter_model(tiny_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_router.modeling.base_models import resolve_base_model

    run = tiny_run / "runs/tiny"
    base = AutoModelForCausalLM.from_pretrained(
        resolve_base_model("sft-router/tiny-gemma3"), attn_implementation="eager"
    )
    adapted = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(run / "merged"), attn_implementation="eager").eval()
    ids = torch.tensor([[2, 10, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-4)
    assert 6 in merged.generation_config.eos_token_id or "<end_of_turn>" in (run / "merged/tokenizer.json").read_text()


def test_merged_folder_is_convertible_and_carries_the_template(tiny_run):
    run = tiny_run / "runs/tiny"
    config = json.loads((run / "merged/tokenizer_config.json").read_text())
    template = (tiny_run / "recipes/gemma-3-270m-it/chat_template.jinja").read_text()
    assert config["chat_template"] == template
    decoder = {entry["content"]: entry for entry in config["added_tokens_decoder"].values()}
    assert decoder["<end_of_turn>"]["special"] and decoder["<start_of_turn>"]["special"]  # for gguf-my-repo too
    assert (run / "merged/tokenizer.model").read_bytes()[:2]  # SentencePiece file beside the weights
    gguf_facts = json.loads((run / "gguf/manifest.json").read_text())["tiny-Q8_0.gguf"]
    assert gguf_facts["architecture"] == "gemma3" and gguf_facts["tokenizer_model"] == "llama"
    assert "Q8_0" in gguf_facts["tensor_types"]


def test_card_shows_the_metrics_files_numbers(tiny_run):
    run = tiny_run / "runs/tiny"
    card = (run / "card/README.md").read_text()
    finetuned = json.loads((run / "eval/finetuned/metrics.json").read_text())
    assert f"| finetuned | {finetuned['exact_match_rate']:.3f} | {finetuned['tool_name_accuracy']:.3f} |" in card
    assert "make all RECIPE=recipes/tiny/router.yaml" in card and "license: gemma" in card
    lookup = json.loads((run / "eval/handwritten/lookup/metrics.json").read_text())
    assert "| lookup | " in card and "| split | rows | baseline | finetuned |" in card
    (row,) = [line for line in card.splitlines() if line.startswith("| handwritten | 24 | ")]
    assert row.endswith(f"| {lookup['exact_match_rate']:.3f} |")  # lookup, the last column


def test_without_token_the_repos_are_staged(tiny_run):
    hub = tiny_run / "runs/tiny/hub/your-namespace"
    assert (hub / "tiny-router-GGUF/tiny-Q8_0.gguf").is_file()
    assert (hub / "tiny-router/model.safetensors").is_file() and (
        hub / "tiny-router/adapter/adapter_config.json"
    ).is_file()
    assert (hub / "tiny-router-scenarios/data/test-00000-of-00001.parquet").is_file()
    staged = {p.name for p in (hub / "tiny-router").rglob("*")}
    assert not staged & {"optimizer.pt", "training_args.bin", "trainer_state.json", ".env"}
