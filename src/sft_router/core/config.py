"""One recipe, every stage: parse a recipe YAML into TRL's dataclasses plus the project's own.

Every stage calls `parse_recipe()`, so a misspelled key fails in `data` just as it does in `train`.
Keys map 1:1 onto dataclass fields; command-line flags (`--learning_rate 1e-4`) override the YAML.

Usage: recipe = parse_recipe(["--config", "recipes/tiny/router.yaml"])
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from trl import ModelConfig, SFTConfig, TrlParser

from sft_router.core.errors import UsageError, read_yaml


@dataclass
class DataArguments:
    catalog: str = field(
        default="recipes/gemma-3-270m-it/catalog.yaml",
        metadata={"help": "Tool catalog and utterance templates (YAML) that the dataset is generated from."},
    )
    system_prompt: str = field(
        default="recipes/gemma-3-270m-it/system_prompt.txt",
        metadata={"help": "System prompt template; `{tools}` is replaced by the tool list shown in each prompt."},
    )
    num_train: int = field(default=6000, metadata={"help": "Rows in the train split."})
    num_validation: int = field(default=600, metadata={"help": "Rows in the validation split."})
    num_test: int = field(default=1200, metadata={"help": "Rows in the test split."})
    no_call_share: float = field(default=0.25, metadata={"help": "Share of rows whose answer is a reply, not a call."})
    max_distractors: int = field(
        default=4,
        metadata={"help": "Most tools a prompt shows beside a called one: a scene lists 1 to this + 1 tools."},
    )
    min_tools: int = field(
        default=2,
        metadata={
            "help": "Fewest tools a prompt shows (agents carry several): a scene shows min_tools to five, a "
            "quarter of scenes more, up to max_distractors + 1."
        },
    )
    scene_size: int = field(
        default=8,
        metadata={
            "help": "Requests per scene: rows that share one system prompt and tool list, adjacent in their "
            "split (1: a tool list per row)."
        },
    )
    dataset_seed: int = field(default=1234, metadata={"help": "Seed of the dataset generator."})
    num_test_unseen: int = field(
        default=200, metadata={"help": "Rows in the test_unseen split: calls to the catalog's `unseen_tools` only."}
    )
    functions: str | None = field(
        default=None,
        metadata={
            "help": "Spec of BFCL-style functions (YAML; sft_router.datagen.functions): typed arguments in English "
            "prose; its held-out domains make up the test_procedural split."
        },
    )
    function_share: float = field(
        default=0.0,
        metadata={
            "help": "Share of train, validation and test rows in scenes of the `functions` spec's functions; "
            "the other rows keep the catalog's mix (no_call_share, procedural_share)."
        },
    )
    function_mask_rate: float = field(
        default=0.0,
        metadata={
            "help": "Share of function scenes whose function names are masked as func_xx (read the description)."
        },
    )
    num_test_procedural: int = field(
        default=0,
        metadata={"help": "Rows in the test_procedural split: functions of the spec's `held_out_domains` only."},
    )
    procedural_share: float = field(
        default=0.2, metadata={"help": "Share of train rows that call a procedurally generated tool."}
    )
    correction_rate: float = field(
        default=0.05, metadata={"help": "Share of calls whose message corrects a value (7点，不对，7点半)."}
    )
    noise_typo: float = field(
        default=0.08, metadata={"help": "Rate of typos (zh homophone/pinyin slips, en letters)."}
    )
    noise_filler: float = field(default=0.1, metadata={"help": "Rate of fillers and particles (嗯，/吧, um/ok?)."})
    noise_polite: float = field(default=0.1, metadata={"help": "Rate of politeness (麻烦/谢谢, please/thanks)."})
    noise_curt: float = field(default=0.1, metadata={"help": "Rate of curt forms (no 帮我/please, no end mark)."})
    noise_context: float = field(default=0.08, metadata={"help": "Rate of extra context before the request."})
    noise_mixed: float = field(default=0.08, metadata={"help": "Rate of mixed Chinese/English wording."})
    noise_number_words: float = field(
        default=0.15, metadata={"help": "Rate at which a copied time or date with digits is said in words."}
    )
    noise_informal: float = field(
        default=0.15, metadata={"help": "Rate of informal spellings (please -> pls, you -> u, 什么 -> 啥)."}
    )
    noise_lowercase: float = field(
        default=0.9, metadata={"help": "Rate at which an English message is typed in lower case, no full stop."}
    )
    noise_value_typo: float = field(
        default=0.05, metadata={"help": "Rate of a slip inside a value, copied into the call as typed (rule 1)."}
    )
    noise_second_request: float = field(
        default=0.05, metadata={"help": "Rate of a second request after a call's (rule 9: the call serves the first)."}
    )


@dataclass
class EvalArguments:
    eval_max_new_tokens: int = field(default=96, metadata={"help": "Most tokens generated per test prompt."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts decoded together (left padded)."})
    eval_limit: int | None = field(
        default=None, metadata={"help": "Score only the first N rows of each evaluated split (None: all)."}
    )
    eval_splits: list[str] = field(
        default_factory=lambda: ["test"],
        metadata={
            "help": "Splits `make eval` scores, `test` first: generated ones (test, test_unseen, "
            "test_procedural, validation) and `handwritten` (the `handwritten` file)."
        },
    )
    handwritten: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of hand-written test rows (user message, tools shown, expected call or null), "
            "scored as the `handwritten` split."
        },
    )
    bfcl_categories: list[str] = field(
        default_factory=list,
        metadata={
            "help": "BFCL v4 categories `make eval` also scores (simple_python, multiple, irrelevance); "
            "empty: none (`make bfcl` then scores all three)."
        },
    )
    bfcl_limit: int | None = field(
        default=None,
        metadata={"help": "Cases per BFCL category: a seeded sample, the same for every variant (None: all)."},
    )
    bfcl_max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per BFCL case."})


@dataclass
class SceneArguments:
    scene_packing: bool = field(
        default=True,
        metadata={
            "help": "Train each scene (rows sharing one system prompt) as one sequence: the shared prefix once, "
            "then every request (sft_router.modeling.scene_packing); false: every row padded on its own, for model "
            "families whose attention takes no per-layer mask mapping."
        },
    )


@dataclass
class ExportArguments:
    gguf_outtypes: list[str] = field(
        default_factory=lambda: ["q8_0"], metadata={"help": "GGUF types to write: q8_0, f16, bf16, f32."}
    )
    gguf_backend: str = field(
        default="local", metadata={"help": "`local` (pinned llama.cpp converter) or `space` (ggml-org/gguf-my-repo)."}
    )


@dataclass
class PublishArguments:
    hub_namespace: str | None = field(
        default=None, metadata={"help": "User or organisation on the Hub; the HUB_NAMESPACE variable wins."}
    )
    model_repo: str = field(default="gemma-3-270m-it-router", metadata={"help": "Name of the merged-model repo."})
    gguf_repo: str = field(default="gemma-3-270m-it-router-GGUF", metadata={"help": "Name of the GGUF repo."})
    dataset_repo: str = field(default="tool-router-scenarios", metadata={"help": "Name of the dataset repo."})
    private: bool = field(default=False, metadata={"help": "Create the repos private."})
    base_model_id: str = field(
        default="google/gemma-3-270m-it", metadata={"help": "Hub id of the base model, for the cards' metadata."}
    )


PROJECT_ARGUMENTS = (DataArguments, EvalArguments, SceneArguments, ExportArguments, PublishArguments)


@dataclass
class Recipe:
    path: Path
    data: DataArguments
    eval: EvalArguments
    scenes: SceneArguments
    export: ExportArguments
    publish: PublishArguments
    training: SFTConfig
    model: ModelConfig

    @property
    def name(self) -> str:
        return self.training.run_name

    @property
    def run_dir(self) -> Path:
        return Path("runs") / self.name

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _unknown_key_error(path: str, unknown: list[str], known: list[str]) -> UsageError:
    key = unknown[0].lstrip("-")
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see `python -m sft_router.train --help` for the keys"
    return UsageError(f"{path}: unknown recipe key '{key}' ({hint}); fix or remove it")


def parse_recipe(argv: list[str] | None = None, extra: tuple[type, ...] = ()) -> tuple[Recipe, ...]:
    """Parse `--config RECIPE [--flag value ...]`; returns the Recipe, then one instance per `extra` dataclass."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        raise UsageError("no recipe given: pass --config recipes/<model>/<recipe>.yaml")
    index = argv.index("--config")
    if index + 1 == len(argv) or argv[index + 1].startswith("--"):
        raise UsageError("--config needs a value: pass --config recipes/<model>/<recipe>.yaml")
    path = argv[index + 1]
    config = read_recipe_file(path)
    argv = _activation_checkpointing_by_its_new_name(config, _bf16_only_where_supported(config, argv))
    types = (*PROJECT_ARGUMENTS, SFTConfig, ModelConfig, *extra)
    parser = TrlParser(types)
    known = sorted({f.name for t in types for f in fields(t)})
    _check_value_types(path, config, parser)

    def error(message: str):  # argparse's own error, as one line instead of usage and exit
        flag = re.match(r"argument (--\w+)", message)
        where = "recipe key" if flag and flag.group(1)[2:] in config and flag.group(1) not in argv else "command line"
        raise UsageError(f"{path}: {where}: {message}; fix the value")

    parser.error = error
    try:
        parsed = parser.parse_args_and_config(argv, return_remaining_strings=True, separate_remaining_strings=True)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: {_first_line(exc)}") from exc
    *instances, from_config, from_cli = parsed
    if from_config:
        raise _unknown_key_error(path, from_config, known)
    if from_cli:
        raise _unknown_key_error("command line", from_cli, known)
    data, eval_args, scenes, export, publish, training, model, *rest = instances
    _check_run_name(path, training.run_name)
    _check_values(path, data, training)
    training.output_dir = str(Path("runs") / training.run_name / "train")
    recipe = Recipe(Path(path), data, eval_args, scenes, export, publish, training, model)
    return (recipe, *rest)


def read_recipe_file(path: str) -> dict:
    """The recipe's YAML mapping; a missing file or a syntax error fails naming the line and column."""
    if not Path(path).is_file():
        raise UsageError(f"recipe {path} does not exist: pass an existing file, e.g. recipes/tiny/router.yaml")
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise UsageError(f"{path}: a recipe is a YAML mapping of `key: value` lines; see recipes/tiny/router.yaml")
    return config


EXPECTED = {int: "a whole number", float: "a number", "string_to_bool": "true or false"}


def _check_value_types(path: str, config: dict, parser) -> None:
    """A recipe value of the wrong type fails naming the recipe key (argparse would blame a command-line flag)."""
    actions = {action.dest: action for action in parser._actions}
    for key, value in config.items():
        action = actions.get(key)
        if action is None or action.type in (None, str):
            continue
        if isinstance(value, list) and action.nargs in (None, "?"):
            raise UsageError(f"{path}: recipe key '{key}' is a list; give it one value")
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not _fits(item, action.type):
                what = EXPECTED.get(
                    action.type, EXPECTED.get(getattr(action.type, "__name__", ""), f"a valid `{key}` (see --help)")
                )
                raise UsageError(f"{path}: recipe key '{key}' is {item!r}, not {what}; fix its value")


def _fits(item, expected) -> bool:
    if isinstance(item, dict | list):
        return False
    if isinstance(item, bool) and expected in (int, float):
        return False
    if expected is int and isinstance(item, float):
        return False
    if getattr(expected, "__name__", "") == "string_to_bool" and not isinstance(
        item, bool | str
    ):  # transformers' or TRL's copy
        return False
    try:
        expected(item if isinstance(item, str) else str(item))
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return True


def _check_run_name(path: str, run_name) -> None:
    """The Makefile finds a run by its recipe's folder: a run_name naming another folder would overwrite that run."""
    folder = Path(path).resolve().parent.name
    if not isinstance(run_name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", run_name):
        raise UsageError(f"{path}: set `run_name` to the recipe folder's name ({folder}; letters, digits, . _ -)")
    if run_name != folder:
        raise UsageError(
            f"{path}: run_name '{run_name}' is not the recipe folder's name '{folder}'; set `run_name: {folder}` "
            "(it names runs/<run_name>/, and another recipe's run would be overwritten)"
        )


def _check_values(path: str, data: DataArguments, training: SFTConfig) -> None:
    for key in ("num_train", "num_test"):
        if getattr(data, key) < 1:
            raise UsageError(f"{path}: `{key}` is {getattr(data, key)}; set it to at least 1")
    template = training.chat_template_path
    if template and not Path(template).is_file():
        raise UsageError(f"{path}: chat_template_path {template} does not exist; point it at a .jinja file")


# CPU flags of bf16 matrix units: with one, CPU autocast to bf16 runs a real-weights step 1.33x faster than fp32
# (bench/train_step.py --variants packed,packed-bf16, AMD EPYC with avx512_bf16); without, torch emulates bf16, slower.
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_flags() -> set[str]:
    """This CPU's flags from /proc/cpuinfo (empty where there is none): the fast paths are chosen from them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def bf16_supported() -> bool:
    """Whether this machine trains a `bf16: true` recipe in bf16: a GPU that has it, or a CPU with bf16 units
    (fp32 weights, matmuls under CPU autocast; chosen from /proc/cpuinfo's flags at run time)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(CPU_BF16_FLAGS & cpu_flags())


def _bf16_only_where_supported(config: dict, argv: list[str]) -> list[str]:
    """A bf16 recipe still parses on any machine (for data, eval, tests): it trains in fp32 where bf16 is emulated.
    On a CPU only a CPU recipe (`use_cpu: true`) that sets `bf16: true` itself trains in bf16 (TRL's default would
    turn it on for every recipe), and evaluation stays in the weights' fp32 (`bf16_full_eval` off)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return argv
    asked = config.get("bf16") is True and config.get("use_cpu") is True and bf16_supported()
    return ["--bf16", str(asked).lower(), "--bf16_full_eval", "false", *argv]


def _activation_checkpointing_by_its_new_name(config: dict, argv: list[str]) -> list[str]:
    """TRL's SFTConfig defaults the deprecated `gradient_checkpointing` to True, so transformers warns at every
    parse; passing the default under its new name (`activation_checkpointing`) keeps the behaviour, not the
    warning. A recipe or flag that sets either name itself is left as it is."""
    names = ("activation_checkpointing", "gradient_checkpointing")
    if set(config) & set(names) or any(arg.lstrip("-") in names for arg in argv):
        return argv
    return ["--activation_checkpointing", "true", *argv]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def namespace(recipe) -> str:
    return os.environ.get("HUB_NAMESPACE") or recipe.publish.hub_namespace or "your-namespace"


def repo_ids(recipe) -> dict[str, str]:
    ns = namespace(recipe)
    publish = recipe.publish
    return {
        "model": f"{ns}/{publish.model_repo}",
        "gguf": f"{ns}/{publish.gguf_repo}",
        "dataset": f"{ns}/{publish.dataset_repo}",
    }
