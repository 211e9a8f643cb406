"""N-LoRA's two l1 forms on one trained adapter: Σ ‖A B‖₁ (the official r x r product) and Σ ‖s B A‖₁ (the
update) over its square modules, and their ratio, from which the update form's default weight is set
(config/validate.py, SPARSITY_DEFAULTS).

    python benchmarks/results/sparsity_forms.py TASK_FOLDER      (a store's tasks/<id> or any PEFT adapter folder)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def main(folder: str) -> None:
    folder = Path(folder)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    official = update = update_all = 0.0
    square = modules = 0
    for key, a in weights.items():
        if not key.endswith("lora_A.weight"):
            continue
        b = weights[key.replace("lora_A", "lora_B")]
        value = (scale * b @ a).abs().sum().item()
        update_all += value
        modules += 1
        if a.shape[1] == b.shape[0]:
            official += (a @ b).abs().sum().item()
            update += value
            square += 1
    print(f"{modules} modules, {square} square; over the square ones: official {official:.2f}, update {update:.2f}, "
          f"ratio official/update {official / update:.3g}; update over all modules {update_all:.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(print(__doc__))
    main(sys.argv[1])
