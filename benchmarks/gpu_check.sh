#!/usr/bin/env bash
# On a CUDA machine, from the repository root:  bash benchmarks/gpu_check.sh [--tokens 2048]
# Checks the lean stability loss against the dense reference on CUDA (float64), then times loss and training step
# (naive dense vs lean vs plain LoRA) and prints tables. Exit status 1 on a mismatch, 2 without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
exec "$PY" benchmarks/performance/gpu_check.py --device cuda "$@"
