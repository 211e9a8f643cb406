# make demo         - set everything up and run the default demo offline: gen-demo (SmolLM2 writes the answers,
#                     three short tasks), the recommended method beside incremental LoRA, two runs side by side
# make demo-encoder - the encoder demo: MiniLM with heads, the class-incremental wordnet-nouns sequence
# make demo-lm      - the full generative sequence gen-mixed-order1 (four tasks of 100 steps), ps-lora
# make test       - set everything up and run the tests (tests/unit, tests/e2e and the rest of tests/)
# make test-unit  - only tests/unit: tiny random models and synthetic data, no data packages (under a minute)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEB_PACKAGES := wordnet-base dataset-fashion-mnist
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo demo-encoder demo-lm test test-unit test-e2e bench clean-demo debs

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
	$(BIN)/pslora compare task_sequences/gen-demo.yaml --methods ps-lora,inc-lora --seeds 0 --jobs 2 --out demo-compare

demo-encoder: setup
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
	$(BIN)/python benchmarks/performance/run.py

clean-demo:
	rm -rf demo-compare demo-store demo-lm-store
