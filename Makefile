# One place for the commands the README gives. Every target sets up what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HF     := $(VENV)/.installed-hf

.PHONY: up test faults soak lint bench clean

# A virtual environment with CPU torch (a local build on these machines; pinned so pip never
# pulls a multi-GB CUDA build) and hive with its test tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Independent readers for the tests: the official DuckDB 1.x CLI (a different DuckDB than the
# project's), in a scratch environment of its own, so "any DuckDB client opens the snapshot" is tested.
READERS := .venv-readers/.installed
$(READERS):
	$(PYTHON) -m venv .venv-readers
	.venv-readers/bin/pip install -q duckdb-cli==1.5.6
	touch $(READERS)

# The optional hf backend (transformers + peft): the tests need it, the swarm does not.
$(HF): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,hf]'
	touch $(HF)

## The local swarm on the embedded NATS (state in ./hive-data; stops by itself after --duration).
up: $(STAMP)
	$(VENV)/bin/hive up $(ARGS)

## Lint, type-check and run the whole test suite against real nats-server processes and DuckDB files.
test: $(HF) $(READERS) lint
	$(PY) -m pytest -q --durations=15

## The whole fault campaign (kill -9, SIGSTOP, full streams, cluster node loss, hostile input).
faults: $(HF)
	$(PY) -m pytest -q tests/faults -m 'faults_full or not faults_full'

## A 30-minute soak: the swarm under load while a random component is killed or paused every 60 s.
soak: $(STAMP)
	$(PY) bench/soak.py --minutes 30 --out bench/results/soak

lint: $(HF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/hive bench ingest --events 50000 --json

clean:
	rm -rf $(VENV) .venv-readers hive-data
