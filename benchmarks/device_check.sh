#!/usr/bin/env bash
# On a CUDA machine, from the repository root:  bash benchmarks/device_check.sh [--only ...] [--lm FOLDER]
# One command for the checks that need a GPU (benchmarks/performance/device_check.py prints what each step is):
# preflight, the CUDA correctness checks of gpu_check.sh, one training step of a random-weight LLaMA-7B in bfloat16
# (plain LoRA vs PS-LoRA), and gen-mixed-order1 for the main methods; one table at the end, also in
# $OUT/device_check.json. Before, here: `python benchmarks/performance/device_check.py --prepare` writes
# benchmarks/device-carry/ (data, the gguf package, SmolLM2 in parts) and prints what to carry in which call.
# Exit status 1 when a step fails. The CPU dry run: --device cpu --tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_NO_ADVISORY_WARNINGS=1
if [ -d benchmarks/device-carry/pylib ]; then export PYTHONPATH="$PWD/benchmarks/device-carry/pylib${PYTHONPATH:+:$PYTHONPATH}"; fi
if ! "$PY" -c "import pslora_cli" 2>/dev/null; then export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi
exec "$PY" benchmarks/performance/device_check.py "$@"
