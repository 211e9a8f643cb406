"""MagMax (Marczak et al., ECCV 2024), after its official code (danielm1405/magmax, read: `finetune_splitted.py`,
`merge_splitted.py`, `src/merging/task_vectors.py`):

- `magmax`: sequential training, task t starting from the weights after task t−1 (`finetune_splitted.py` loads
  `finetuned_{t-1}.pt` when `--sequential-finetuning`): one LoRA adapter trained on, as seq-lora, so the stored
  adapter of task t is the cumulative task vector τ_t = θ_t − θ0 (the official vectors are measured from the
  pretrained checkpoint); stage t = θ0 + 0.5 · per element the τ_i (i ≤ t) largest in |value|, ties to the later
  task (`merge_max_abs`; 0.5 from `merge_splitted.py`: `method.merge_scale`).
- `magmax-ind`: the paper's independent fine-tuning, each task from θ0 (a new adapter per task, earlier ones not in
  the forward pass); the same merge over the per-task updates.

No loss term; the stored adapters stay stock PEFT adapters.
"""

from .registry import Knob, MethodSpec, register

# The merged update's scale (0.5 in merge_splitted.py), chosen per stage on the seen tasks' validation split under
# a selection protocol.
SCALE = (Knob("merge_scale", kind="merge", acts_from=0),)

register(
    MethodSpec("magmax", "MagMax: one adapter trained on through the tasks (cumulative task vectors), merged by "
                         "largest |value| times 0.5", merge="magmax",
               previous="none", init="previous", knobs=SCALE),
    MethodSpec("magmax-ind", "MagMax on independent adapters (each task from W0), merged by largest |value| "
                             "times 0.5", merge="magmax", previous="none",
               knobs=SCALE),
)
