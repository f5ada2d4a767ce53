"""Evaluation around the scorer: predictions files, the `evaluate` module, batched generation, the comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sft_router import evaluate
from sft_router.core.router_format import shared_prefix_length
from sft_router.evaluation.scoring import score
from sft_router.modeling import loading as models
from sft_router.modeling.prompts import render_prompts, scenes, stop_token_ids

ROOT = Path(__file__).resolve().parents[1]
TINY = "recipes/tiny/router.yaml"
CALL = '{"tool_name": "get_calendar_events", "arguments": {"date": "今天"}}'
PREDICTIONS = [f"output：{CALL}", "好的", '{"tool_name": "set_timer", "arguments": {"minutes": 3}}', ""]
REFERENCES = [CALL, CALL, "你好！", '{"tool_name": "set_timer", "arguments": {"minutes": 3}}']


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


def run_module(args: list[str], **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environment, cwd=ROOT)


def test_predictions_file_scores_to_one_json_object_on_stdout(tmp_path):
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"text": text} for text in PREDICTIONS])
    ref = write_jsonl(tmp_path / "ref.jsonl", [{"text": text} for text in REFERENCES])
    done = run_module(["-m", "sft_router.evaluate", "--predictions", str(pred), "--references", str(ref)])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(score(PREDICTIONS, REFERENCES)[0]))
    assert len(done.stdout.strip().splitlines()) == 1


def test_test_split_jsonl_is_accepted_as_references(workspace, capsys):
    from sft_router import data

    data.main(["--config", TINY])
    split = workspace / "runs/tiny/dataset/test.jsonl"
    rows = [json.loads(line) for line in split.read_text().splitlines()]
    perfect = write_jsonl(workspace / "perfect.jsonl", [{"text": row["completion"][0]["content"]} for row in rows])
    capsys.readouterr()
    evaluate.main(["--predictions", str(perfect), "--references", str(split)])
    metrics = json.loads(capsys.readouterr().out)
    calls = sum(bool(row["tool_name"]) for row in rows)
    assert (metrics["exact_match_rate"], metrics["exact_match_rate_strict"]) == (1.0, 1.0)
    assert (metrics["total_samples"], metrics["call_samples"]) == (len(rows), calls) and 0 < calls < len(rows)


def test_mismatched_files_fail_with_one_line(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"text": "a"}])
    ref = write_jsonl(tmp_path / "ref.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--predictions", str(pred), "--references", str(ref)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "1 predictions but 2 references" in error and len(error.splitlines()) == 1


def test_predictions_file_from_an_eval_run_can_be_rescored(tmp_path, capsys):
    records = [{"id": i, "expected": r, "output": p} for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES))]
    path = write_jsonl(tmp_path / "predictions.jsonl", records)
    evaluate.main(["--predictions", str(path), "--references", str(path)])
    assert (
        json.loads(capsys.readouterr().out)["exact_match_rate"]
        == score(PREDICTIONS, REFERENCES)[0]["exact_match_rate"]
    )


def test_evaluate_module_loads_offline_and_matches_the_scorer(tmp_path):
    code = (
        "import evaluate, json, sys\n"
        "for path in sys.argv[3:]:\n"
        "    metric = evaluate.load(path)\n"
        "    print(json.dumps(metric.compute(predictions=json.loads(sys.argv[1]), references=json.loads(sys.argv[2]))))"
    )
    modules = ["metrics/tool_call", str(ROOT / "metrics/tool_call/tool_call.py")]
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HOME": str(tmp_path / "hf")}
    done = run_module(["-c", code, json.dumps(PREDICTIONS), json.dumps(REFERENCES), *modules], **env)
    assert done.returncode == 0, done.stderr
    expected = json.loads(json.dumps(score(PREDICTIONS, REFERENCES)[0]))
    assert [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]] == [expected, expected]


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny recipe's base model as `make eval` loads it, and its tokenizer with the recipe's template."""
    from transformers import AutoTokenizer

    from sft_router.core.config import parse_recipe
    from sft_router.modeling.base_models import resolve_base_model

    (recipe,) = parse_recipe(["--config", str(ROOT / TINY)])
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("sft-router/tiny-gemma3"))
    tokenizer.chat_template = (ROOT / "recipes/gemma-3-270m-it/chat_template.jinja").read_text()
    return models.load_generation_model(recipe), tokenizer


def test_batched_generation_matches_one_at_a_time_in_prompt_order(tiny_model):
    model, tokenizer = tiny_model
    users = ["你好", "帮我查一下今天的日程安排，谢谢", "set a timer", "明天下午三点提醒我开会，地点在三楼会议室"]
    prompts = render_prompts(tokenizer, [{"prompt": [{"role": "user", "content": u}]} for u in users])
    batched = models.generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=6)
    single = [models.generate(model, tokenizer, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    assert batched == single and len(set(batched)) > 1  # the random model answers prompts differently
    assert model.config._attn_implementation == "sdpa" and model.device.type == "cpu"  # the tiny recipe: use_cpu


def plain_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """transformers' own greedy decoding of one prompt, no cache reuse: the reference for `generate`."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stop_token_ids(tokenizer, model), pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_shared_prefix_cache_gives_the_same_answers_as_plain_generation(tiny_model):
    """Prompts that share a system prompt (as every eval prompt does): the prefix is prefilled once, the batch's
    suffixes differ in length (pads sit between prefix and suffix), and every answer equals plain greedy decoding."""
    model, tokenizer = tiny_model
    system = "You route requests. Tools: " + "get_calendar_events set_timer send_message " * 4
    users = ["你好", "帮我查一下今天的日程安排，谢谢，顺便看看明天", "set a timer", "明天下午三点提醒我开会"]
    rows = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": u}]} for u in users]
    prompts = render_prompts(tokenizer, rows)
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert shared_prefix_length(ids) > 20  # the system prompt is shared, the messages are not
    batched = models.generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=8)
    assert batched == [plain_greedy(model, tokenizer, p, 8) for p in prompts] and len(set(batched)) > 1


def test_prompts_longer_than_the_sliding_window_give_plain_generations(tiny_model):
    """Past Gemma 3's sliding window (which counts cache slots) the prefix caches still give plain greedy answers,
    batches spanning two scenes of different prefix lengths: a row's pads come before its tokens, never between."""
    model, tokenizer = tiny_model
    tools = "get_calendar_events set_timer send_message "
    systems = ["You route requests. Tools: " + tools * 60, "You route requests. Tools: " + tools * 50 + "play_music"]
    users = [
        "你好",
        "帮我查一下今天的日程安排，谢谢，顺便看看明天",
        "set a timer",
        "play jazz",
        "明天下午三点提醒我开会",
    ]
    rows = scene_rows(systems, users, [0, 1, 0, 1, 0])
    prompts = render_prompts(tokenizer, rows)
    assert min(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]) > (
        model.config.sliding_window
    )
    answers = models.generate(model, tokenizer, prompts, 4, 6, scenes=scenes(rows))
    assert answers == [plain_greedy(model, tokenizer, p, 6) for p in prompts]


def scene_rows(systems: list[str], users: list[str], shown: list[int]) -> list[dict]:
    """Rows of interleaved scenes: row i shows system prompt shown[i] and asks users[i]."""
    return [{"prompt": [{"role": "system", "content": systems[k]}, {"role": "user", "content": user}]}
            for k, user in zip(shown, users)]  # fmt: skip


def test_scenes_group_rows_by_system_prompt_in_first_appearance_order():
    rows = scene_rows(["a", "b", "c"], ["1", "2", "3", "4", "5"], [0, 1, 0, 2, 1])
    rows.append({"prompt": [{"role": "user", "content": "no system prompt"}]})
    assert scenes(rows) == [[0, 2], [1, 4], [3], [5]]


def test_each_scene_prefills_its_prompt_prefix_once_and_answers_as_plain_generation(tiny_model, monkeypatch):
    """Two scenes of three requests, interleaved, and a request alone in its scene: each scene's prefix (its system
    prompt and tools) is prefilled once, though its requests fill two batches; the lone request is batched with the
    other prompts alone in their scene. Every answer equals plain greedy decoding, in the rows' order."""
    model, tokenizer = tiny_model
    systems = ["You route requests. Tools: " + "get_calendar_events set_timer " * 6,
               "You route requests. Tools: " + "send_message play_music open_app " * 5, "You reply."]  # fmt: skip
    users = [
        "你好",
        "帮我查一下今天的日程安排，谢谢",
        "set a timer",
        "明天下午三点提醒我开会",
        "play jazz",
        "hi",
        "thanks",
    ]
    rows = scene_rows(systems, users, [0, 1, 0, 2, 1, 0, 1])
    prompts = render_prompts(tokenizer, rows)
    prefilled, prefill = [], models.prefill_prefix
    monkeypatch.setattr(models, "prefill_prefix", lambda m, ids: prefilled.append(ids) or prefill(m, ids))
    forwarded = []  # input positions of every forward pass: prefills and decoding steps
    hook = model.register_forward_pre_hook(
        lambda _, args, kw: forwarded.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    answers = models.generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=8, scenes=scenes(rows))
    hook.remove()
    assert answers == [plain_greedy(model, tokenizer, p, 8) for p in prompts] and len(set(answers)) > 1
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert prefilled == [models.common_prefix([ids[i] for i in scene]) for scene in ([0, 2, 5], [1, 4, 6])]
    system_tokens = len(tokenizer(systems[1], add_special_tokens=False)["input_ids"])
    assert min(map(len, prefilled)) > system_tokens  # the whole system prompt and its tools, computed once
    *requests, lone = sorted(n for n in forwarded if n > 1 and n not in map(len, prefilled))  # each batch's first pass
    assert lone == len(ids[3]) and max(requests) < 40 < system_tokens  # only requests, and the lone prompt whole
    assert models.generate(model, tokenizer, prompts, 2, 8, scenes=scenes(rows), reuse_prefix=False) == answers


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 2 and shared_prefix_length([[7]]) == 1


def hand_results() -> dict[str, dict]:
    other = ["好的", "好的", "hi", CALL]
    return {"baseline": score(other, REFERENCES)[0], "finetuned": score(PREDICTIONS, REFERENCES)[0],
            "gguf": score(PREDICTIONS[:2] + other[2:], REFERENCES)[0]}  # fmt: skip


def test_comparison_covers_every_variant_with_intervals(tmp_path):
    results = hand_results()
    evaluate.write_comparison(tmp_path, {"test": results})
    page = (tmp_path / "comparison.md").read_text()
    finetuned = results["finetuned"]
    low, high = finetuned["exact_match_rate_ci95"]
    assert "| metric | baseline | finetuned | gguf |" in page
    assert f"| exact match | {results['baseline']['exact_match_rate']:.3f} [" in page
    assert f"{finetuned['exact_match_rate']:.3f} [{low:.3f}, {high:.3f}]" in page
    assert "| get_calendar_events | 2 |" in page and "### Confusion: gguf on `test`" in page
    assert "missed_call_rate" in page
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_shows_each_split_and_the_skipped_ones(tmp_path):
    test, other = hand_results(), {"lookup": score(["hi", CALL], ["hi", CALL])[0]}
    note = "eval: split 'test_unseen' is not in runs/x/dataset (this generator makes none); skipped"
    evaluate.write_comparison(tmp_path, {"test": test, "handwritten": other}, [note])
    page = (tmp_path / "comparison.md").read_text()
    assert "| split | rows | baseline | finetuned | gguf | lookup |" in page
    assert f"| `test` | 4 | {test['baseline']['exact_match_rate']:.3f} [" in page and "| n/a |" in page
    assert "| `handwritten` | 2 | n/a | n/a | n/a | 1.000 [1.000, 1.000] |" in page
    assert "## Split `handwritten`: 2 rows (1 expecting a tool call, 1 a reply)" in page and f"Note: {note}" in page
    assert page.index("## Split `test`") < page.index("## Split `handwritten`")


def test_confusion_markdown_puts_no_call_last():
    table = evaluate.confusion_markdown({"a": {"a": 2, "none": 1}, "none": {"b": 1, "invalid": 3}})
    assert table.splitlines()[0] == "| expected \\ predicted | a | b | invalid | none |"
    assert table.splitlines()[2:] == ["| a | 2 | 0 | 0 | 1 |", "| none | 0 | 1 | 3 | 0 |"]


def test_make_eval_writes_both_variants_the_table_and_the_chart(tiny_run):
    eval_dir = tiny_run / "runs/tiny/eval"
    page = (eval_dir / "comparison.md").read_text()
    for variant in sorted(p.parent.name for p in eval_dir.glob("*/metrics.json")):  # + the GGUF's, when scored
        metrics = json.loads((eval_dir / variant / "metrics.json").read_text())
        assert f"{metrics['average_argument_f1']:.3f} [" in page and metrics["per_tool"] and metrics["confusion"]
        records = [json.loads(line) for line in (eval_dir / variant / "predictions.jsonl").read_text().splitlines()]
        assert {"id", "kind", "expected", "output", "parsed", "exact_match", "tool_correct"} <= set(records[0])
        rescored, _ = score([r["output"] for r in records], [r["expected"] for r in records])
        assert rescored == metrics
    assert (eval_dir / "comparison.png").stat().st_size > 10_000
    manifest = json.loads((eval_dir / "manifest.json").read_text())
    scored = {p.parent.name for p in eval_dir.glob("*/metrics.json")}
    assert {"baseline", "finetuned", "lookup"} <= scored and set(manifest["metrics"]) == scored


def test_make_eval_scores_the_handwritten_split_in_its_own_folder(tiny_run):
    eval_dir = tiny_run / "runs/tiny/eval"
    manifest = json.loads((eval_dir / "manifest.json").read_text())
    assert set(manifest["split_metrics"]) == {"test", "handwritten"} and manifest["split_rows"]["handwritten"] == 24
    for variant, metrics in manifest["split_metrics"]["handwritten"].items():
        saved = json.loads((eval_dir / "handwritten" / variant / "metrics.json").read_text())
        assert metrics["exact_match_rate"] == saved["exact_match_rate"] and saved["total_samples"] == 24
    records = [
        json.loads(line) for line in (eval_dir / "handwritten/lookup/predictions.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in records] == [f"hw-{i:03d}" for i in range(1, 25)]
    page = (eval_dir / "comparison.md").read_text()
    assert "## Split `handwritten`: 24 rows" in page and "| `handwritten` | 24 |" in page


def test_the_finetuned_model_is_scored_as_its_gguf_on_every_split_and_agrees_on_test(tiny_run):
    eval_dir = tiny_run / "runs/tiny/eval"
    if not (eval_dir / "gguf").is_dir():
        pytest.skip("the GGUF was not scored here (no llama.cpp runtime): finetuned covers every split")
    manifest = json.loads((eval_dir / "manifest.json").read_text())
    assert set(manifest["split_metrics"]["handwritten"]) == {"baseline", "gguf", "gguf_grammar", "lookup"}
    assert not (eval_dir / "handwritten/finetuned").exists() and (eval_dir / "handwritten/gguf/metrics.json").is_file()
    gguf, finetuned = ([json.loads(line)["output"] for line in (eval_dir / name / "predictions.jsonl").open()]
                       for name in ("gguf", "finetuned"))  # fmt: skip
    same = sum(a == b for a, b in zip(gguf, finetuned))
    assert manifest["gguf_agreement"] == {"identical": same, "rows": 24, "rate": same / 24}
    assert f"where {same} of 24 answers" in (eval_dir / "comparison.md").read_text()
