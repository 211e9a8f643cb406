"""Post-training merges of per-task updates ΔW_1..ΔW_N, one module at a time: one merge per file, listed in MERGES
by name with a one-line summary. The CLI's help, the sequence validator and `pslora merge` read MERGES; a merge's
module is imported only when it runs, so that the list costs no torch import.

Each merge module defines `merge(make_deltas, **options)`: `make_deltas` is a zero-argument callable returning a
fresh iterable of the tasks' dense updates (so that a merge can stream over tasks, twice if it needs to, without
holding them all); the options are the ones its MergeInfo declares (TIES's `density`, the `scale` of task
arithmetic and MagMax), and a merge receives no other. A merge that can work from the LoRA
factors without forming the dense products also defines `from_factors(iterable of (scale·B_i, A_i))`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from types import ModuleType

from ...registries import register_into


@dataclass(frozen=True)
class MergeOption:
    """A typed option a merge declares: its keyword, the sequence setting that gives it, its default and range."""
    name: str  # the merge's keyword: "density", "scale"
    setting: str  # the sequence's key under method: "merge_density", "merge_scale"
    default: float
    help: str
    low: float | None = None  # exclusive lower bound (None: any finite number)
    high: float | None = None  # inclusive upper bound

    def valid(self, value) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
            and (self.low is None or value > self.low) and (self.high is None or value <= self.high)

    @property
    def allowed(self) -> str:
        return f"a number in ({self.low:g}, {self.high:g}]" if self.low is not None else "a finite number"


DENSITY = MergeOption("density", "merge_density", 0.2, "the fraction of each update TIES keeps", 0.0, 1.0)


def _scale(default: float) -> MergeOption:
    return MergeOption("scale", "merge_scale", default, "the merged update's scale")


@dataclass(frozen=True)
class MergeInfo:
    name: str
    module: str
    summary: str
    parameters: tuple[MergeOption, ...] = ()  # the keyword options it takes, typed, with their defaults

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def load(self) -> ModuleType:
        """The merge's module: one of this package's by its short name, or a plug-in's by its full dotted name."""
        return importlib.import_module(self.module if "." in self.module else f"{__name__}.{self.module}")


MERGES: dict[str, MergeInfo] = {m.name: m for m in (
    MergeInfo("magnitude", "magnitude", "per element, the largest update in absolute value, with its sign (PS-LoRA)"),
    MergeInfo("sum", "summation", "the updates added"),
    MergeInfo("mean", "average", "the updates averaged"),
    MergeInfo("ties", "ties", "TIES: trim to method.merge_density, elect signs, disjoint mean", (DENSITY,)),
    MergeInfo("task-arithmetic", "task_arithmetic", "the updates added, times method.merge_scale", (_scale(1.0),)),
    MergeInfo("last", "last", "the last task's update alone (sequential LoRA)"),
    MergeInfo("magmax", "magmax", "MagMax: per element the largest update in absolute value (the later task on ties), "
                                  "times method.merge_scale (0.5 unless set)", (_scale(0.5),)),
)}
# method.merge_scale where the sequence gives none: each merge's own (MagMax's official 0.5), from its declaration.
MERGE_SCALE_DEFAULTS = {m.name: p.default for m in MERGES.values() for p in m.parameters if p.name == "scale"}


def register_merge(info: MergeInfo) -> None:
    """Add a merge (a plug-in's, docs/plugins.md): its module by full dotted name, its options among density and
    scale (the settings method.merge_density and method.merge_scale give them)."""
    unknown = [p.name for p in info.parameters if p.setting not in ("merge_density", "merge_scale")]
    if unknown:
        raise ValueError(f"merge {info.name!r}: option {unknown[0]!r} has no method setting (merge_density or "
                         f"merge_scale)")
    register_into(MERGES, [info], "merge")
    MERGE_SCALE_DEFAULTS.update({info.name: p.default for p in info.parameters if p.name == "scale"})
DEFAULT_MERGE = "magnitude"


def declared_options(method: str, **given) -> dict:
    """Of `given` (density, scale), the options the merge named `method` declares."""
    return {k: given[k] for k in MERGES[method].options}


def merge_module(make_deltas, method: str = DEFAULT_MERGE, **options):
    """Merge one module's updates with the merge named `method`, given the options it declares (others: an error)."""
    if method not in MERGES:
        raise ValueError(f"unknown merge method {method!r}; expected one of {tuple(MERGES)}")
    extra = set(options) - set(MERGES[method].options)
    if extra:
        raise ValueError(f"merge {method!r} takes no option {sorted(extra)[0]!r}")
    return MERGES[method].load().merge(make_deltas, **options)


def from_factors(method: str):
    """The merge's factor-space form, or None when it needs the dense updates."""
    return getattr(MERGES[method].load(), "from_factors", None) if method in MERGES else None


def adds_from_factors(method: str):
    """The merge's in-place form `add_from_factors_(weight, factors)` (weight += the merge, row block by row block,
    the merge never formed in full), or None."""
    return getattr(MERGES[method].load(), "add_from_factors_", None) if method in MERGES else None


def merges_help() -> str:
    return "; ".join(f"{m.name}: {m.summary}" for m in MERGES.values())
