"""The method registry: what a method declares (MethodSpec, its Knobs) and the name -> spec table. The method
modules import this, and the package imports them, so nothing imports the package from inside it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    """A setting a selection protocol may tune (config/schema.py, Selection), declared by the method it belongs to.

    kind "weight": a loss term's weight; stronger is larger, weakening multiplies by the decay α, off is 0.
    kind "share": a share of energy kept protected (InfLoRA's threshold θ); stronger is closer to 1, weakening
    divides the unprotected share 1 − θ by α, off protects nothing.
    kind "merge": an option of the method's merge (MagMax's scale), chosen per stage after training.
    The strongest candidate is ten times the method's own default (in unprotected share for a "share"), the same
    rule for every method, so that no method's range was drawn for it. `acts_from`: the first task (0-based) whose
    training the knob changes (1 for terms that read the earlier tasks: at task 0 there is nothing to choose).
    Only kind "weight" knobs have an off value (a share's off, no protection, is not one of its settings)."""
    field: str
    kind: str = "weight"
    acts_from: int = 1
    per_task: bool = True  # False: a run-level setting (first-tasks tunes it; stability decay leaves it as set)

    def strongest(self, default: float) -> float:
        return default * 10 if self.kind == "weight" else 1 - (1 - default) / 10

    def weaken(self, value: float, decay: float) -> float:
        return value * decay if self.kind == "weight" else 1 - (1 - value) / decay

    def candidates(self, default: float, decay: float, count: int) -> list[float]:
        """The values tried, strongest first (rounded to 12 significant digits, so that records read cleanly).
        A "merge" knob (a merge's scale, chosen after training on the seen tasks' validation split, at no training
        cost) has no strength: its candidates run evenly from twice its default down, (count − n)/count × 2·default,
        so that the default is among them for an even count."""
        if self.kind == "merge":
            return [float(f"{2 * default * (count - n) / count:.12g}") for n in range(count)]
        values = [self.strongest(default)]
        while len(values) < count:
            values.append(self.weaken(values[-1], decay))
        return [float(f"{v:.12g}") for v in values]

    @property
    def off(self) -> float:
        return 0.0


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    # True: the term is on (its weight must be > 0); False: forced off; None: the sequence's weight decides.
    stability: bool | None = None
    orthogonality: bool | None = None
    sparsity: bool | None = False  # N-LoRA's l1 term: off unless a method (or custom, None) asks for it
    # Fixed settings (None: left to the sequence): the merge, and how earlier tasks enter training (merge/sum/none).
    merge: str | None = None
    previous: str | None = None
    # How task t's adapter starts: "new" (random A, B = 0), "previous" (task t-1's factors, trained on), or
    # "joint" (tasks 1..t trained together from scratch, one joint head per stage).
    init: str = "new"
    # InfLoRA: A_t fixed before training from the task's inputs, away from the earlier tasks' input subspace
    # (core/subspace.py); only B_t trains, and each task folder keeps the subspace after it.
    input_subspace: bool = False
    # Each task scored with its own adapter alone (an oracle that is told the task): no merged stage.
    own_adapters: bool = False
    # What a selection protocol may tune (Knob); empty: nothing (inc-lora, seq-lora, the bounds), run as it is.
    knobs: tuple[Knob, ...] = ()

    @property
    def trains_jointly(self) -> bool:
        return self.init == "joint"

    @property
    def continues_previous(self) -> bool:
        return self.init == "previous"


METHODS: dict[str, MethodSpec] = {}


def register(*specs: MethodSpec) -> None:
    for spec in specs:
        if spec.name in METHODS:
            raise ValueError(f"method {spec.name!r} is registered twice")
        METHODS[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    return METHODS[name]


def methods_help() -> str:
    """One line per method, for the CLI's help."""
    return "; ".join(f"{spec.name}: {spec.summary}" for spec in METHODS.values())
