#!/usr/bin/env bash
# On a CUDA machine, from the repository root:  bash benchmarks/performance/gpu_sequence.sh
# The default sequence (task_sequences/wordnet-nouns.yaml) three ways, timed side by side: one process on the CPU,
# one plain process on the GPU, and torchrun with one GPU (NCCL process group + DDP). Prints wall times and the
# task-agnostic ACC of each run (record them in benchmarks/RESULTS.md with the machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SEQ=task_sequences/wordnet-nouns.yaml
run() {  # name, command...
  local name=$1; shift
  local start=$(date +%s.%N)
  "$@" --store "$OUT/$name" --json --quiet > "$OUT/$name.json"
  local end=$(date +%s.%N)
  "$PY" - "$OUT/$name.json" "$name" "$(echo "$end - $start" | bc)" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
acc = doc["matrix"]["metrics"]["primary"]["acc"]
print(f"{sys.argv[2]:<22} wall {float(sys.argv[3]):7.1f} s   ACC {100 * acc:5.1f}")
PYEOF
}
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
run gpu-torchrun-nccl "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node 1 -m pslora_cli run "$SEQ" --device cuda
run gpu-one-process   "$PY" -m pslora_cli run "$SEQ" --device cuda
run gpu-fp32          "$PY" -m pslora_cli run "$SEQ" --device cuda --set training.precision=fp32
run cpu-one-process   "$PY" -m pslora_cli run "$SEQ" --device cpu
