"""Compare two outputs of benchmarks/checks/equivalence.sh: merged tensors (max |difference|) and the accuracy matrices.

    python benchmarks/checks/equivalence_compare.py OLD_OUT NEW_OUT      exit 1 when any difference is not 0
"""

import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def main(old: Path, new: Path) -> int:
    worst = 0.0
    names = sorted(p.stem for p in old.glob("*.safetensors"))
    if not names or names != sorted(p.stem for p in new.glob("*.safetensors")):
        print(f"the two outputs hold different runs: {names} against {sorted(p.stem for p in new.glob('*.safetensors'))}")
        return 1
    for method in names:
        a, b = load_file(str(old / f"{method}.safetensors")), load_file(str(new / f"{method}.safetensors"))
        if set(a) != set(b):
            print(f"{method}: different tensor names")
            return 1
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        ma = json.loads((old / method / "eval" / "matrix.json").read_text())
        mb = json.loads((new / method / "eval" / "matrix.json").read_text())
        cells = [(name, t, i) for name in ("task_aware", "task_agnostic") if ma.get(name)
                 for t, row in enumerate(ma[name]) for i in range(len(row))]
        mdiff = max(abs((ma[n][t][i] or 0) - (mb[n][t][i] or 0)) for n, t, i in cells)
        print(f"{method}: {len(a)} tensors, max |merged difference| {diff:.3g}; max |matrix difference| {mdiff:.3g}; "
              f"ACC {ma['metrics']['primary']['acc']:.4f} vs {mb['metrics']['primary']['acc']:.4f}")
        worst = max(worst, diff, mdiff)
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
