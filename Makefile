# `make test` is the project's one test command (CI runs it through .ci/run): a fresh venv, install, lint, test.
PYTHON ?= python3
VENV ?= .test-venv
PIP = $(VENV)/bin/pip

.PHONY: test venv lint unit fast bench demo mutation

venv:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first (a local wheel here); verl's own pins would otherwise pull multi-GB CUDA builds.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[verl,test]"

lint:
	$(VENV)/bin/ruff check .

unit:
	$(VENV)/bin/python -m pytest -q

test: venv lint unit

# The quick loop while developing: everything but the Ray / verl-trainer tests (`-m slow`, minutes each on 2 cores).
# CI runs both (`make unit`).
fast:
	$(VENV)/bin/python -m pytest -q -m "not slow"

bench:
	$(VENV)/bin/python benchmarks/run_all.py

# The quickstart: verl's trainer on this CPU through the geo3k launcher (tiny Qwen2-VL, 2 GRPO steps, checkpoint,
# merge). Uses the python of the README's install; RESUME=1 STEPS=3 continues from the checkpoint; OUT moves it.
demo:
	$(PYTHON) -m perception_r1.demo

# Mutation testing (docs/mutation.md; not part of CI: hours on 2 cores). MODULES restricts the run to mutant-name
# globs, e.g. MODULES='perception_r1.rewards.*'; JOBS is mutmut's --max-children. Prints the per-module table.
MODULES ?=
JOBS ?= 2
mutation:
	$(VENV)/bin/pip install -q mutmut==3.8.1
	$(VENV)/bin/mutmut run --max-children $(JOBS) $(MODULES)
	$(VENV)/bin/python tools/mutation_report.py
