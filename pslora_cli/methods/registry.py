"""The method registry: what a method declares (MethodSpec: its loss Terms, its training Hooks, its Knobs; its
own settings through `declare`) and the name -> spec table. The method modules import this, and the package
imports them, so nothing imports the package from inside it. Nothing here or in a method module imports the
config or the training code: the validator, the stored form, preflight, the regulariser and the recipe read these
declarations and name no method."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..registries import register_into


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


# -- settings ---------------------------------------------------------------------------------------------------

# The method section's settings that belong to one method or loss term, in declaration order: name -> the field
# (fields.setting). config/schema.py builds the Method section from them and its own (name, merge, previous), so
# a method's settings are typed, defaulted, documented and validated like every other key.
SETTINGS: dict[str, dataclasses.Field] = {}


def declare(**fields: dataclasses.Field) -> tuple[str, ...]:
    """Declare settings of the `method:` section (each a fields.setting(...)); returns their names."""
    for name, f in fields.items():
        if name in SETTINGS:
            raise ValueError(f"method setting {name!r} is declared twice")
        SETTINGS[name] = f
    return tuple(fields)


# -- loss terms -------------------------------------------------------------------------------------------------

@dataclass
class TermInputs:
    """What a term is built from, once per task, by the training recipe."""
    method: Any  # the sequence's Method settings
    layers: dict  # weight name -> the PEFT LoRA layer being trained
    previous: list  # the earlier tasks' adapters (models/adapters.py AdapterFile: .dir, .factors(name, device), .scale)
    history: Any  # weight name -> H = the sum of the earlier updates, formed when read (SummedHistory)
    device: Any
    record: dict = dataclasses.field(default_factory=dict)  # what the term adds to the task's training metrics


@dataclass(frozen=True)
class Term:
    """A term a method adds to the task loss, weighed by one of its settings.

    name: the step record's key is f"{name}_loss"; short: its label in progress lines. weight: the setting that
    weighs it. settings: the others that act on training while it is on (the task cache's key; idle while off).
    make(inputs) -> loss(layers), the term's value for the current factors (built once per task; torch is imported
    there, not here). reads_history: it acts only once earlier tasks exist. default(method) -> the weight a null
    resolves to under a method that switches the term on. check(method, shapes): a refusal that needs the model's
    weight shapes, run before a store is created where needs_shapes(method). validate(method): rules tying its
    settings together, on the validated section (a dict), raising InputError("method.key: ...")."""
    name: str
    short: str
    weight: str
    make: Callable
    settings: tuple[str, ...] = ()
    reads_history: bool = True
    default: Callable[[dict], float] = lambda method: 0.0
    check: Callable | None = None
    needs_shapes: Callable[[Any], bool] = lambda method: False
    validate: Callable[[dict], None] | None = None


TERMS: dict[str, Term] = {}


def register_term(term: Term) -> Term:
    register_into(TERMS, [term], "loss term")
    return term


# -- training hooks ---------------------------------------------------------------------------------------------

class Hooks:
    """What a method does in training beyond its loss terms (InfLoRA's design and extension of A; EWC's Fisher),
    each a no-op here. `run` is the recipe's TaskTraining (training/recipe.py): seq, index, device, layers,
    peft_model, model, previous (the earlier AdapterFiles) and batch(idx), the model inputs and targets of
    training rows. `settings`: the method's own settings these read (idle under another method)."""
    settings: tuple[str, ...] = ()
    key_name: str = "hooks"  # the name of its part of the task cache's key

    def resolve(self, method: dict, backbone_kind: str) -> None:
        """Fill settings that depend on the backbone's kind (in the validated section, a dict); InputError
        "method.key: ..." on a bad combination."""

    def needs_shapes(self, method) -> bool:
        return False

    def check(self, method, shapes: dict[str, tuple]) -> None:
        """A refusal that needs the model's adapted weight shapes (before a store is created)."""

    def before_training(self, run) -> None:
        """After LoRA is attached and before the optimiser is built (a frozen factor is set here)."""

    def frozen_parameters(self, run) -> tuple[str, ...]:
        """Name parts of parameters that do not train but that a resumed run must get back exactly."""
        return ()

    def after_training(self, run, folder) -> dict:
        """After the last step: files the next task reads go into `folder` (None on a rank that does not write);
        returns what to add to the task's training metrics."""
        return {}

    def cache_key(self, method, n_tasks: int) -> Any:
        """What else of the method acts on a task's training (the task cache's key); None: nothing."""
        return None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    # The loss terms (TERMS names) the method switches on (True: its weight must be > 0) or leaves to the
    # sequence's weight (None); every other term is off. custom leaves every term to the sequence (any_terms).
    terms: tuple[tuple[str, bool | None], ...] = ()
    any_terms: bool = False
    # Fixed settings (None: left to the sequence): the merge, and how earlier tasks enter training (merge/sum/none).
    merge: str | None = None
    previous: str | None = None
    # How task t's adapter starts: "new" (random A, B = 0), "previous" (task t-1's factors, trained on), or
    # "joint" (tasks 1..t trained together from scratch, one joint head per stage).
    init: str = "new"
    # What it does in training beyond loss terms (Hooks); None: nothing.
    hooks: Hooks | None = None
    # Each task scored with its own adapter alone (an oracle that is told the task): no merged stage.
    own_adapters: bool = False
    # What a selection protocol may tune (Knob); empty: nothing (inc-lora, seq-lora, the bounds), run as it is.
    knobs: tuple[Knob, ...] = ()

    def term_state(self, term: str) -> bool | None:
        """True: on; False: off; None: the sequence's weight decides."""
        if self.any_terms:
            return None
        return dict(self.terms).get(term, False)

    @property
    def trains_jointly(self) -> bool:
        return self.init == "joint"

    @property
    def continues_previous(self) -> bool:
        return self.init == "previous"


METHODS: dict[str, MethodSpec] = {}


def register(*specs: MethodSpec) -> None:
    register_into(METHODS, specs, "method")


def get_method(name: str) -> MethodSpec:
    return METHODS[name]


def active_terms(method, has_history: bool) -> list[Term]:
    """The terms that act on a task's training under `method` (the sequence's Method settings), in registration
    order: weight > 0 (validation sets the weight of a term the method switches off to 0), and earlier tasks there
    if the term reads them."""
    return [term for term in TERMS.values()
            if (getattr(method, term.weight) or 0) > 0 and (has_history or not term.reads_history)]


def method_settings(spec: MethodSpec) -> set[str]:
    """The settings that act under this method: its terms' (weights included) and its hooks'."""
    names = set(spec.hooks.settings) if spec.hooks else set()
    for term in TERMS.values():
        if spec.term_state(term.name) is not False:
            names |= {term.weight, *term.settings}
    return names


def methods_help() -> str:
    """One line per method, for the CLI's help."""
    return "; ".join(f"{spec.name}: {spec.summary}" for spec in METHODS.values())
