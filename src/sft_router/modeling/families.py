"""Model families: what differs between decoder families, in one place, one registration each (as llama.cpp's
converter registers a class per architecture). A stage asks `family_of(...)` for the family of the model it holds
and reads what it needs from it (turn markers, stop token, whether scenes pack, Ollama's template); no stage
branches on a family's name.

A family is recognised by transformers' `config.model_type` or by the `general.architecture` llama.cpp writes into
its GGUF. Gemma 3 folds the system prompt into the first user turn (it has no system role) and stops at
<end_of_turn>; Qwen3 speaks ChatML: the system prompt is a turn of its own and <|im_end|> ends every turn.

A new family: a `Family(...)` registered here, a tiny builder in base_models.py, a recipe, and the tests
(CONTRIBUTING.md, "A new model family").

Usage: family = family_of(model.config)   (or a model folder, a config dict, a model_type, a GGUF architecture)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sft_router.core.errors import UsageError

FAMILIES: dict[str, Family] = {}


@dataclass(frozen=True)
class Family:
    """What a stage needs to know about a model family; `name` is llama.cpp's GGUF architecture."""

    name: str
    model_types: tuple[str, ...]  # transformers' config.model_type values of the family
    system_turn: str  # the header of the turn that holds the system prompt and its tool list
    user_turn: str
    model_turn: str  # opens the answer: the chat template's generation prompt
    end_of_turn: str  # ends every turn; generation stops here (or at eos_token)
    eos_token: str
    bos_token: str | None  # None: the prompt starts with no BOS token
    control_tokens: tuple[str, ...]  # must be single CONTROL tokens in the GGUF, or llama.cpp splits them
    gguf_vocabs: tuple[str, ...]  # tokenizer.ggml.model the converter may write: llama (SentencePiece), gpt2 (BPE)
    gguf_flags: tuple[
        tuple[str, bool], ...
    ]  # boolean GGUF keys the converter leaves out for the family, written after
    scene_packing: bool  # attention takes a boolean mask per layer type (`full_attention`, ...) and position_ids
    ollama_messages: str  # Ollama's Go template for the messages; modelfile.py adds its "trim" definitions
    # What the cards say of the base: the Hub's `license` id, the family's tag, the terms a derivative falls under
    # (model_card/partials/turns/<name>.md shows its prompt format).
    hub_license: str
    display_name: str
    terms_name: str
    terms_url: str

    @property
    def stop_token(self) -> str:
        return self.end_of_turn

    def stop_token_ids(self, tokenizer) -> list[int]:
        return list(dict.fromkeys([tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(self.stop_token)]))

    def system_turn_text(self, rendered: str) -> str:
        """The text of the rendered prompt's turn that holds the system prompt (Gemma: the first user turn)."""
        return rendered.split(self.system_turn, 1)[-1].split(self.end_of_turn, 1)[0]


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def family_of(source) -> Family:
    """The family of a transformers config (or its dict), a model folder holding config.json, a `model_type` or a
    GGUF architecture; one line naming the known families otherwise."""
    model_type = _model_type(source)
    for family in FAMILIES.values():
        if model_type == family.name or model_type in family.model_types:
            return family
    known = ", ".join(t for family in FAMILIES.values() for t in family.model_types)
    raise UsageError(
        f"model type '{model_type}' is no known model family (known: {known}): register one in "
        "src/sft_router/modeling/families.py (CONTRIBUTING.md, 'A new model family')"
    )


def _model_type(source) -> str:
    if isinstance(source, dict):
        return str(source.get("model_type"))
    if hasattr(source, "model_type"):
        return source.model_type
    if isinstance(source, (str, Path)) and (Path(source) / "config.json").is_file():
        return str(json.loads((Path(source) / "config.json").read_text()).get("model_type"))
    return str(source)


# Trim markers ({{- -}}) keep the template's own newlines out of the prompt; the only newlines emitted are the ones
# inside the quoted strings, exactly where the Jinja template puts them. As in Jinja, only a first message with the
# system role is the system prompt, and it is not trimmed.
GEMMA3 = register(
    Family(
        name="gemma3",
        model_types=("gemma3_text", "gemma3"),
        system_turn="<start_of_turn>user\n",
        user_turn="<start_of_turn>user\n",
        model_turn="<start_of_turn>model\n",
        end_of_turn="<end_of_turn>",
        eos_token="<eos>",
        bos_token="<bos>",
        control_tokens=("<start_of_turn>", "<end_of_turn>"),
        gguf_vocabs=("llama",),  # the converter's Gemma 3 path reads tokenizer.model
        gguf_flags=(),
        scene_packing=True,
        hub_license="gemma",
        display_name="Gemma",
        terms_name="Gemma Terms of Use",
        terms_url="https://ai.google.dev/gemma/terms",
        ollama_messages=r"""{{- $system := "" }}{{ $has_system := false }}
{{- if .Messages }}{{ with index .Messages 0 }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ $has_system = true }}{{ end }}{{ end }}{{ end }}
{{- $first := true }}
{{- range .Messages }}
{{- if eq .Role "user" }}
{{- "<start_of_turn>user\n" }}
{{- if and $first $has_system }}{{ $system }}{{ "\n\n" }}{{ end }}
{{- $first = false }}
{{- template "trim" .Content }}{{ "<end_of_turn>\n" }}
{{- else if eq .Role "assistant" }}
{{- "<start_of_turn>model\n" }}{{ template "trim" .Content }}{{ "<end_of_turn>\n" }}
{{- end }}
{{- end }}
{{- "<start_of_turn>model\n" }}""",
    )
)

# ChatML as recipes/tiny-qwen3/chat_template.jinja renders it: the system prompt as its own turn, untrimmed.
QWEN3 = register(
    Family(
        name="qwen3",
        model_types=("qwen3",),
        system_turn="<|im_start|>system\n",
        user_turn="<|im_start|>user\n",
        model_turn="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        eos_token="<|im_end|>",
        bos_token=None,
        control_tokens=("<|im_start|>", "<|im_end|>"),
        gguf_vocabs=("llama", "gpt2"),  # the converter's Qwen path takes a tokenizer.model first, else the BPE
        # Its SentencePiece path writes no add_space_prefix, and llama.cpp then puts a space after every special
        # token (<|im_start|>system -> <|im_start|> system): the tiny tokenizer adds none (a BPE vocabulary ignores it)
        gguf_flags=(("tokenizer.ggml.add_space_prefix", False),),
        scene_packing=True,
        hub_license="apache-2.0",
        display_name="Qwen3",
        terms_name="Apache 2.0 licence terms",
        terms_url="https://www.apache.org/licenses/LICENSE-2.0",
        ollama_messages=r"""{{- $system := "" }}{{ $has_system := false }}
{{- if .Messages }}{{ with index .Messages 0 }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ $has_system = true }}{{ end }}{{ end }}{{ end }}
{{- if $has_system }}{{ "<|im_start|>system\n" }}{{ $system }}{{ "<|im_end|>\n" }}{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}
{{- "<|im_start|>user\n" }}{{ template "trim" .Content }}{{ "<|im_end|>\n" }}
{{- else if eq .Role "assistant" }}
{{- "<|im_start|>assistant\n" }}{{ template "trim" .Content }}{{ "<|im_end|>\n" }}
{{- end }}
{{- end }}
{{- "<|im_start|>assistant\n" }}""",
    )
)
