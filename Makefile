# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create/verify the virtual environment in .venv first (scripts/bootstrap.sh).
SHELL := /bin/bash
PY := .venv/bin/python
export OPENBLAS_NUM_THREADS := 1
export PFD_THREADS ?= 2

.PHONY: venv demo test test-slow lint docs

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

# the documentation site (Sphinx + MyST, docs/): installs the `docs` extra into .venv when
# missing, reads every page and docstring afresh (-E), warnings are errors (-W)
docs: venv
	$(PY) -c "import sphinx, myst_parser" 2>/dev/null || \
		$(PY) -m pip install -q -c scripts/constraints.txt -e ".[docs]"
	$(PY) -m sphinx -E -W --keep-going -q -b html docs build/docs/html
	@echo "docs: build/docs/html/index.html"
