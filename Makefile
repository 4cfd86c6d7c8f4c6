# Two commands for a newcomer:  `make say`  (speak a sentence to out/hello.mp4)  and  `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The CPU torch wheel lies here on our machines; pip also reads PIP_FIND_LINKS if set elsewhere.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
TEXT ?= Hello! I am StreamChar, and I say whatever you type, live.

.PHONY: say test install install-dev system-deps proto lint

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

# Tests need redis-server (each test run starts private instances on free ports) and espeak-ng
# (the corpus's speech, through libespeak-ng).
system-deps:
	@command -v redis-server >/dev/null && command -v espeak-ng >/dev/null || { \
	  echo "installing Debian's redis-server and espeak-ng"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server espeak-ng >/dev/null; }

test: install-dev system-deps
	$(PY) scripts/gen_proto.py --check
	$(VENV)/bin/ruff check streamchar services scripts tests
	$(PY) -m pytest -q

proto: install-dev
	$(PY) scripts/gen_proto.py

lint: install-dev
	$(VENV)/bin/ruff check streamchar services scripts tests
