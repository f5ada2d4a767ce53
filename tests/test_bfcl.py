"""BFCL v4 with BFCL's own checker: the checker grades BFCL's own answers valid and wrong ones invalid, cases are
prompted in the router's format, nothing of BFCL reaches the generated data, and `make eval` writes the scores."""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, TINY, make_workspace

from sft_router.core.config import parse_recipe
from sft_router.core.errors import UsageError
from sft_router.core.router_format import render_call, render_tool
from sft_router.datagen.catalog import load_catalog
from sft_router.datagen.checks import ContaminationCheck, contamination
from sft_router.evaluation import bfcl

SCORED = ("simple_python", "multiple")  # the categories with ground truth; irrelevance has none
MISSING = object()


def first_option(options: list):
    """The first answer BFCL accepts for one parameter ("" means "may be left out")."""
    return next((materialize(option) for option in options if option != ""), MISSING)


def materialize(value):
    """A ground-truth value as a model would write it: nested dicts hold option lists of their own."""
    if isinstance(value, dict):
        picked = {key: first_option(options) for key, options in value.items()}
        return {key: item for key, item in picked.items() if item is not MISSING}
    if isinstance(value, list):
        return [materialize(item) for item in value]
    return value


def truth_answer(case: dict) -> tuple[str, dict]:
    ((name, parameters),) = case["ground_truth"][0].items()  # one call per case in these categories
    return name, materialize(parameters)


def test_pin_is_the_same_in_the_module_pyproject_and_makefile():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["bfcl"] == [f"bfcl-eval=={bfcl.BFCL_EVAL_VERSION}"]
    assert f"--no-deps bfcl-eval=={bfcl.BFCL_EVAL_VERSION} " in (ROOT / "Makefile").read_text()


def test_checker_is_bfcls_file_and_its_model_registry_stays_unloaded():
    checker = bfcl.load_checker()
    assert checker.__file__ == str(bfcl.package_dir() / "eval_checker" / "ast_eval" / "ast_checker.py")
    assert not [name for name in sys.modules if name.startswith(("bfcl_eval.model_handler", "bfcl_eval.constants.model_config"))]  # fmt: skip


@pytest.mark.parametrize("category, count", [("simple_python", 400), ("multiple", 200), ("irrelevance", 240)])
def test_every_ground_truth_answer_is_graded_valid(category, count):
    """Through the whole path: the router's call text, the project's parser, BFCL's checker. No exceptions."""
    cases = bfcl.load_cases(category)
    assert len(cases) == count
    if category == "irrelevance":
        assert all("ground_truth" not in case for case in cases)
        reply = "Sorry, none of my current tools can do that."
        assert all(bfcl.grade(case, category, reply)["valid"] for case in cases)
        return
    invalid = {}
    for case in cases:
        graded = bfcl.grade(case, category, render_call(*truth_answer(case)))
        if not graded["valid"]:
            invalid[case["id"]] = graded["error"]
    assert invalid == {}


def wrong_answers(case: dict) -> dict[str, str]:
    name, arguments = truth_answer(case)
    key = next(iter(arguments))
    value = arguments[key]
    wrong = value + 1 if isinstance(value, int | float) else f"{value} not this one"
    return {
        "wrong value": render_call(name, {**arguments, key: wrong}),
        "wrong function name": render_call(name + "_other", arguments),
        "extra argument": render_call(name, {**arguments, "colour_of_the_sky": "blue"}),
        "missing required argument": render_call(name, {k: v for k, v in arguments.items() if k != key}),
        "prose, no call": "The answer is 42.",
        "malformed call": '{"tool_name": "' + name + '", "arguments": {',
    }


@pytest.mark.parametrize("category", SCORED)
def test_wrong_answers_are_graded_invalid(category):
    case = bfcl.load_cases(category)[0]
    assert bfcl.grade(case, category, render_call(*truth_answer(case)))["valid"]
    for what, answer in wrong_answers(case).items():
        graded = bfcl.grade(case, category, answer)
        assert not graded["valid"] and graded["error"], what


def test_another_shown_function_is_wrong_in_multiple():
    case = next(c for c in bfcl.load_cases("multiple") if len(c["function"]) > 1)
    name, arguments = truth_answer(case)
    other = next(f["name"] for f in case["function"] if f["name"] != name)
    assert not bfcl.grade(case, "multiple", render_call(other, arguments))["valid"]


def test_irrelevance_is_right_only_without_a_call_attempt():
    case = bfcl.load_cases("irrelevance")[0]
    function = case["function"][0]["name"]
    assert bfcl.grade(case, "irrelevance", "I can't do that with these tools.")["valid"]
    assert not bfcl.grade(case, "irrelevance", render_call(function, {}))["valid"]
    assert not bfcl.grade(case, "irrelevance", '{"tool_name": "' + function)["valid"]  # malformed, still an attempt


def test_every_function_becomes_a_valid_json_schema_in_the_router_format():
    json_types = {"string", "integer", "number", "boolean", "array", "object", "null"}
    schemas = {f"{case['id']} {function['name']}": bfcl.router_tool(function)["parameters"]
               for category in bfcl.CATEGORIES for case in bfcl.load_cases(category) for function in case["function"]}  # fmt: skip
    for where, schema in schemas.items():
        found = set(re.findall(r'"type": "(\w+)"', json.dumps(schema)))
        assert found <= json_types, (where, found - json_types)
    # One schema holding them all: the metaschema checks each of them as a subschema.
    jsonschema.Draft202012Validator.check_schema({"type": "object", "properties": schemas})


def test_a_case_is_prompted_like_the_router():
    case = bfcl.load_cases("multiple")[0]
    template = (ROOT / "recipes/gemma-3-270m-demo/system_prompt.txt").read_text()
    system, user = bfcl.case_prompt(case, template)
    assert user == case["question"][0][0] and system["role"] == "system"
    assert system["content"].startswith(template.split("{tools}")[0])
    for function in case["function"]:
        assert render_tool(bfcl.router_tool(function)) in system["content"]
    tuple_param = next(c for c in bfcl.load_cases("simple_python") if '"tuple"' in json.dumps(c["function"]))
    assert '"tuple"' not in bfcl.case_prompt(tuple_param, template)[0]["content"]


def test_a_limited_run_takes_the_same_seeded_sample_in_file_order():
    everything = bfcl.load_cases("simple_python")
    sample = bfcl.load_cases("simple_python", 40)
    assert sample == bfcl.load_cases("simple_python", 40) and len(sample) == 40
    positions = [everything.index(case) for case in sample]
    assert positions == sorted(positions) and positions != list(range(40))


def test_metrics_count_right_answers_with_an_interval(tmp_path):
    cases = {"simple_python": bfcl.load_cases("simple_python", 4), "irrelevance": bfcl.load_cases("irrelevance", 2)}
    right = [render_call(*truth_answer(case)) for case in cases["simple_python"]]
    answers = {"simple_python": right[:3] + ["no idea"], "irrelevance": ["hello", right[0]]}
    metrics = bfcl.write_bfcl_variant(tmp_path, cases, answers, "transformers")
    assert metrics["runtime"] == "transformers"
    assert metrics["categories"]["simple_python"] | {"accuracy_ci95": None} == {
        "accuracy": 0.75, "accuracy_ci95": None, "correct": 3, "cases": 4}  # fmt: skip
    low, high = metrics["categories"]["simple_python"]["accuracy_ci95"]
    assert 0.0 <= low < 0.75 <= high <= 1.0
    assert metrics["categories"]["irrelevance"]["accuracy"] == 0.5
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["valid"] for r in records] == [True, True, True, False, True, False]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_table_carries_intervals_and_the_cited_reference_row():
    scores = {"accuracy": 0.5, "accuracy_ci95": [0.25, 0.75], "correct": 2, "cases": 4}
    results = {"baseline": {"runtime": "transformers", "categories": {"simple_python": scores, "multiple": scores}}}
    table = bfcl.bfcl_table(results)
    assert "| baseline | transformers | 50.0 [25.0, 75.0] (n=4) | 50.0 [25.0, 75.0] (n=4) |" in table
    assert "| FunctionGemma 270M (cited) | [model card](https://huggingface.co/google/functiongemma-270m-it)" in table
    assert table.endswith("| 61.6 | - |")


@pytest.mark.parametrize("limit", [None, 5])
def test_card_partial_says_what_was_sampled_and_shows_the_chart_it_has(limit):
    import jinja2

    partial = (Path(__file__).parents[1] / "model_card/partials/bfcl.md").read_text()
    table = bfcl.bfcl_table({"baseline": {"runtime": "transformers", "categories": {}}})
    values = {"bfcl_table": table, "bfcl_limit": limit, "bfcl_reference": bfcl.REFERENCE_MODEL}
    text = jinja2.Template(partial).render(images=["bfcl.png"] if limit else [], **values)
    assert text.startswith("## BFCL v4\n") and f"\n\n{table}\n" in text
    assert ("A seeded sample of 5 cases per category" in text) == bool(
        limit
    ) and "FunctionGemma 270M's figures" in text
    assert ("![BFCL v4](bfcl.png)" in text) == bool(limit)


def bfcl_cases() -> list[dict]:
    return [case for category in bfcl.CATEGORIES for case in bfcl.load_cases(category)]


@pytest.fixture(scope="module")
def checker_of_contamination():
    return ContaminationCheck(bfcl_cases())


@pytest.mark.parametrize("recipe", ["recipes/gemma-3-270m-it/router.yaml", "recipes/gemma-3-270m-demo/router.yaml",
                                    "recipes/gemma-3-270m-laptop/router.yaml"])  # fmt: skip
def test_no_bfcl_question_or_function_in_any_generated_split(recipe, monkeypatch):
    from sft_router.data import build_splits

    monkeypatch.chdir(ROOT)
    (parsed,) = parse_recipe(["--config", recipe])
    assert contamination(build_splits(parsed), bfcl_cases()) == []


def test_a_planted_bfcl_question_in_a_catalog_template_is_found(monkeypatch):
    from sft_router.data import build_splits
    from sft_router.datagen.generator import family_split

    monkeypatch.chdir(ROOT)
    (recipe,) = parse_recipe(["--config", TINY])
    catalog = load_catalog(recipe.data.catalog)
    question = bfcl.load_cases("simple_python")[0]["question"][0][0]["content"]
    tool = next(iter(catalog.tools.values()))
    slots = " ".join("{" + slot + "}" for slot in tool["parameters"].get("required", []))
    for index, family in enumerate(tool["families"]):  # the train families only: else the leak check stops it first
        if family_split(index, len(tool["families"])) == "train":
            family["zh"] = family["en"] = [f"{question} {slots}".strip()]
    found = contamination(build_splits(recipe, catalog), bfcl_cases())
    said = question.lower().rstrip(".")  # typed in lower case, without its full stop, it is still found
    assert found and all(f"BFCL question '{said}'" in hit and hit.startswith("train row") for hit in found)


def test_function_names_are_found_as_tools_and_as_identifiers(checker_of_contamination):
    row = {"id": "x", "tools": ["news"], "tool_name": "", "completion": [{"role": "assistant", "content": "hi"}],
           "prompt": [{"role": "user", "content": "What's in the news? Call calculate_triangle_area."}]}  # fmt: skip
    assert checker_of_contamination.in_row(copy.deepcopy(row)) == [
        "function 'news' as a tool", "function 'calculate_triangle_area'"]  # fmt: skip
    row["tools"] = []
    assert checker_of_contamination.in_row(row) == ["function 'calculate_triangle_area'"]  # a word alone is no hit


def test_make_eval_scores_bfcl_for_both_variants(tiny_run):
    eval_dir = tiny_run / "runs/tiny/eval"
    limit = parse_recipe(["--config", str(ROOT / TINY)])[0].eval.bfcl_limit
    results = bfcl.read_bfcl(eval_dir)
    assert set(results) == {"baseline", "finetuned"} and results["baseline"]["runtime"] == "transformers"
    assert results["finetuned"]["runtime"].startswith(("llama.cpp (tiny-Q8_0.gguf)", "transformers"))
    for variant, metrics in results.items():
        assert {c: s["cases"] for c, s in metrics["categories"].items()} == dict.fromkeys(bfcl.CATEGORIES, limit)
        records = [json.loads(line) for line in (eval_dir / "bfcl" / variant / "predictions.jsonl").read_text().splitlines()]  # fmt: skip
        cases = {case["id"]: case for category in bfcl.CATEGORIES for case in bfcl.load_cases(category, limit)}
        assert [bfcl.grade(cases[r["id"]], r["category"], r["output"])["valid"] for r in records] == [
            r["valid"] for r in records]  # fmt: skip
    assert bfcl.bfcl_table(results) in (eval_dir / "comparison.md").read_text()
    assert (eval_dir / "bfcl" / "bfcl.png").stat().st_size > 10_000
    assert json.loads((eval_dir / "manifest.json").read_text())["bfcl"]["baseline"]["irrelevance"]["cases"] == limit


def test_card_and_results_table_carry_bfcl_beside_the_cited_reference(tiny_run):
    from sft_router.results import results_table, run_summary

    run = tiny_run / "runs/tiny"
    table = bfcl.bfcl_table(bfcl.read_bfcl(run / "eval"))
    card, gguf_card = (run / "card/README.md").read_text(), (run / "card/gguf/README.md").read_text()
    assert table in card and "## BFCL v4" in card and "![BFCL v4](bfcl.png)" in card
    assert (run / "card/bfcl.png").is_file() and "| FunctionGemma 270M (cited) |" in card
    finetuned = bfcl.read_bfcl(run / "eval")["finetuned"]
    for category, scores in finetuned["categories"].items():
        entry = f"name: BFCL v4\n      type: {bfcl.BFCL_DATASET_ID}\n      split: {category}"
        assert entry in card and f"value: {round(scores['accuracy'], 4)}" in card
        assert (entry in gguf_card) == finetuned["runtime"].startswith("llama.cpp")
    assert table in results_table(run_summary(run))


def test_an_unknown_category_fails_in_one_line_naming_the_key():
    with pytest.raises(UsageError, match="unknown BFCL category 'simple' \\(recipe key bfcl_categories\\)"):
        bfcl.load_cases("simple")


def test_make_bfcl_scores_into_its_own_folder_and_prints_the_table(tiny_run, tmp_path, monkeypatch, capsys):
    """`make bfcl` on a finished run: a copy of the tiny run, so the session's eval folder stays as `make eval` left it."""
    workspace = make_workspace(tmp_path / "ws")
    for stage in ("dataset", "adapter", "gguf"):
        shutil.copytree(tiny_run / "runs/tiny" / stage, workspace / "runs/tiny" / stage, symlinks=True)
    monkeypatch.chdir(workspace)
    bfcl.main(["--config", TINY, "--bfcl_limit", "1"])
    bfcl.main(["--config", TINY, "--show"])
    printed = capsys.readouterr().out
    results = bfcl.read_bfcl(workspace / "runs/tiny/eval")
    assert bfcl.bfcl_table(results) in printed and "(n=1)" in printed and "FunctionGemma 270M (cited)" in printed
    manifest = json.loads((workspace / "runs/tiny/eval/bfcl/manifest.json").read_text())
    assert manifest["stage"] == "eval/bfcl" and set(manifest["bfcl"]) == {"baseline", "finetuned"}
    assert (workspace / "runs/tiny/eval/bfcl/summary.json").is_file() and not list(
        (workspace / "runs/tiny/eval").glob(".*")
    )


def test_a_planted_bfcl_function_in_the_functions_spec_is_found(monkeypatch, tmp_path):
    """The function generator's rows are checked too: a BFCL name given to one of its functions is a hit in every
    split that shows it."""
    from sft_router.data import build_splits

    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((ROOT / "recipes/gemma-3-270m-it/functions.yaml").read_text())
    names = iter(sorted({f["name"] for case in bfcl.load_cases("simple_python") for f in case["function"]
                         if "." in f["name"]}))  # fmt: skip
    for functions in spec["held_out_domains"].values():
        for function in functions:
            function["name"] = next(names)
    (tmp_path / "functions.yaml").write_text(yaml.safe_dump(spec))
    flags = ["--functions", str(tmp_path / "functions.yaml"), "--function_mask_rate", "0"]
    (recipe,) = parse_recipe(["--config", TINY, *flags])
    found = contamination(build_splits(recipe), bfcl_cases())
    assert found and all(hit.startswith("test_procedural row") and "BFCL function" in hit for hit in found)
