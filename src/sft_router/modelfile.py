"""The Ollama Modelfile written beside the GGUF: the training prompt format, stop token and greedy decoding built in.

Ollama renders prompts with a Go template, not the GGUF's Jinja chat template, so the template below
re-states the training format (recipes/gemma-3-270m-it/chat_template.jinja) in Go syntax: Gemma turns,
the system prompt folded into the first user turn (Gemma has no system role; the router was trained
that way), `<start_of_turn>model` to open the answer. Ollama adds <bos> itself (the GGUF sets
tokenizer.ggml.add_bos_token), so the template does not. tests/test_gguf_modelfile.py renders it for
sample conversations and compares with the Jinja template's output.

Usage: write_modelfile(Path("runs/tiny/gguf/Modelfile"), "tiny-Q8_0.gguf")
"""

from __future__ import annotations

from pathlib import Path

# Trim markers ({{- -}}) keep the template's own newlines out of the prompt; the only newlines emitted
# are the ones inside the quoted strings, exactly where the Jinja template puts them.
GO_TEMPLATE = r"""{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}
{{- $first := true }}
{{- range .Messages }}
{{- if eq .Role "user" }}
{{- "<start_of_turn>user\n" }}
{{- if and $first $system }}{{ $system }}{{ "\n\n" }}{{ end }}
{{- $first = false }}
{{- .Content }}{{ "<end_of_turn>\n" }}
{{- else if eq .Role "assistant" }}
{{- "<start_of_turn>model\n" }}{{ .Content }}{{ "<end_of_turn>\n" }}
{{- end }}
{{- end }}
{{- "<start_of_turn>model\n" }}"""

# Greedy, as in `make eval`: the router must answer the same way every time.
PARAMETERS = (("stop", '"<end_of_turn>"'), ("temperature", "0"), ("top_k", "1"), ("num_ctx", "4096"))


def render_modelfile(gguf_name: str) -> str:
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{GO_TEMPLATE}"""', ""]
    lines += [f"PARAMETER {key} {value}" for key, value in PARAMETERS]
    return "\n".join(lines) + "\n"


def write_modelfile(path: Path, gguf_name: str) -> Path:
    path.write_text(render_modelfile(gguf_name))
    return path


def modelfile_template(text: str) -> str:
    """The TEMPLATE of a Modelfile's text (between the triple quotes)."""
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    return text[start : text.index('"""', start)]
