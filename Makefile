# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create/verify the virtual environment in .venv first (scripts/bootstrap.sh).
SHELL := /bin/bash
PY := .venv/bin/python
export OPENBLAS_NUM_THREADS := 1
export PFD_THREADS ?= 2

.PHONY: venv demo test test-slow lint

venv:
	bash scripts/bootstrap.sh

# the quick silicon recipe: CHGNet base model, GPAW labels, phonons and vacancies (resumable)
demo: venv
	$(PY) -m pfd_ase.recipes.silicon --quick --workdir runs/silicon

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q --runslow

lint: venv
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
