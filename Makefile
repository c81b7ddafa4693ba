# `make demo` and `make test` set everything up on a fresh machine (Python 3.11 + pip).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench perf-doc clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sysarray demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	$(PY) benchmarks/bench_engines.py
	$(PY) benchmarks/bench_inference.py

# docs/performance.md from benchmarks/results/*.json (the page is generated, never edited)
perf-doc: $(STAMP)
	$(PY) benchmarks/render_performance.py

clean:
	rm -rf $(VENV) build *.egg-info
