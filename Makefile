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

# --durations=15: the slowest tests, the first place to look when CI nears its 10-minute budget
test: install
	$(VENV)/bin/ruff check . && $(PY) -m pytest -q --durations=15
