"""The methods registry (pslora_cli.methods) and the merges registry (pslora_cli.core.merges): every registered
method validates in a sequence with its fixed settings applied, every registered merge equals a hand computation,
and names outside the registries are refused with the key they came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from pslora_cli.config import sequence_from_text
from pslora_cli.core.merges import DEFAULT_MERGE, MERGES, merge_module, merges_help
from pslora_cli.errors import InputError
from pslora_cli.methods import METHODS, MethodSpec, methods_help

GOOD = """\
name: s
tasks:
  - id: a
    data: {type: wordnet, classes: [animal, food]}
  - id: b
    data: {type: wordnet, classes: [person, plant]}
"""


def parse(overrides=None):
    return sequence_from_text(GOOD, "seq.yaml", Path("."), overrides)


def error(overrides) -> str:
    with pytest.raises(InputError) as exc:
        parse(overrides)
    assert "\n" not in str(exc.value)
    return str(exc.value)


# -- methods ----------------------------------------------------------------------------------------------------

def test_the_registry_holds_the_documented_methods():
    # docs/methods.md's table lists every registered method, in the registry's order
    table = (Path(__file__).resolve().parents[2] / "docs" / "methods.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([a-z0-9+-]+)`", table.partition("\n| method | stability loss")[2], flags=re.M)
    assert list(METHODS) == list(dict.fromkeys(documented[:len(METHODS) + 1]))[:len(METHODS)]
    assert list(METHODS)[:4] == ["ps-lora", "ps-lora+o-lora", "ps-loss-only", "ps-merge-only"]
    assert all(isinstance(spec, MethodSpec) and spec.name == name for name, spec in METHODS.items())
    assert all(f"{name}: " in methods_help() for name in METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_validates_with_its_fixed_settings(name):
    spec = METHODS[name]
    method = parse([f"method.name={name}"]).method
    assert method.name == name and method.spec is spec
    assert method.merge == (spec.merge or DEFAULT_MERGE) and method.merge in MERGES
    assert method.previous == (spec.previous or "merge")
    # stability / orthogonality: forced off (0), on (the default weight, > 0), or as the sequence gives it; O-LoRA's
    # term is not added unless the method is an o-lora one or the sequence sets its weight
    assert method.stability_weight == (0.0 if spec.term_state("stability") is False else 1.0)
    assert method.orthogonality_weight == (0.5 if spec.term_state("orthogonality") else 0.0)
    assert method.sparsity_weight == (0.4 if spec.term_state("sparsity") else 0.0)
    assert method.stage_rule == ("own" if spec.own_adapters else method.merge)
    assert parse([f"method.name={name}"]).to_dict()["method"]["init"] == spec.init
    # a setting the method fixes cannot be changed; one it leaves open can
    for key, fixed, other in (("merge", spec.merge, "ties"), ("previous", spec.previous, "none")):
        if fixed is not None and fixed != other:
            assert f"method.{key}" in error([f"method.name={name}", f"method.{key}={other}"])
        elif fixed is None:
            assert getattr(parse([f"method.name={name}", f"method.{key}={other}"]).method, key) == other
    if spec.term_state("stability"):
        assert "needs stability_weight > 0" in error([f"method.name={name}", "method.stability_weight=0"])
    elif spec.term_state("stability") is False:
        assert parse([f"method.name={name}", "method.stability_weight=0.3"]).method.stability_weight == 0


def test_method_kinds():
    assert [n for n, s in METHODS.items() if s.trains_jointly] == ["multitask"]
    continuing = [n for n, s in METHODS.items() if s.continues_previous]  # one adapter trained on through the tasks
    assert {"seq-lora", "magmax"} <= set(continuing) and all(METHODS[n].previous == "none" for n in continuing)
    assert [n for n, s in METHODS.items() if s.own_adapters] == ["per-task"]
    custom = parse(["method.name=custom", "method.stability_weight=0.2", "method.orthogonality_weight=0.1",
                    "method.merge=mean", "method.previous=sum"]).method
    assert (custom.stability_weight, custom.orthogonality_weight, custom.merge, custom.previous) == \
        (0.2, 0.1, "mean", "sum")
    assert parse(["method.name=custom"]).method.orthogonality_weight == 0.0  # not O-LoRA's term unasked


def test_custom_without_an_orthogonality_weight_trains_without_o_lora_term(word_bert):
    from conftest import unit_sequence

    seq = unit_sequence(word_bert, method={"name": "custom"})
    assert seq.method.orthogonality_weight == 0.0
    stored = unit_sequence(word_bert, method={"name": "custom", "orthogonality_weight": 0.5})
    from pslora_cli.config import sequence_from_stored

    again = sequence_from_stored(stored.to_dict(), "seq.yaml", [])
    assert again.method.orthogonality_weight == 0.5  # a weight the sequence gave survives the store's copy


def test_merge_own_is_the_legacy_spelling_of_per_task_only():
    legacy = parse(["method.name=per-task", "method.merge=own"]).method
    assert legacy.merge == DEFAULT_MERGE and legacy.stage_rule == "own"
    assert parse(["method.name=per-task"]).method == legacy
    for name in ("ps-lora", "custom", "inc-lora"):
        msg = error([f"method.name={name}", "method.merge=own"])
        assert msg.startswith("seq.yaml: method.merge") and "per-task" in msg, msg


def test_unknown_method_or_merge_names_the_key():
    msg = error(["method.name=no-such-method"])
    assert msg.startswith("seq.yaml: method.name") and "'no-such-method'" in msg and all(n in msg for n in METHODS)
    msg = error(["method.name=custom", "method.merge=median"])
    assert msg.startswith("seq.yaml: method.merge") and "'median'" in msg and all(m in msg for m in MERGES)


@pytest.mark.parametrize("override, key", [("method.name=no-such-method", "method.name"),
                                           ("method.merge=median", "method.merge")])
def test_unknown_method_or_merge_exits_2_naming_the_key(override, key, tmp_path, capsys):
    seq = tmp_path / "seq.yaml"
    seq.write_text(GOOD)
    overrides = ["--set", "method.name=custom"] if key == "method.merge" else []
    code, _, err = run_cli(capsys, "run", seq, "--store", tmp_path / "store", "--set", override, *overrides)
    assert code == 2 and err.startswith(f"pslora: error: {seq}: {key}") and err.count("\n") == 1, err
    assert not (tmp_path / "store").exists()


def test_compare_refuses_an_unknown_method(tmp_path, capsys):
    seq = tmp_path / "seq.yaml"
    seq.write_text(GOOD)
    code, _, err = run_cli(capsys, "compare", seq, "--methods", "no-such-method", "--out", tmp_path / "c")
    assert code == 2 and "unknown method 'no-such-method'" in err
    assert not (tmp_path / "c").exists()
    code, _, err = run_cli(capsys, "compare", seq, "--methods", "ps-lora,o-lora", "--baseline", "inc-lora",
                           "--out", tmp_path / "c")
    assert code == 2 and "--baseline 'inc-lora': not one of --methods (ps-lora, o-lora)" in err
    assert not (tmp_path / "c").exists()


# -- merges -----------------------------------------------------------------------------------------------------

D1 = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
D2 = torch.tensor([[-3.0, -1.0, 0.25, 0.9]])
D3 = torch.tensor([[0.5, 2.0, -1.0, 0.0]])
# By hand, per element, for the three updates above:
EXPECTED = {
    # the value of largest |.|, ties to the earlier task: |-2| vs |2| in column 2 keeps D1's -2
    "magnitude": ({}, [[-3.0, -2.0, -1.0, 3.0]]),
    "sum": ({}, [[-1.5, -1.0, -0.25, 3.9]]),
    "mean": ({}, [[-0.5, -1.0 / 3, -0.25 / 3, 1.3]]),
    # scale * sum
    "task-arithmetic": ({"scale": 0.5}, [[-0.75, -0.5, -0.125, 1.95]]),
    "last": ({}, [[0.5, 2.0, -1.0, 0.0]]),
    # density 0.5 keeps the 2 largest |.| of each: D1 -> [0,-2,0,3], D2 -> [-3,-1,0,0], D3 -> [0,2,-1,0];
    # elected signs of the trimmed sum [-3,-1,-1,3]: [-,-,-,+]; disjoint means: -3, (-2-1)/2, -1, 3
    "ties": ({"density": 0.5}, [[-3.0, -1.5, -1.0, 3.0]]),
    # the value of largest |.|, ties to the later task (MagMax's >=): column 2 takes D3's 2; times the scale
    "magmax": ({"scale": 0.5}, [[-1.5, 1.0, -0.5, 1.5]]),
}


def test_every_merge_has_a_hand_computation():
    assert set(MERGES) == set(EXPECTED)
    assert DEFAULT_MERGE == "magnitude" and all(f"{name}: " in merges_help() for name in MERGES)


@pytest.mark.parametrize("name", sorted(MERGES))
def test_every_merge_equals_its_hand_computation(name):
    options, expected = EXPECTED[name]
    calls = []

    def make_deltas():
        calls.append(1)
        return iter([D1.clone(), D2.clone(), D3.clone()])

    out = merge_module(make_deltas, name, **options)
    assert torch.allclose(out, torch.tensor(expected), rtol=0, atol=1e-6), (name, out)
    assert MERGES[name].name == name and MERGES[name].load().merge is not None
    assert len(calls) == (2 if name == "ties" else 1)  # TIES streams over the tasks twice, the others once


def test_merge_options_reach_the_merge():
    # the defaults differ from the options above: the options are not ignored
    assert not torch.allclose(merge_module(lambda: iter([D1, D2, D3]), "task-arithmetic"),
                              merge_module(lambda: iter([D1, D2, D3]), "task-arithmetic", scale=0.5))
    assert not torch.allclose(merge_module(lambda: iter([D1, D2, D3]), "ties", density=1.0),
                              merge_module(lambda: iter([D1, D2, D3]), "ties", density=0.5))


def test_unknown_merge_module_is_refused():
    with pytest.raises(ValueError, match="unknown merge method 'median'"):
        merge_module(lambda: iter([D1]), "median")


def test_a_merge_chosen_for_one_command_gets_its_own_scale_unless_one_was_set():
    ps = parse(["method.name=ps-lora"]).method
    assert ps.merge_scale == 1.0 and ps.options_for("magmax")["scale"] == 0.5  # `pslora merge --method magmax`
    assert ps.options_for("task-arithmetic")["scale"] == 1.0
    mm = parse(["method.name=magmax"]).method
    assert mm.merge_options["scale"] == 0.5 and mm.options_for("task-arithmetic")["scale"] == 1.0
    set_ = parse(["method.name=custom", "method.merge=task-arithmetic", "method.merge_scale=0.3"]).method
    assert set_.options_for("magmax")["scale"] == 0.3 and set_.merge_options["scale"] == 0.3


def test_another_method_on_a_stored_sequence_resolves_its_own_weights_and_scale():
    """What a store recorded for one method (0 for O-LoRA's weight under custom, 1 for the scale under ps-lora) is
    not carried to another method chosen with --set method.name=..."""
    from pslora_cli.config import sequence_from_stored

    custom = parse(["method.name=custom"])
    olora = sequence_from_stored(custom.to_dict(), "manifest.json", ["method.name=o-lora"]).method
    assert olora.orthogonality_weight == 0.5
    magmax = sequence_from_stored(parse(["method.name=ps-lora"]).to_dict(), "manifest.json",
                                  ["method.name=magmax"]).method
    assert magmax.merge_scale == 0.5 and magmax.merge == "magmax"
    nlora = sequence_from_stored(parse(["method.name=ps-lora"]).to_dict(), "manifest.json", ["method.name=n-lora"])
    assert nlora.method.sparsity_weight == 0.4
    kept = parse(["method.name=custom", "method.orthogonality_weight=0.2"])
    assert sequence_from_stored(kept.to_dict(), "manifest.json").method.orthogonality_weight == 0.2


@pytest.mark.parametrize("override, merge", [("method.merge_density=0.5", "magnitude"),
                                             ("method.merge_scale=0.3", "magnitude"),
                                             ("method.merge_density=0.5", "magmax")])
def test_a_merge_option_the_merge_does_not_take_is_refused_naming_the_key(override, merge):
    name = "magmax" if merge == "magmax" else "ps-lora"
    key = override.split("=")[0]
    with pytest.raises(InputError, match=rf"^seq\.yaml: {key}: merge '{merge}' takes no"):
        parse([f"method.name={name}", override])


def test_a_merge_option_is_accepted_where_a_merge_in_play_takes_it():
    from pslora_cli.commands.grid import run_argv
    from pslora_cli.config import sequence_from_stored

    assert parse(["method.name=custom", "method.merge=ties", "method.merge_density=0.5"]).method.merge_density == 0.5
    assert parse(["method.name=magmax", "method.merge_scale=0.3"]).method.merge_scale == 0.3
    assert parse(["method.name=ps-lora", "method.merge_scale=1.0"]).method.merge_scale == 1.0  # its own default
    stored = parse(["method.name=ps-lora"]).to_dict()
    with pytest.raises(InputError, match="method.merge_density"):
        sequence_from_stored(stored, "manifest.json", ["method.merge_density=0.5"])
    # `pslora merge --method ties --set method.merge_density=0.5` on a magnitude store
    seq = sequence_from_stored(stored, "manifest.json", ["method.merge_density=0.5"], also_merges=("ties",))
    assert seq.method.options_for("ties") == {"density": 0.5}
    # a grid's merge option reaches the runs whose merge takes it, and the others' plan lines leave it out
    from types import SimpleNamespace

    base = SimpleNamespace(overrides=["method.merge_scale=0.3", "training.steps=5"], device_name="cpu")
    for method, kept in (("magmax", True), ("ps-lora", False)):
        run = SimpleNamespace(file="s.yaml", store="st", seed=0, method=method, data_dir=".")
        argv = run_argv(run, base)
        assert ("method.merge_scale=0.3" in argv) == kept and "training.steps=5" in argv
