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

# -n 3 --dist loadfile: three pytest-xdist workers on the CI machine's two cores (a worker often
# waits: on single-threaded compilation, on the subprocesses of the kill/resume, multi-process
# and sweep tests). Measured on 2 cores: 7 min 17 s idle; 8 min 50 s with -n 2 (another process
# took ~3/4 of a core for 5 of those minutes); ~10 min serial. Each test file runs on one worker
# so that module fixtures (a SLURM cluster, an experiment's tiny runs) are built once.
# --durations=15: the slowest tests, the first place to look when CI nears its 10-minute budget.
test: install
	$(VENV)/bin/ruff check . && $(PY) -m pytest -q -n 3 --dist loadfile --durations=15
