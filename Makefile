# madbench: one-command entry points. Each target sets up .venv on first use.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
CORES   ?= 2
STAMP   := $(VENV)/.installed

.PHONY: quick test test-slow lint bench full clean-results

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

## quick: the quick configuration end to end (tables, figures, dashboard under results/)
quick: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/quick.yaml

## full: the paper grid (GPU recommended; see README)
full: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

## test: the fast test tier (what CI runs)
test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -m "not slow" -q

## test-slow: statistical and learning tests (minutes to tens of minutes on 2 cores)
test-slow: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -m slow -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks workflow
	$(BIN)/ruff format --check src tests benchmarks workflow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_base_score.py
	$(BIN)/python benchmarks/bench_train.py
