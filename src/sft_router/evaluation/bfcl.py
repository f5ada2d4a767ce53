"""BFCL v4 (the Berkeley Function Calling Leaderboard), graded by BFCL's own checker: the field's yardstick.

Three non-live single-turn categories: `simple_python` (400 cases, one function shown), `multiple` (200, two to
four shown, one right) and `irrelevance` (240, none fits). Each case is prompted the way the router is: the
recipe's system prompt with `{tools}` filled by the case's functions in the router's tool format
(`router_format.render_tool`; BFCL's types mapped to JSON schema by BFCL's own GORILLA_TO_OPENAPI table, so `dict`
becomes `object`, `float` `number`, `tuple` `array`, `any` `string`), then the question as the user message.
Greedy decoding; the answer is parsed by the project's lenient parser (`scoring.parse_lenient`) into
`[{name: arguments}]`, the shape BFCL's decoders hand its checker, and graded by BFCL's `ast_checker` unchanged.
An irrelevance case is right when the answer attempts no call (`scoring.attempted_call`): BFCL's runner counts it
right when nothing decodes to a call, so a malformed call, right there, is wrong here. A case whose answer holds no
parsable call is wrong in the other two categories. `contamination` finds BFCL questions and function names in
generated rows (tests/test_bfcl.py runs it on every split of the demo and published recipes).

How BFCL's checker is loaded: `bfcl-eval` is pinned (BFCL_EVAL_VERSION) and installed with `--no-deps` (its
requirements pin numpy 1.26 and pull every provider SDK). Its package `__init__` files are empty, and
`bfcl_eval/eval_checker/ast_eval/ast_checker.py` imports BFCL's own enums, type tables and Java/JS converters,
which import nothing else; its one heavy import is `bfcl_eval.constants.model_config`, read only for
MODEL_CONFIG_MAPPING (whether a model's API turned `.` in function names into `_`), and that module imports the
whole model-handler registry. So `load_checker` imports `ast_checker.py` as shipped, with that one module
stood in, during the import only, by a mapping with a single entry for this router, `underscore_to_dot=False`:
the router is shown BFCL's function names with their dots and answers with them, so names are compared as
written. Every line of checking code that runs is BFCL's.

Outputs: runs/<name>/eval/bfcl/<variant>/{metrics.json,predictions.jsonl}, and in runs/<name>/eval/bfcl/ the
table (comparison.md), the chart (bfcl.png) and summary.json. The answers come from the evaluation's variants
(sft_router.evaluation.variants; `make eval` hands over the ones its splits were scored with, so no model is loaded
again): `baseline` is the base model under transformers; `finetuned` is the Q8_0 GGUF under llama.cpp on a CPU, where
that runtime is the faster one, else the adapter under transformers (on a GPU, or with no GGUF yet); metrics.json says
which runtime scored. `make eval` runs this when the recipe sets `bfcl_categories`; `bfcl_limit` scores a seeded
sample of that many cases per category.

Usage: python -m sft_router.evaluation.bfcl --config recipes/gemma-3-270m-demo/router.yaml          (scores; make bfcl)
       python -m sft_router.evaluation.bfcl --config recipes/gemma-3-270m-demo/router.yaml --show   (prints the table)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import random
import sys
import time
import types
from importlib import metadata
from pathlib import Path

from sft_router.core import router_format
from sft_router.core.errors import UsageError, one_line_errors
from sft_router.core.router_format import load_system_prompt, render_system_prompt
from sft_router.evaluation.markdown_tables import markdown_table, percent_cell
from sft_router.evaluation.scoring import BOOTSTRAP, attempted_call, bootstrap_interval, parse_lenient

BFCL_EVAL_VERSION = "2026.3.23"  # the same pin as pyproject.toml (tests/test_bfcl.py holds them equal)
CATEGORIES = ("simple_python", "multiple", "irrelevance")
SAMPLE_SEED = 0  # `bfcl_limit` draws the same cases for every variant and every recipe
CHECKER_MODEL_NAME = "sft-router"
BFCL_DATASET_ID = "gorilla-llm/Berkeley-Function-Calling-Leaderboard"  # where BFCL publishes its data on the Hub
INSTALL_HINT = f"run `make install` (installs bfcl-eval=={BFCL_EVAL_VERSION} without its dependencies)"
# Cited, not measured: Google's FunctionGemma model card (BFCL simple and irrelevance accuracy).
REFERENCE_MODEL = "FunctionGemma 270M"
REFERENCE = {
    "name": f"{REFERENCE_MODEL} (cited)",
    "source": "https://huggingface.co/google/functiongemma-270m-it",
    "accuracy": {"simple_python": 0.616, "irrelevance": 0.737},
}


def package_dir() -> Path:
    """The installed bfcl_eval package (found without importing it), at the pinned version."""
    from importlib.util import find_spec

    try:
        version = metadata.version("bfcl-eval")
    except metadata.PackageNotFoundError:
        version = None
    if version != BFCL_EVAL_VERSION:
        raise UsageError(
            f"bfcl-eval {version or 'is not installed'}, the project pins {BFCL_EVAL_VERSION}: {INSTALL_HINT}"
        )
    return Path(find_spec("bfcl_eval").origin).parent


@functools.cache
def load_checker():
    """BFCL's ast_checker module, its code unchanged; model_config is stood in for during the import (see above)."""
    package_dir()
    name = "bfcl_eval.constants.model_config"
    stand_in = types.ModuleType(name)
    stand_in.MODEL_CONFIG_MAPPING = {CHECKER_MODEL_NAME: types.SimpleNamespace(underscore_to_dot=False)}
    saved = sys.modules.get(name)
    sys.modules[name] = stand_in
    try:
        return importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_cases(category: str, limit: int | None = None) -> list[dict]:
    """The category's cases in file order, each with its `ground_truth` where BFCL gives one; `limit`: a seeded
    sample of that many (still in file order)."""
    if category not in CATEGORIES:
        raise UsageError(
            f"unknown BFCL category '{category}' (recipe key bfcl_categories): use {', '.join(CATEGORIES)}"
        )
    data = package_dir() / "data"
    cases = read_jsonl(data / f"BFCL_v4_{category}.json")
    answers = data / "possible_answer" / f"BFCL_v4_{category}.json"
    if answers.is_file():
        truth = {row["id"]: row["ground_truth"] for row in read_jsonl(answers)}
        cases = [{**case, "ground_truth": truth[case["id"]]} for case in cases]
    if limit is not None and limit < len(cases):
        keep = sorted(random.Random(f"{SAMPLE_SEED}:{category}").sample(range(len(cases)), limit))
        cases = [cases[i] for i in keep]
    return cases


def json_schema(schema: dict) -> dict:
    """A BFCL parameter schema with every `type` mapped to JSON schema by BFCL's own table (dict -> object ...)."""
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    return router_format.json_schema(schema, GORILLA_TO_OPENAPI)


def router_tool(function: dict) -> dict:
    """A BFCL function doc as a catalog tool (what `router_format.render_tool` renders into the prompt)."""
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    return router_format.router_tool(function, GORILLA_TO_OPENAPI)


def case_prompt(case: dict, system_template: str) -> list[dict]:
    """The router's prompt for one case: the system prompt listing the case's functions, then its question."""
    system = render_system_prompt(system_template, [router_tool(f) for f in case["function"]])
    return [{"role": "system", "content": system}, *case["question"][0]]


def grade(case: dict, category: str, output: str) -> dict:
    """Parse one answer with the project's parser and grade it with BFCL's checker."""
    call = parse_lenient(output)
    attempted = call is not None or attempted_call(output)
    graded = {"parsed": call, "call_attempted": attempted}
    if category == "irrelevance":
        return {**graded, "valid": not attempted, "error": "a call was attempted" if attempted else None}
    if call is None:
        return {**graded, "valid": False, "error": "no parsable call" if attempted else "no call attempted"}
    checker = load_checker()
    language = importlib.import_module("bfcl_eval.constants.enums").Language.PYTHON
    model_output = [{call["tool_name"]: call["arguments"]}]
    try:
        result = checker.ast_checker(
            case["function"], model_output, case["ground_truth"], language, category, CHECKER_MODEL_NAME
        )
    except Exception as exc:  # BFCL's checker assumes well-typed output; a crash on model output grades it wrong
        result = {"valid": False, "error": [f"checker raised {type(exc).__name__}: {exc}"]}
    return {**graded, "valid": bool(result["valid"]), "error": "; ".join(map(str, result.get("error", []))) or None}


def category_metrics(grades: list[dict]) -> dict:
    correct = [g["valid"] for g in grades]
    accuracy = sum(correct) / len(correct) if correct else 0.0
    return {
        "accuracy": accuracy,
        "accuracy_ci95": bootstrap_interval(correct, **BOOTSTRAP),
        "correct": sum(correct),
        "cases": len(correct),
    }


def write_bfcl_variant(out: Path, cases: dict[str, list[dict]], outputs: dict[str, list[str]], runtime: str) -> dict:
    """Grade one variant's answers per category; write its metrics.json and predictions.jsonl under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"runtime": runtime, "categories": {}}
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for category, rows in cases.items():
            grades = [grade(case, category, output) for case, output in zip(rows, outputs[category])]
            metrics["categories"][category] = category_metrics(grades)
            for case, output, graded in zip(rows, outputs[category], grades):
                record = {"id": case["id"], "category": category, "output": output, **graded}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    metrics.update(
        benchmark=f"BFCL v4 (bfcl-eval {BFCL_EVAL_VERSION})",
        checker="bfcl_eval ast_checker",
        bootstrap=dict(BOOTSTRAP, method="percentile"),
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return metrics


def selected_cases(recipe) -> dict[str, list[dict]]:
    """The recipe's categories (all three when it names none), each limited to `bfcl_limit` cases."""
    chosen = recipe.eval.bfcl_categories or list(CATEGORIES)
    return {category: load_cases(category, recipe.eval.bfcl_limit) for category in chosen}


def category_prompts(tokenizer, cases: list[dict], system_template: str, limit: int, category: str):
    """One category's cases as the router's prompts (prompts.PromptSet: rendered once, cases showing the same
    functions decoded together as one scene), answers capped at `limit` (bfcl_max_new_tokens)."""
    from sft_router.modeling.prompts import prompt_set

    rows = [{"prompt": case_prompt(case, system_template)} for case in cases]
    return prompt_set(tokenizer, rows, limit, f"bfcl {category}")


def llama_cpp_is_faster(recipe) -> bool:
    """This llama.cpp build runs on the CPU: on a GPU (unless the recipe says `use_cpu`) transformers is faster."""
    import torch

    return not (torch.cuda.is_available() and not recipe.training.use_cpu)


def bfcl_variants(recipe, variants: dict) -> dict:
    """BFCL's two of the evaluation's variants (sft_router.evaluation.variants): `baseline`, and as `finetuned` the
    fine-tuned model under the faster runtime, its GGUF (the `gguf` variant) where that is llama.cpp, else
    transformers."""
    from sft_router.evaluation.gguf_eval import eval_gguf_file

    gguf = variants.get("gguf")
    use_gguf = gguf is not None and llama_cpp_is_faster(recipe) and eval_gguf_file(recipe).is_file()
    return {"baseline": variants["baseline"], "finetuned": gguf if use_gguf else variants["finetuned"]}


def run_bfcl(recipe, tokenizer, variants: dict, out: Path, cases: dict[str, list[dict]] | None = None) -> dict:
    """Ask BFCL's two variants (bfcl_variants) every case of `cases` (default: the recipe's selection); write each
    variant's files, the table, the chart and summary.json under `out`."""
    cases = cases or selected_cases(recipe)
    template, limit = load_system_prompt(recipe.data.system_prompt), recipe.eval.bfcl_max_new_tokens
    prompts = {
        category: category_prompts(tokenizer, rows, template, limit, category) for category, rows in cases.items()
    }
    results = {}
    for name, variant in bfcl_variants(recipe, variants).items():
        answers = {category: variant.answer(asked) for category, asked in prompts.items()}
        results[name] = write_bfcl_variant(out / name, cases, answers, variant.runtime)
    summary = {
        "variants": results,
        "reference": REFERENCE,
        "limit": recipe.eval.bfcl_limit,
        "sample_seed": SAMPLE_SEED,
    }
    (out / "comparison.md").write_text(bfcl_section(results), encoding="utf-8")
    plot_bfcl(results, out / "bfcl.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def accuracy_cell(scores: dict | None) -> str:
    """`61.6 [52.0, 70.1] (n=400)`: one category's accuracy in % with its interval and its number of cases."""
    return f"{percent_cell(scores, 'accuracy')} (n={scores['cases']})" if scores else "-"


def bfcl_table(results: dict[str, dict]) -> str:
    """Markdown: accuracy (%) per category with bootstrap 95% intervals per variant, then the cited reference row."""
    categories = list(dict.fromkeys(c for metrics in results.values() for c in metrics["categories"]))
    rows = [
        [variant, metrics["runtime"], *(accuracy_cell(metrics["categories"].get(c)) for c in categories)]
        for variant, metrics in results.items()
    ]
    cited = [percent_cell(REFERENCE["accuracy"], c) for c in categories]
    rows.append([REFERENCE["name"], f"[model card]({REFERENCE['source']}), not measured here", *cited])
    return markdown_table(["model", "runtime", *categories], rows)


def bfcl_section(results: dict[str, dict]) -> str:
    """The BFCL part of a comparison page: what was run, then the table."""
    return (
        f"## BFCL v4 (bfcl-eval {BFCL_EVAL_VERSION}, graded by its own `ast_checker`)\n\n"
        "Accuracy in %, with percentile bootstrap 95% intervals over the cases; n cases per category "
        "(a seeded sample when the recipe sets `bfcl_limit`). FunctionGemma 270M's figures are copied from its "
        "model card, not measured here. Each case is prompted like the router (the recipe's system prompt, the "
        "case's functions in the router's tool format) and parsed by the project's parser; see sft_router/bfcl.py."
        f"\n\n{bfcl_table(results)}\n"
    )


def plot_bfcl(results: dict[str, dict], path: Path) -> None:
    """Bars per category, one per variant, with bootstrap intervals; the cited reference as a marker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    categories = list(dict.fromkeys(c for metrics in results.values() for c in metrics["categories"]))
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(results)
    for index, (variant, metrics) in enumerate(results.items()):
        scores = [metrics["categories"].get(c) or {"accuracy": 0.0, "accuracy_ci95": [0.0, 0.0]} for c in categories]
        xs = [x + (index - (len(results) - 1) / 2) * width for x in range(len(categories))]
        values = [100 * score["accuracy"] for score in scores]
        below = [v - 100 * score["accuracy_ci95"][0] for v, score in zip(values, scores)]
        above = [100 * score["accuracy_ci95"][1] - v for v, score in zip(values, scores)]
        axes.bar(xs, values, width, yerr=[below, above], capsize=3, label=f"{variant} ({metrics['runtime']})")
    cited = [(x, 100 * REFERENCE["accuracy"][c]) for x, c in enumerate(categories) if c in REFERENCE["accuracy"]]
    if cited:
        axes.scatter(*zip(*cited), marker="D", color="black", zorder=3, label=REFERENCE["name"])
    axes.set_xticks(range(len(categories)), categories)
    axes.set_ylim(0, 105)
    axes.set_ylabel("accuracy (%)")
    axes.set_title("BFCL v4, BFCL's ast_checker; error bars: bootstrap 95% intervals", fontsize=10)
    figure.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    figure.savefig(path, dpi=120)


def read_bfcl(eval_dir: Path) -> dict[str, dict]:
    """Each scored variant's BFCL metrics from runs/<name>/eval/bfcl/ ({} when BFCL was not run)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((eval_dir / "bfcl").glob("*/metrics.json"))}


@contextlib.contextmanager
def bfcl_output(recipe, started: float):
    """runs/<name>/eval/bfcl/ written whole or not at all, with a manifest, beside an existing evaluation."""
    from sft_router.core.run_folder import stage_output

    with stage_output(recipe, "eval/bfcl", started) as (out, facts):
        yield out, facts


def show(recipe) -> None:
    results = read_bfcl(recipe.stage_dir("eval"))
    if not results:
        raise UsageError(
            f"no BFCL scores in {recipe.stage_dir('eval') / 'bfcl'}: run `make bfcl RECIPE={recipe.path}`"
        )
    print(f"BFCL v4 accuracy (%) with bootstrap 95% intervals, graded by bfcl-eval {BFCL_EVAL_VERSION}'s ast_checker:")
    print(bfcl_table(results))


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    from sft_router.core.config import parse_recipe
    from sft_router.evaluation.variants import build_variants
    from sft_router.modeling.loading import load_tokenizer

    started = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    only_show = "--show" in argv
    (recipe,) = parse_recipe([arg for arg in argv if arg != "--show"])
    if only_show:
        show(recipe)
        return
    adapter = recipe.stage_dir("adapter")
    if not (adapter / "manifest.json").is_file():
        raise UsageError(f"no finished adapter at {adapter}: run `make train RECIPE={recipe.path}` first")
    with bfcl_output(recipe, started) as (out, facts):
        tokenizer = load_tokenizer(recipe)
        results = run_bfcl(recipe, tokenizer, build_variants(recipe, tokenizer), out)
        facts["bfcl"] = {variant: metrics["categories"] for variant, metrics in results.items()}
    cases = sum(scores["cases"] for scores in next(iter(results.values()))["categories"].values())
    print(f"bfcl: {cases} cases per variant scored -> {recipe.stage_dir('eval') / 'bfcl'} (print: --show)")


if __name__ == "__main__":
    main()
