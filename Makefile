# Two commands for a newcomer: `make run` (set up and start the app) and `make test` (set up and test).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
# Empty: the default demo directory, whose models load by their short names (demo/<task>).
DEMO_MODELS ?=

.PHONY: run test install dev demo-models bench screenshots server clean

$(VENV)/.installed: requirements.txt requirements-bundled.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-bundled.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

run: install
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

test: dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest

demo-models: install
	HF_HUB_OFFLINE=1 $(PY) -m inference.demo_models $(DEMO_MODELS)

bench: dev
	HF_HUB_OFFLINE=1 $(PY) bench/local_overhead.py
	HF_HUB_OFFLINE=1 $(PY) bench/remote_overhead.py

# The README's screenshots, taken by the browser test.
screenshots: dev
	HF_HUB_OFFLINE=1 SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest tests/test_browser.py -q

server: install
	$(PY) -m inference.server

clean:
	rm -rf $(VENV) $(DEMO_MODELS) .pytest_cache
