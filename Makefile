# headstart: `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP_VERSION := 26.3
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
STAGE ?=
PYTEST_ARGS ?=

# DVC runs stage commands as `python -m stages.<name>`: make them find the venv's python.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint format docs-images docs bench bench-gpu lock fashion-mnist fonts browser ui clean push pull

setup: $(VENV)/.installed ## create .venv, install the locked dependencies and the project (the headstart command)

# The locked dependencies, then the checkout itself, editable: the headstart command (-qq hides setuptools' note
# on editable installs, which says only that the checkout's folders take precedence).
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps --editable .
	@touch $@

# $(call apt_install,<package>,<what happens without it>): install a Debian package when apt-get runs as root.
define apt_install
if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null) \
    || echo "warning: could not install $(1); $(2)"; \
else \
  echo "note: $(1) not installed (needs apt-get as root); $(2)"; \
fi
endef

fashion-mnist: ## install Debian's Fashion-MNIST when possible; otherwise the download stage uses the official URLs
	@if [ -d $(FASHION_MNIST_DIR) ]; then echo "Fashion-MNIST: $(FASHION_MNIST_DIR)"; \
	else $(call apt_install,dataset-fashion-mnist,the download stage will fetch the official files); fi

fonts: ## install a font with CJK glyphs when possible, so class names in any script draw in figures
	@if fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk"; then echo "CJK font: installed"; \
	else $(call apt_install,fonts-wqy-zenhei,figures will note the glyphs they cannot draw); fi

browser: ## install Debian's chromium when possible: the tests and docs-images drive it headless (Playwright)
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	else $(call apt_install,chromium,the browser tests will fail and docs-images cannot take screenshots); fi

run: setup fashion-mnist fonts ## dvc repro the default pipeline (STAGE=split: only up to that stage)
	dvc repro $(STAGE)

test: setup fashion-mnist fonts browser ## the whole test suite, in parallel (PYTEST_ARGS="-n 0" for one process)
	pytest -n auto --dist load --durations=20 $(PYTEST_ARGS)

lint: setup ## ruff (lint and format check) and mypy: zero findings, rules in pyproject.toml
	ruff check .
	ruff format --check .
	mypy

format: setup ## apply ruff's formatting and safe fixes
	ruff format .
	ruff check --fix .

docs: setup ## build the docs site into site/ (mkdocs build --strict: a broken link fails)
	$(BIN)/mkdocs build --strict --site-dir site

docs-images: setup browser ## the docs' screenshots of the last run (report, MLflow runs table) and dvc dag (needs chromium)
	python docs/screenshots.py

bench: setup ## every benchmark in benchmarks/report.py's list → benchmarks/results/*.json, one table → benchmarks/RESULTS.md
	python -m benchmarks.report --run-all

bench-gpu: setup ## GPU figures at 224 px (extract, forward alone, fine-tune; mixed precision off and on) → benchmarks/results/gpu.json; refuses without a GPU
	python -m benchmarks.gpu && python -m benchmarks.report

lock: ## re-resolve pyproject.toml's ranges and rewrite requirements.lock
	rm -rf $(VENV).lock && $(PYTHON) -m venv $(VENV).lock
	$(VENV).lock/bin/python -m pip install --quiet --upgrade pip==$(PIP_VERSION)
	$(VENV).lock/bin/python -m pip install --quiet ".[test,dev]"
	$(VENV).lock/bin/python -m pip freeze --exclude-editable | grep -v '^headstart' | sort -f > requirements.lock
	rm -rf $(VENV).lock

ui: setup ## the MLflow UI on the embedded store, opened on the training runs (it prints the address)
	headstart ui --host 127.0.0.1 --port 5000

clean: ## remove the venv and caches (not data, models or MLflow runs)
	rm -rf $(VENV) .pytest_cache .cache

push: setup ## dvc push the cached results to the default remote (docs/team.md, "Share with a team")
	dvc push

pull: setup ## dvc pull a teammate's results for this commit; `make run` then has nothing to redo
	dvc pull
