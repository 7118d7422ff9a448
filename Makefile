# safetune — every target installs what it needs into .venv first.
#   make demo   the lab demo: build the tiny aligned model, fine-tune it, report safety
#   make test   the test suite (fast; what CI runs first)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel on this kind of machine. On a GPU machine: make setup TORCH="torch --index-url <your CUDA index>"
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-slow test-all bench clean

# pytest exits 5 when it collected no tests: a broken suite, never a pass.
PYTEST = status=0; $(BIN)/python -m pytest -q $(1) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: no tests ran" >&2; exit 1; fi; exit $$status

$(BIN)/safetune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the project's own range (torch>=2.2,<3) is then already satisfied,
	# so pip never swaps in a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/safetune

setup: $(BIN)/safetune

demo: setup
	$(BIN)/safetune lab build
	$(BIN)/safetune train recipes/lab/sentiment-standard.yaml output.overwrite=true
	$(BIN)/safetune train recipes/lab/sentiment-mix.yaml output.overwrite=true
	$(BIN)/safetune compare runs/lab-sentiment-standard runs/lab-sentiment-mix --out runs/compare

test: setup
	@$(call PYTEST,)

test-slow: setup
	@$(call PYTEST,-m slow)

test-all: setup
	@$(call PYTEST,-m "slow or not slow")

bench: setup
	test -f $${SAFETUNE_LAB_MODEL:-$$HOME/.cache/safetune/lab-model}/config.json || $(BIN)/safetune lab build
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_trainer.py  # safetune's loop vs transformers.Trainer: prints the ratio
	$(BIN)/python bench/lab_table.py --task sentiment --seeds 0 1 2

clean:
	rm -rf $(VENV) runs .pytest_cache
