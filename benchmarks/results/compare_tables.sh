#!/usr/bin/env bash
# The method tables of benchmarks/RESULTS.md, each produced by the shipped `pslora compare`:
#   bash benchmarks/results/compare_tables.sh [text|mixed|fmnist ...]     (default: all three)
# Each (method, seed) trains into its own store under benchmarks/out/compare-*/; re-running resumes and
# trains only what is missing, then reprints the table. One torch thread per run: two runs side by side use the
# two cores of the reference machine without oversubscription. Measured there: about 5.5 min per store for the
# default text sequence (15 min for multitask, which trains steps x t at stage t).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
METHODS=${METHODS:-ps-lora,ps-loss-only,ps-merge-only,inc-lora,o-lora,seq-lora,per-task,multitask}
SEEDS=${SEEDS:-0,1,2}
table() {  # name sequence
  echo "== $2 ($(date -u +%FT%TZ))"
  /usr/bin/time -f "wall %e s" .venv/bin/pslora compare "$2" --methods "$METHODS" --seeds "$SEEDS" \
    --out "benchmarks/out/compare-$1" --device cpu --quiet
}
for which in "${@:-text mixed fmnist}"; do
  for w in $which; do
    case $w in
      text)   table text task_sequences/wordnet-nouns.yaml ;;
      mixed)  table mixed task_sequences/text-mixed.yaml ;;
      fmnist) table fmnist task_sequences/split-fashion-mnist.yaml ;;
      *) echo "unknown table $w (text, mixed, fmnist)" >&2; exit 2 ;;
    esac
  done
done
