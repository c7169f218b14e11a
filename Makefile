# madbench: one-command entry points. Each target sets up .venv on first use.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
CORES   ?= 2
STAMP   := $(VENV)/.installed
SLURM_STAMP := $(VENV)/.installed-slurm

.PHONY: quick study test test-slow test-slurm lint bench full clean-results browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

## quick: the quick configuration end to end (tables, figures, dashboard under results/)
quick: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/quick.yaml

## study: the findings (config/study.yaml on 2 CPU cores, under an hour), then docs/findings
study: $(STAMP)
	@start=$$(date +%s); \
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/study.yaml; \
	rc=$$?; \
	$(BIN)/madbench findings --results results/study --out docs/findings --command "make study" \
	  --wall-time $$(( $$(date +%s) - start )) && exit $$rc

## full: the paper grid (GPU recommended; see README)
full: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

## browser: Debian's chromium + chromedriver for the dashboard's browser tests (if missing;
## needs root and apt-get; without them those tests skip with a message saying what to install)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (dashboard browser tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null; \
	else echo "note: chromium/chromedriver missing and not root: browser tests will skip"; fi

## test: the fast test tier (what CI runs first)
test: $(STAMP) browser
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -m "not slow and not slurm" -q

## test-slow: statistical and learning tests (minutes to tens of minutes on 2 cores)
test-slow: $(STAMP) browser
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -m slow -q

## test-slurm: the pipeline through a real one-node SLURM (pytest -m slurm): as root on Debian it
## installs SLURM, munge and MariaDB with apt-get and starts/stops the daemons (.ci/slurm/)
test-slurm: $(SLURM_STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -m slurm -q

$(SLURM_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[slurm]"
	@touch $(SLURM_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks workflow
	$(BIN)/ruff format --check src tests benchmarks workflow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_base_score.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_evaluate.py
	$(BIN)/python benchmarks/bench_stack.py
	$(BIN)/python benchmarks/accuracy.py

## clean-results: delete everything the pipeline wrote under results/ (keeps results/README.md)
clean-results:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
