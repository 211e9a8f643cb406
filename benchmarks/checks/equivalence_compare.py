"""Compare two outputs of benchmarks/checks/equivalence.sh: merged tensors (max |difference|) and the accuracy matrices.

    python benchmarks/checks/equivalence_compare.py OLD_OUT NEW_OUT      exit 1 when a difference exceeds 1e-6
"""

import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def main(old: Path, new: Path) -> int:
    worst = 0.0
    for method in ("inc-lora", "seq-lora", "ps-lora"):
        a, b = load_file(str(old / f"{method}.safetensors")), load_file(str(new / f"{method}.safetensors"))
        if set(a) != set(b):
            print(f"{method}: different tensor names")
            return 1
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        ma = json.loads((old / method / "eval" / "matrix.json").read_text())
        mb = json.loads((new / method / "eval" / "matrix.json").read_text())
        cells = [(name, t, i) for name in ("task_aware", "task_agnostic") for t, row in enumerate(ma[name])
                 for i in range(len(row))]
        mdiff = max(abs((ma[n][t][i] or 0) - (mb[n][t][i] or 0)) for n, t, i in cells)
        print(f"{method}: {len(a)} tensors, max |merged difference| {diff:.3g}; max |matrix difference| {mdiff:.3g}; "
              f"ACC {ma['metrics']['primary']['acc']:.4f} vs {mb['metrics']['primary']['acc']:.4f}")
        worst = max(worst, diff, mdiff)
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
