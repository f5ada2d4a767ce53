"""Score the base model and the fine-tuned adapter on the test split with the shared scorer.

Writes runs/<name>/eval/{baseline,finetuned}/{metrics.json,predictions.jsonl}. Generation is batched
greedy decoding with left padding and the KV cache, stopping at <end_of_turn>.

Usage: python -m sft_router.evaluate --config recipes/tiny/router.yaml
       python -m sft_router.evaluate --predictions PRED.jsonl --references REF.jsonl   (prints metrics JSON)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sft_router.config import parse_recipe
from sft_router.errors import UsageError, one_line_errors
from sft_router.run import stage_output
from sft_router.scoring import score


def stop_token_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]


def render_prompts(tokenizer, rows) -> list[str]:
    return [tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) for row in rows]


def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, desc: str = "generate"):
    """Greedy completions, `batch_size` prompts at a time, left padded; special tokens stripped."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    outputs = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)  # fmt: skip
        with torch.inference_mode():
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return outputs


def target_text(row) -> str:
    return row["completion"][0]["content"]


def evaluate_model(model, tokenizer, rows, recipe, out: Path, desc: str) -> dict:
    prompts = render_prompts(tokenizer, rows)
    outputs = generate(model, tokenizer, prompts, recipe.eval.eval_batch_size, recipe.eval.eval_max_new_tokens, desc)
    metrics, samples = score(outputs, [target_text(row) for row in rows])
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / "predictions.jsonl", "w") as handle:
        for row, output, sample in zip(rows, outputs, samples):
            record = {"id": row["id"], "kind": row["kind"], "expected": target_text(row), "output": output, **sample}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return metrics


def load_test_rows(recipe) -> list[dict]:
    from sft_router.data import load_split

    rows = load_split(recipe, "test")
    limit = recipe.eval.eval_limit
    return list(rows.select(range(min(limit, len(rows))))) if limit else list(rows)


def run_eval(recipe) -> dict:
    from peft import PeftModel

    from sft_router.train import load_base_model, load_tokenizer

    adapter = recipe.stage_dir("adapter")
    if not (adapter / "manifest.json").is_file():
        raise UsageError(f"no finished adapter at {adapter}: run `make train RECIPE={recipe.path}` first")
    rows = load_test_rows(recipe)
    tokenizer = load_tokenizer(recipe)
    results = {}
    with stage_output(recipe, "eval", test_rows=len(rows)) as (out, facts):
        model = load_base_model(recipe).eval()
        results["baseline"] = evaluate_model(model, tokenizer, rows, recipe, out / "baseline", "baseline")
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
        results["finetuned"] = evaluate_model(model, tokenizer, rows, recipe, out / "finetuned", "fine-tuned")
        from sft_router.gguf_eval import evaluate_gguf  # the Q8_0 GGUF under llama.cpp, free and grammar-constrained

        results.update(evaluate_gguf(recipe, tokenizer, rows, out))
        facts["metrics"] = results
    return results


def read_jsonl_texts(path: str, field: str = "text") -> list[str]:
    """`text` of each line; a test-split row (from `make data`) gives its completion instead."""
    texts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if field in record:
            texts.append(record[field])
        elif "completion" in record:
            texts.append(target_text(record))
        else:
            raise UsageError(f"{path}:{number}: no `{field}` field; each line needs one")
    return texts


def score_files(predictions: str, references: str) -> dict:
    try:
        metrics, _ = score(read_jsonl_texts(predictions), read_jsonl_texts(references))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot score {predictions} against {references}: {exc}") from exc
    return metrics


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--predictions" in argv:
        if "--references" not in argv:
            raise UsageError("--predictions needs --references REF.jsonl (the test split JSONL works)")
        pred, ref = argv[argv.index("--predictions") + 1], argv[argv.index("--references") + 1]
        print(json.dumps(score_files(pred, ref), indent=2))
        return
    (recipe,) = parse_recipe(argv)
    results = run_eval(recipe)
    for name, metrics in results.items():
        print(
            f"eval {name}: exact_match={metrics['exact_match_rate']:.3f} arg_f1={metrics['average_argument_f1']:.3f}"
        )


if __name__ == "__main__":
    main()
