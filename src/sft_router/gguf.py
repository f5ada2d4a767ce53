"""Convert the merged model to GGUF with llama.cpp's own converter, pinned, then check the file.

The converter comes from the `llama-cpp-python` sdist on PyPI (it vendors one llama.cpp commit), fetched
at run time into the cache and checked against its hash; nothing of llama.cpp is committed. Set
LLAMA_CPP_DIR to use your own llama.cpp checkout instead.

Usage: python -m sft_router.gguf --config recipes/tiny/router.yaml   (writes runs/<name>/gguf/<name>-Q8_0.gguf)
       GGUF_BACKEND=space python -m sft_router.gguf --config ...   (asks ggml-org/gguf-my-repo instead)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError, one_line_errors
from sft_router.core.run_folder import FILE_TYPES, gguf_path, stage_output
from sft_router.modeling.context_length import context_length
from sft_router.modeling.families import family_of
from sft_router.modeling.llama_runtime import (
    LLAMA_CPP_PYTHON,
    fetch_converter,
    llama_cpp_commit,
    run_pinned,
    run_with_pinned_gguf,
)


def converter_input(merged: Path, staging: Path, card_metadata: str = "") -> Path:
    """The merged folder as the converter must see it: tokenizer_config.json with `added_tokens_decoder`
    (`make merge` writes it; a merged folder from elsewhere may lack it) and, for a tokenizer without a BOS token
    (Qwen's), `add_bos_token: false`, and a README.md holding the model card's
    metadata, from which the converter writes general.name, license, base_model.*, datasets, tags and languages
    (without it, it names the model after the staging folder and leaves the rest out)."""
    staging.mkdir(parents=True, exist_ok=True)
    for item in merged.iterdir():
        if item.name not in ("tokenizer_config.json", "README.md"):
            (staging / item.name).symlink_to(item.resolve())
    if card_metadata:
        (staging / "README.md").write_text(f"---\n{card_metadata}\n---\n")
    from sft_router.modeling.loading import added_tokens_decoder

    config = json.loads((merged / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = added_tokens_decoder(merged)
    if not config.get("bos_token"):  # llama.cpp adds a BOS to a SentencePiece vocabulary unless the GGUF says not to
        config["add_bos_token"] = False
    (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return staging


def convert_to_gguf(merged: Path, outfile: Path, outtype: str, card_metadata: str = "") -> None:
    """Convert, then name the family's end of turn (Gemma: <end_of_turn>) the end-of-turn token in the metadata.

    The converter leaves tokenizer.ggml.eot_token_id unset for Gemma 3. llama.cpp finds <end_of_turn> by its
    text anyway; runtimes that read the key instead would not stop, so it is written explicitly (the
    Modelfile also names the stop string).
    """
    family = family_of(merged)
    converter = fetch_converter()
    raw = outfile.with_name(outfile.name + ".raw")
    staging = outfile.with_name(outfile.name + ".input")
    try:
        source = converter_input(merged, staging, card_metadata)
        run_pinned(
            converter,
            "convert_hf_to_gguf.py",
            [str(source), "--outtype", outtype, "--outfile", str(raw)],
            f"converter on {merged}",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    run_pinned(
        converter,
        "gguf-py/gguf/scripts/gguf_new_metadata.py",
        [str(raw), str(outfile), "--special-token", "eot", family.stop_token, "--force"],
        "metadata writer",
    )
    raw.unlink()
    if family.gguf_flags:
        set_gguf_flags(converter, outfile, dict(family.gguf_flags))


# The pinned gguf-py's own metadata copier (gguf_new_metadata.py has no option for these keys), run as it runs.
SET_FLAGS = """
import json, sys
import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
reader = gguf.GGUFReader(sys.argv[1], "r")
writer = gguf.GGUFWriter(sys.argv[2], arch=reader.get_field("general.architecture").contents(), endianess=reader.endianess)
if (alignment := reader.get_field("general.alignment")) is not None:
    writer.data_alignment = alignment.contents()
flags = {key: MetadataDetails(gguf.GGUFValueType.BOOL, value) for key, value in json.loads(sys.argv[3]).items()}
copy_with_new_metadata(reader, writer, flags, [])
"""


def set_gguf_flags(converter: Path, path: Path, flags: dict[str, bool]) -> None:
    """Write boolean keys into the GGUF at `path` (a model family's converter quirk, Family.gguf_flags)."""
    staged = path.with_name(path.name + ".flags")
    try:
        argv = ["-c", SET_FLAGS, str(path), str(staged), json.dumps(flags)]
        run_with_pinned_gguf(converter, argv, f"gguf-py metadata writer on {path.name}")
    except UsageError:
        staged.unlink(missing_ok=True)
        raise
    staged.replace(path)


def describe_gguf(path: Path, family=None) -> dict:
    """The metadata a user's runtime depends on, read back with gguf.GGUFReader; `family` (default: the one its
    architecture names) says which turn tokens to look up."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key):
        field = reader.get_field(key)
        return field.contents() if field is not None else None

    tokens = value("tokenizer.ggml.tokens") or []

    def token_text(key):
        token_id = value(key)
        return tokens[token_id] if token_id is not None and token_id < len(tokens) else None

    def token_type(text):
        from gguf import TokenType

        return TokenType(value("tokenizer.ggml.token_type")[tokens.index(text)]).name if text in tokens else None

    family = family or family_of(value("general.architecture"))
    return {
        "architecture": value("general.architecture"),
        "tokenizer_model": value("tokenizer.ggml.model"),
        "has_scores": reader.get_field("tokenizer.ggml.scores") is not None,
        "chat_template": value("tokenizer.chat_template"),
        "bos_token": token_text("tokenizer.ggml.bos_token_id"),
        "add_bos_token": value("tokenizer.ggml.add_bos_token"),
        "eos_token": token_text("tokenizer.ggml.eos_token_id"),
        "eot_token": token_text("tokenizer.ggml.eot_token_id"),
        "eot_token_id": value("tokenizer.ggml.eot_token_id"),
        "turn_token_types": [token_type(turn) for turn in family.control_tokens],
        "tensor_types": sorted({tensor.tensor_type.name for tensor in reader.tensors}),
    }


def check_gguf(path: Path, chat_template: str, outtype: str, family=None) -> dict:
    """The GGUF's metadata against what `family` (default: the one its architecture names) needs: its turn tokens
    CONTROL, its stop tokens named, its BOS added exactly when it has one; one line listing what is wrong."""
    facts = describe_gguf(path, family)
    family = family or family_of(facts["architecture"])
    problems = []
    if facts["architecture"] != family.name:
        problems.append(f"architecture is {facts['architecture']}, not {family.name}")
    if (
        facts["tokenizer_model"] not in family.gguf_vocabs
        or (facts["tokenizer_model"] == "llama") != facts["has_scores"]
    ):
        problems.append(
            f"vocabulary is {facts['tokenizer_model']}, not {' or '.join(family.gguf_vocabs)} (SentencePiece with "
            "scores: is tokenizer.model beside the model?)"
        )
    if facts["chat_template"] != chat_template:
        problems.append("tokenizer.chat_template differs from the training template")
    if FILE_TYPES[outtype] not in facts["tensor_types"]:
        problems.append(f"no {FILE_TYPES[outtype]} tensors")
    if facts["eot_token"] != family.stop_token or facts["eos_token"] != family.eos_token:
        problems.append(
            f"stop tokens are eos={facts['eos_token']} eot={facts['eot_token']}, not {family.eos_token} and "
            f"{family.stop_token}"
        )
    if facts["turn_token_types"] != ["CONTROL"] * len(family.control_tokens):
        problems.append(f"{'/'.join(family.control_tokens)} are {facts['turn_token_types']}, not CONTROL tokens")
    if family.bos_token and (facts["bos_token"] != family.bos_token or not facts["add_bos_token"]):
        problems.append(f"{family.bos_token} is not the BOS token added to every prompt")
    if not family.bos_token and facts["add_bos_token"] is not False:
        problems.append("the GGUF does not say add_bos_token false, so llama.cpp would add a BOS this family lacks")
    if problems:
        raise UsageError(f"{path.name}: {'; '.join(problems)}")
    return facts


def convert_locally(recipe, out: Path, facts: dict) -> None:
    """Every requested GGUF type from runs/<name>/merged, checked, plus Ollama's files beside them; the context the
    GGUF is run with (context_length) goes to the manifest as `n_ctx` and to Ollama's `num_ctx`."""
    from sft_router.core.router_format import published_system_prompt
    from sft_router.datagen.catalog import load_catalog
    from sft_router.modeling.loading import load_tokenizer
    from sft_router.release.card_rendering import converter_metadata
    from sft_router.release.ollama_files import write_ollama_files

    template = Path(recipe.training.chat_template_path).read_text()
    card_metadata = converter_metadata(recipe)
    family = family_of(recipe.stage_dir("merged"))
    for outtype in recipe.export.gguf_outtypes:
        path = out / gguf_path(recipe, outtype).name
        convert_to_gguf(recipe.stage_dir("merged"), path, outtype, card_metadata)
        facts[path.name] = {
            k: v for k, v in check_gguf(path, template, outtype, family).items() if k != "chat_template"
        }
    facts["llama_cpp_commit"] = llama_cpp_commit()
    gguf_name = gguf_path(recipe, recipe.export.gguf_outtypes[0]).name
    system_prompt = published_system_prompt(recipe.data, load_catalog(recipe.data.catalog).tools.values())
    tokenizer = load_tokenizer(recipe, str(recipe.stage_dir("merged")))
    facts["n_ctx"] = context_length(recipe, tokenizer, system_prompt)
    write_ollama_files(out, gguf_name, system_prompt, family, facts["n_ctx"])


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    started = time.time()
    (recipe,) = parse_recipe(argv)
    merged = recipe.stage_dir("merged")
    if not (merged / "manifest.json").is_file():
        raise UsageError(f"no merged model in {merged}: run `make merge RECIPE={recipe.path}` first")
    unknown = [t for t in recipe.export.gguf_outtypes if t not in FILE_TYPES]
    if unknown or not recipe.export.gguf_outtypes:
        raise UsageError(
            f"{recipe.path}: gguf_outtypes has '{(unknown or [''])[0]}'; use some of {sorted(FILE_TYPES)}"
        )
    backend = os.environ.get("GGUF_BACKEND") or recipe.export.gguf_backend
    if backend == "space":
        from sft_router.release.gguf_space import convert_on_space

        convert_on_space(recipe)
        return
    if backend != "local":
        raise UsageError(f"gguf_backend is '{backend}'; use `local` or `space`")
    with stage_output(recipe, "gguf", started, llama_cpp_python=LLAMA_CPP_PYTHON, backend="local") as (out, facts):
        convert_locally(recipe, out, facts)
    print(f"gguf: {', '.join(str(gguf_path(recipe, t)) for t in recipe.export.gguf_outtypes)} and Ollama's files")


if __name__ == "__main__":
    main()
