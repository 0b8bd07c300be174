# normlab's two commands: `make demo` (install + the main example) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	bash scripts/demo.sh

# -n 2 --dist loadfile: two pytest-xdist workers (the CI machine's two cores; much of a test is
# single-threaded compilation), each test file on one worker so that module fixtures (a SLURM
# cluster, an experiment's tiny runs) are built once. --durations=15: the slowest tests, the
# first place to look when CI nears its 10-minute budget.
test: install
	$(VENV)/bin/ruff check . && $(PY) -m pytest -q -n 2 --dist loadfile --durations=15
