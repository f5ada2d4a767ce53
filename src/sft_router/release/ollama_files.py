"""Ollama's files beside the GGUF: `template`, `params` and `system` (what `ollama run hf.co/<repo>` reads from a
Hub repo, which never reads a Modelfile), and a `Modelfile` with the same three for `ollama create -f Modelfile`.

Ollama renders prompts with a Go text/template, not the GGUF's Jinja chat template, so go_template(family)
re-states the training format in Go syntax: the model family's turns (families.py: Gemma's with the system prompt
folded into the first user turn, recipes/gemma-3-270m-it/chat_template.jinja; Qwen3's ChatML), every message's
content trimmed as Jinja's `| trim` (Python's `str.strip`) does, the family's turn header to open the answer.
Ollama adds <bos> itself where the family has one (the GGUF sets tokenizer.ggml.add_bos_token), so the template
does not. tests/test_gguf_modelfile.py executes it with Go's own text/template in Ollama's data shape on every
test-split row and compares with the Jinja template.

Usage: write_ollama_files(Path("runs/tiny/gguf"), "tiny-Q8_0.gguf", system_prompt, family_of(merged_folder), n_ctx)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sft_router.core.errors import UsageError

# Go's text/template has no trim function and Ollama adds none, so "trim" and "rtrim" are recursive templates that
# cut one leading / trailing whitespace character at a time, comparing UTF-8 byte slices (len (slice . N) is
# len - N: templates have no arithmetic). Recursive `template` calls and `and` short-circuiting work from Go 1.18.
WHITESPACE = [chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()]  # what str.strip() strips


def _go_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Go string literal (\n, \u3000 ...)


def _cut_chain(side: str) -> str:
    """`$cut` = byte length of the whitespace character at the start (side "head") or end ("tail") of `.`."""
    branches = []
    for size in sorted({len(ch.encode()) for ch in WHITESPACE}):
        chars = " ".join(_go_string(ch) for ch in WHITESPACE if len(ch.encode()) == size)
        piece = f"slice . 0 {size}" if side == "head" else f"slice . (len (slice . {size}))"
        branches.append(f"if and (ge (len .) {size}) (eq ({piece}) {chars}) }}}}{{{{ $cut = {size} }}}}")
    return "{{- $cut := 0 }}{{ " + "{{ else ".join(branches) + "{{ end }}"


GO_TRIM = (
    '{{- define "rtrim" }}'
    + _cut_chain("tail")
    + '{{ if $cut }}{{ template "rtrim" (slice . 0 (len (slice . $cut))) }}{{ else }}{{ . }}{{ end }}{{ end }}\n'
    + '{{- define "trim" }}'
    + _cut_chain("head")
    + '{{ if $cut }}{{ template "trim" (slice . $cut) }}{{ else }}{{ template "rtrim" . }}{{ end }}{{ end }}\n'
)


# Greedy, as in `make eval`: the router must answer the same way every time. Ollama's defaults (temperature 0.8,
# a context of its own choosing) would sample and could cut the tool list; `num_ctx` is the GGUF's n_ctx.
GREEDY = {"temperature": 0, "top_k": 1}


def go_template(family) -> str:
    """Ollama's `template` for a model family (families.Family): the trim definitions, then its messages."""
    return GO_TRIM + family.ollama_messages


def ollama_params(family, n_ctx: int) -> dict:
    """Ollama's `params`: greedy, stopping at the family's end of turn, the GGUF's context."""
    return {"stop": [family.stop_token], **GREEDY, "num_ctx": n_ctx}


def render_modelfile(gguf_name: str, system_prompt: str, family, n_ctx: int) -> str:
    template = go_template(family)
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', "", f'SYSTEM """{system_prompt}"""', ""]
    for key, value in ollama_params(family, n_ctx).items():
        lines += (
            [f"PARAMETER {key} {json.dumps(v)}" for v in value]
            if isinstance(value, list)
            else [f"PARAMETER {key} {value}"]
        )
    return "\n".join(lines) + "\n"


def write_ollama_files(folder: Path, gguf_name: str, system_prompt: str, family, n_ctx: int) -> list[Path]:
    """template, params and system (read by `ollama run hf.co/...`) and the Modelfile (for `ollama create`)."""
    if '"""' in system_prompt:
        raise UsageError('the system prompt contains """, which a Modelfile cannot quote: rephrase it')
    files = {
        "template": go_template(family),
        "params": json.dumps(ollama_params(family, n_ctx), indent=2) + "\n",
        "system": system_prompt,
        "Modelfile": render_modelfile(gguf_name, system_prompt, family, n_ctx),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return [folder / name for name in files]


def modelfile_section(text: str, keyword: str) -> str:
    """The triple-quoted TEMPLATE or SYSTEM of a Modelfile's text."""
    start = text.index(f'{keyword} """') + len(f'{keyword} """')
    return text[start : text.index('"""', start)]
