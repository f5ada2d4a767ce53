"""The pipeline's stages in one list: each stage's module, make target, run folder and what it reads.

A stage is named by the folder it writes under runs/<run>/, with its manifest. What it reads (recipe sections and
keys, files named by recipe keys, upstream stages) is what `sft_router.core.run_folder` fingerprints into
runs/<run>/.inputs/<folder>.sha256; `sft_router.results` reads every stage's manifest; tests/test_layout.py keeps
the stage modules from importing one another; tests/test_stages.py holds the Makefile to this list. The commands that
are not stages (they write no stage folder of their own) are listed too, so that every `python -m sft_router.<module>`
the Makefile runs is here.

Usage: from sft_router.core.stages import STAGES, COMMANDS   (STAGES["adapter"].module == "train")
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """`make <target>` runs `python -m sft_router.<module> --config RECIPE <args>`, which writes runs/<run>/<folder>/.

    It reads recipe sections (all their keys), single keys, files named by recipe keys and the upstream stages'
    folders; `runtime`: it needs the llama.cpp runtime (make's order-only `| $(RUNTIME)`).
    """

    folder: str
    module: str
    target: str
    upstream: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    runtime: bool = False


@dataclass(frozen=True)
class Command:
    """`make <target>` runs `python -m sft_router.<module>`; not a stage of its own.

    `output`: the file it writes under runs/<run>/ when it has one; `part_of`: the stage whose fingerprint it shares;
    `upstream`: the stages whose manifests it needs; `runtime`: it needs the llama.cpp runtime.
    """

    name: str
    module: str
    target: str
    upstream: tuple[str, ...] = ()
    output: str | None = None
    part_of: str | None = None
    runtime: bool = False


_PIPELINE = (
    # The dataset is held to max_length under the base model's tokenizer and the chat template (context_length).
    Stage(
        "dataset",
        "data",
        "data",
        sections=("data",),
        keys=("training.max_length", "model.model_name_or_path"),
        files=("data.catalog", "data.system_prompt", "training.chat_template_path"),
    ),
    Stage(
        "hub-data",
        "publish",
        "push-data",
        upstream=("dataset",),
        sections=("publish",),
        keys=("hub_namespace",),
        args=("--only", "dataset"),
    ),
    Stage(
        "adapter",
        "train",
        "train",
        upstream=("dataset",),
        sections=("training", "model", "scenes"),
        files=("training.chat_template_path",),
    ),
    Stage(
        "merged", "merge", "merge", upstream=("adapter",), sections=("model",), files=("training.chat_template_path",)
    ),
    # Ollama's system file holds the catalog's tools in the system prompt. The general.* metadata names the repos
    # too, but a namespace or repo name changed at publish time does not reconvert the GGUF and rescore it.
    Stage(
        "gguf",
        "gguf",
        "gguf",
        upstream=("merged",),
        sections=("export",),
        keys=("training.max_length", "eval.eval_max_new_tokens", "eval.bfcl_max_new_tokens"),  # its n_ctx
        files=("training.chat_template_path", "data.catalog", "data.system_prompt"),
    ),
    Stage(
        "eval",
        "evaluate",
        "eval",
        upstream=("adapter", "gguf"),
        sections=("eval", "model"),
        files=("training.chat_template_path", "eval.handwritten"),
        runtime=True,
    ),
    # The card stage is a preview: publish renders the cards again for the namespace it pushes to.
    Stage("card", "card", "card", upstream=("dataset", "eval", "gguf"), sections=("publish",)),
    Stage("hub", "publish", "publish", upstream=("card",), sections=("publish",), keys=("hub_namespace",)),
)
STAGES: dict[str, Stage] = {stage.folder: stage for stage in _PIPELINE}

COMMANDS: tuple[Command, ...] = (
    Command("inputs", "core.run_folder", "inputs"),
    Command("runtime", "modeling.llama_runtime", "runtime"),
    Command("preflight", "modeling.base_models", "preflight"),
    # BFCL v4, part of the eval stage (`make eval` scores it when the recipe sets bfcl_categories).
    Command(
        "bfcl",
        "evaluation.bfcl",
        "bfcl",
        upstream=("adapter", "gguf"),
        output="eval/bfcl/summary.json",
        part_of="eval",
        runtime=True,
    ),
    Command("lookup", "evaluation.lookup", "lookup", upstream=("dataset",)),
    Command("serve", "serve", "serve", upstream=("gguf",), runtime=True),
    Command("results", "results", "results"),
)
