"""InfLoRA (Liang & Li, CVPR 2024, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning"), after
its official code (liangyanshuo/InfLoRA; read: `methods/inflora.py` (`_train`: the input matrix collected over the
task's training data, A_t from its SVD after projecting out the earlier subspace, only the B's and the head
trained; `update_DualGPM`: the subspace grown after each task with the threshold (lame − lamb)·t/T + lamb),
`models/vit_inflora.py` and `models/sinet_inflora.py` (the input matrix: the mean of x xᵀ over the tokens of the
inputs to the adapted linear layer; B initialised to zero), `configs/cifar100_inflora.json` (lamb 0.95, lame 1.0);
its T5/LLaMA form is `liangyanshuo/gainlora`).

Per adapted module, before task t trains, A_t = (top-r left singular vectors of (I − M Mᵀ) C_t)ᵀ/√3, with C_t the
task's input matrix (computed through the model with the earlier tasks' updates summed in) and M the earlier
tasks' input subspace; A_t stays frozen and B_t trains from 0, so ΔW_t x = 0 for every x in span(M). After
training, M is extended from the task's input matrix through the trained model and saved in the task folder
(`input_bases.safetensors`), which the next task reads: a resumed or later `train-task` continues exactly. The
earlier adapters are summed into training and into the final model, as the official code sums every task's
B_i A_i. Linear layers only: a convolution's input is not a token vector (refused before the store is created).

Two official recipes, chosen by the backbone's kind (method.subspace_design, method.subspace_threshold): images
take the one above (InfLoRA, lamb 0.95); language models take gainlora's (liangyanshuo/gainlora, read:
`src/cl_trainer_inflora.py`, `get_reg_matrix` and `get_repsentation`; `gen_script_*_inflora.sh`: threshold 0.995):
A_t is the randomly initialised A with its part in the earlier subspace removed (A − A M Mᵀ), rows scaled to norm
1/√3, frozen (the first task keeps A as initialised), B_t trains from 0, and the subspace grows after each task by
the same rule with threshold (1 − θ)·t/T + θ. On SmolLM2 the image recipe's top singular vectors of the inputs
protect only 1–13 of 576 input directions per module at 0.95; the language-model recipe is the one its authors run
on T5 and LLaMA. Its threshold is a run-level knob (it shapes the subspace every later task reads): the first-tasks
protocol tunes it; stability decay, which tunes per task, leaves it as set.
"""

from .registry import Knob, MethodSpec, register

register(MethodSpec("inflora", "InfLoRA: A_t fixed away from earlier tasks' input subspace, only B_t trains, "
                               "earlier adapters summed", stability=False, orthogonality=False,
                    merge="sum", previous="sum", input_subspace=True,
                    # acts_from 0: the threshold shapes the subspace saved after the first task too
                    knobs=(Knob("subspace_threshold", kind="share", acts_from=0, per_task=False),)))
