#!/usr/bin/env bash
# Behaviour check for a restructuring: each method on two short sequences, `pslora run` then `pslora merge --out`,
# written to OUT/SEQ-METHOD{,.safetensors}. Run it with two checkouts and compare the outputs with
# benchmarks/checks/equivalence_compare.py (bitwise: max |difference| 0).
#   nouns: a 2-task class-incremental sequence on MiniLM (encoder, heads), real WordNet data, 30 steps a task;
#   gen:   gen-demo's three yes/no tasks on SmolLM2-135M (answers in words), 4 steps a task, 16 examples a class.
#   usage: benchmarks/checks/equivalence.sh OUT [PYTHON]      (PYTHONPATH selects the checkout;
#          METHODS="ps-lora o-lora ..." chooses the methods, default the four with loss terms or hooks)
set -euo pipefail
out=${1:?usage: equivalence.sh OUT [PYTHON]}
python=${2:-python}
here=$(cd "$(dirname "$0")/../.." && pwd)
methods=${METHODS:-ps-lora o-lora n-lora inflora}
mkdir -p "$out"
nouns=(task_sequences/wordnet-nouns.yaml --set method.variant=dir+fro --set training.steps=30
  --set 'tasks=[{id: t1, data: {type: wordnet, pos: noun, classes: [animal, food, person, location], train_per_class: 40, test_per_class: 30}}, {id: t2, data: {type: wordnet, pos: noun, classes: [artifact, plant, time, body], train_per_class: 40, test_per_class: 30}}]')
# the file ships the selection protocol; fixed keeps the check to one training a task, as older checkouts ran it
gen=(task_sequences/gen-demo.yaml --set training.steps=4 --set method.sparsity_form=update --set selection.protocol=fixed)
for t in sentiment animal food; do
  gen+=(--set "tasks.$t.data.train_per_class=16" --set "tasks.$t.data.test_per_class=4"
        --set "tasks.$t.data.validation_per_class=4")
done
for seq in nouns gen; do
  declare -n args=$seq
  for method in $methods; do
    store="$out/$seq-$method"
    rm -rf "$store"
    # from OUT, not the checkout: `python -m` puts the working folder first on sys.path
    (cd "$out" && OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 "$python" -m pslora_cli run "$here/${args[0]}" --store "$store" \
      --quiet --set method.name=$method "${args[@]:1}" > /dev/null)
    (cd "$out" && OMP_NUM_THREADS=1 "$python" -m pslora_cli merge --store "$store" --out "$seq-$method.safetensors" \
      --quiet > /dev/null)
    echo "$seq $method: done"
  done
done
