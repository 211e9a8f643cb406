"""The options of `pslora analyze-shifts` and the parsing of the ones given as text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core import shifts as S
from ..errors import InputError

RANK_ALIASES = {"d": "delta", "delta": "delta", "h": "history", "history": "history", "c": "combined",
                "combined": "combined"}


@dataclass
class AnalysisOptions:
    rank_by: str = "delta"
    ks: tuple[float, ...] = S.SUBSET_KS
    bins: int = S.DEFAULT_BINS
    max_samples: int = S.DEFAULT_MAX_SAMPLES
    tasks: list[str] | None = None
    intervene: bool = False
    subset: str = "opposite:top:10"
    compare: Path | None = None
    adapters: list[Path] | None = None  # PEFT adapter folders from anywhere, instead of a store
    out: Path | None = None
    write_store: bool = True
    figures: bool = True
    parsed_subset: dict = field(default_factory=dict)


def parse_rank_by(value: str) -> str:
    key = RANK_ALIASES.get(value.strip().lower())
    if key is None:
        raise InputError(f"--rank-by {value!r}: expected delta (|ΔW_t|), history (|H|) or combined (|C|)")
    return key


def parse_ks(value: str) -> tuple[float, ...]:
    try:
        ks = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--ks {value!r}: expected comma-separated percentages, e.g. 1,5,10,20,50") from None
    if not ks or any(not 0 < k <= 100 for k in ks):
        raise InputError(f"--ks {value!r}: each percentage must be in (0, 100]")
    return tuple(int(k) if k.is_integer() else k for k in ks)


def parse_subset(value: str) -> dict:
    """SIGN:PART:K, e.g. opposite:top:10 (the opposite-sign entries among the top-10% by the ranking key)."""
    parts = value.split(":")
    try:
        sign, part, k = parts
        k = float(k)
    except ValueError:
        raise InputError(f"--subset {value!r}: expected SIGN:PART:K, e.g. opposite:top:10") from None
    if sign not in S.SIGNS or part not in S.PARTS or not 0 < k <= 100:
        raise InputError(f"--subset {value!r}: SIGN is same or opposite, PART top or bottom, K in (0, 100]")
    return {"sign": sign, "part": part, "k": int(k) if k.is_integer() else k}
