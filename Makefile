# One short way to do each thing. Every target creates the virtual environment on first use.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench lint install clean

# torch's CPU build pinned below and vLLM's CPU build exist for Python 3.11 only.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || bash scripts/check-python.sh "$(PY)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel of 2.13.0 (a bare `torch` would fetch a CUDA build)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[train,test,server,openenv]"
	touch $(STAMP)

install: $(STAMP)

## The main job: build a small model, SFT, serve it with vLLM, sample trees, DPO on the
## step-level pairs, and measure held-out success before and after (runs/demo/report.json).
demo: $(STAMP)
	PY=$(BIN)/python bash scripts/ensure-vllm.sh
	$(BIN)/branchpoint demo --out runs/demo

## Every test, PostgreSQL included (started if it is down), the viewer's in Debian's Chromium
## (installed if missing), after ruff and strict mypy.
test: $(STAMP)
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-chromium.sh
	PY=$(BIN)/python bash scripts/ensure-vllm.sh
	$(BIN)/ruff check .
	bash scripts/typecheck.sh
	$(BIN)/python -m pytest -q

## The tests without the slow ones (training, subprocess fault injection).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	bash scripts/ensure-postgres.sh
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	bash scripts/typecheck.sh

clean:
	rm -rf $(VENV) build dist *.egg-info runs
