# Every target that runs something does its own set-up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?=
DEMO_OUT ?= runs/demo

.PHONY: setup test test-fast docs demo quality lungs-weights clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first, pinned to the releases this project is tested with
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal

# the unit tests only (not marked slow): for development
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow"

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

demo: setup
	$(VENV)/bin/chestxray demo --out $(DEMO_OUT) $(if $(DATA),--data $(DATA),)

# the lung segmenter shipped in the package: trained on the V7 masks of ../shared/data/lung-masks, then copied in
lungs-weights: setup
	$(VENV)/bin/chestxray lungs train --data ../shared/data/lung-masks --out runs/lungs-v7 --epochs 40 --quiet
	$(PY) -m chestxray.jobs.lungs package runs/lungs-v7

quality: setup
	$(PY) benchmarks/quality.py

clean:
	rm -rf $(VENV) runs .pytest_cache
