#!/usr/bin/env bash
# Behaviour check for a restructuring: the same 2-task class-incremental sequence (MiniLM, real WordNet data)
# with inc-lora, seq-lora and ps-lora (variant dir+fro), `pslora run` then `pslora merge --out`, written to OUT.
# Run it with two checkouts and compare the outputs with benchmarks/checks/equivalence_compare.py.
#   usage: benchmarks/checks/equivalence.sh OUT [PYTHON]      (PYTHONPATH selects the checkout)
set -euo pipefail
out=${1:?usage: equivalence.sh OUT [PYTHON]}
python=${2:-python}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
for method in inc-lora seq-lora ps-lora; do
  store="$out/$method"
  rm -rf "$store"
  OMP_NUM_THREADS=1 "$python" -m pslora_cli run "$here/task_sequences/wordnet-nouns.yaml" --store "$store" --quiet \
    --set method.name=$method --set method.variant=dir+fro --set training.steps=30 \
    --set 'tasks=[{id: t1, data: {type: wordnet, pos: noun, classes: [animal, food, person, location], train_per_class: 40, test_per_class: 30}}, {id: t2, data: {type: wordnet, pos: noun, classes: [artifact, plant, time, body], train_per_class: 40, test_per_class: 30}}]' \
    > /dev/null
  OMP_NUM_THREADS=1 "$python" -m pslora_cli merge --store "$store" --out "$out/$method.safetensors" --quiet > /dev/null
  echo "$method: done"
done
