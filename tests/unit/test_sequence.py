"""Sequence YAML validation: every error is one InputError line naming the file, key path and line."""

import dataclasses
from pathlib import Path

import pytest

from pslora_cli.errors import InputError
from pslora_cli.config import apply_overrides, identity_hash, load_sequence, parse_yaml, sequence_from_text

ROOT = Path(__file__).resolve().parents[2]
GOOD = """\
name: s
backbone: {name: all-minilm-l6-v2}
tasks:
  - id: a
    data: {type: wordnet, classes: [animal, food]}
  - id: b
    data: {type: wordnet, classes: [person, plant]}
"""


def parse(text, overrides=None):
    return sequence_from_text(text, "seq.yaml", Path("."), overrides)


def error(text, overrides=None) -> str:
    with pytest.raises(InputError) as exc:
        parse(text, overrides)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_defaults_are_filled():
    seq = parse(GOOD)
    assert seq.scenario == "class-incremental"
    assert dataclasses.asdict(seq.lora) == {"rank": 8, "alpha": 16.0, "target_modules": ["query", "value"],
                                            "dropout": 0.0}
    assert seq.method.merge == "magnitude"
    assert seq.training.steps == 120 and seq.training.epochs is None
    assert seq.tasks[0].data["train_per_class"] == 200


def test_unknown_key_names_path_and_line():
    text = GOOD.replace("backbone: {name: all-minilm-l6-v2}", "backbone:\n  name: all-minilm-l6-v2\n  colour: red")
    assert error(text).startswith("seq.yaml: backbone.colour (line 4): unknown key (allowed: source, name, ")


def test_wrong_type_and_bad_choice():
    msg = error(GOOD.replace("name: s\n", "name: s\nlora:\n  rank: eight\n"))
    assert msg == "seq.yaml: lora.rank (line 3): expected integer, got str 'eight'"
    msg = error(GOOD.replace("name: s\n", "name: s\nscenario: domain\n"))
    assert "scenario (line 2): must be one of class-incremental, task-incremental" in msg
    msg = error(GOOD.replace("name: s\n", "name: s\nlora: {rank: true}\n"))
    assert "lora.rank" in msg and "true" in msg.lower()


def test_duplicate_task_ids_and_bad_ids():
    assert "tasks[1].id (line 6): duplicate task id 'a'" in error(GOOD.replace("id: b", "id: a"))
    assert "invalid task id '../x'" in error(GOOD.replace("id: b", "id: ../x"))


def test_data_errors_carry_file_and_path():
    msg = error(GOOD.replace("type: wordnet, classes: [person", "type: wordnet, colour: 1, classes: [person"))
    assert msg.startswith("seq.yaml: tasks[1].data.colour")
    msg = error(GOOD.replace("type: wordnet, classes: [person", "type: tweets, classes: [person"))
    assert "tasks[1].data.type" in msg and "tweets" in msg


def test_yaml_syntax_error_names_line():
    msg = error(GOOD + "  - id: [c\n")
    assert msg.startswith("seq.yaml: line ") and "invalid YAML" in msg


def test_steps_and_epochs_exclusive():
    msg = error(GOOD.replace("name: s\n", "name: s\ntraining: {epochs: 2, steps: 3}\n"))
    assert "set exactly one of training.steps and training.epochs" in msg
    assert parse(GOOD.replace("name: s\n", "name: s\ntraining: {epochs: 2, steps: null}\n")).training.epochs == 2


def test_method_presets():
    inc = parse(GOOD, ["method.name=inc-lora"]).method
    assert (inc.stability_weight, inc.orthogonality_weight, inc.merge, inc.previous) == (0, 0, "sum", "sum")
    olora = parse(GOOD, ["method.name=o-lora"]).method
    assert olora.orthogonality_weight == 0.5 and olora.stability_weight == 0 and olora.merge == "sum"
    ps = parse(GOOD).method
    assert ps.name == "ps-lora" and ps.stability_weight == 1.0 and ps.orthogonality_weight == 0
    assert ps.merge == "magnitude" and ps.spec.init == "new"
    seq_lora = parse(GOOD, ["method.name=seq-lora"]).method
    assert (seq_lora.merge, seq_lora.previous, seq_lora.spec.init) == ("last", "none", "previous")
    assert "method ps-lora uses merge 'magnitude', not 'sum'" in error(GOOD, ["method.merge=sum"])
    assert "needs stability_weight > 0" in error(GOOD, ["method.stability_weight=0"])
    assert "must be one of" in error(GOOD, ["method.name=no-such-method"])
    custom = parse(GOOD, ["method.name=custom", "method.merge=ties", "method.previous=sum"]).method
    assert custom.merge == "ties" and custom.stability_weight == 1.0


def test_set_overrides():
    seq = parse(GOOD, ["method.stability_weight=0.5", "tasks.b.data.train_per_class=7", "tasks.0.id=first",
                       "lora.target_modules=[query]"])
    assert seq.method.stability_weight == 0.5
    assert seq.tasks[1].data["train_per_class"] == 7
    assert seq.tasks[0].id == "first"
    assert seq.lora.target_modules == ["query"]
    assert "method.lambda" in error(GOOD, ["method.lambda=1"])
    with pytest.raises(InputError, match="no list item 'zz'"):
        parse(GOOD, ["tasks.zz.id=q"])
    with pytest.raises(InputError, match="expected key.path=value"):
        parse(GOOD, ["method.stability_weight"])


def test_identity_hash_ignores_training_settings():
    a, b = parse(GOOD), parse(GOOD, ["training.steps=5", "method.name=inc-lora"])
    assert identity_hash(a) == identity_hash(b)
    assert identity_hash(a) != identity_hash(parse(GOOD, ["lora.rank=4"]))


@pytest.mark.parametrize("path", sorted((ROOT / "task_sequences").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sequences_validate(path):
    seq, _ = load_sequence(path)
    assert seq.tasks


def test_missing_file():
    with pytest.raises(InputError, match="nope.yaml: sequence file not found"):
        load_sequence("nope.yaml")


def test_exponent_numbers_read_as_numbers():
    """PyYAML reads 1e-3 as a string (YAML 1.1); pslora reads it as YAML 1.2 does, in files and in --set."""
    raw = {"training": {"learning_rate": 0.01}}
    assert apply_overrides(raw, ["training.learning_rate=1e-3"], "x")["training"]["learning_rate"] == 1e-3
    assert parse_yaml("lr: 2E+2\nsteps: 3\n", "x") == {"lr": 200.0, "steps": 3}
    with pytest.raises(InputError):  # still the safe loader: no Python objects
        parse_yaml("x: !!python/object/apply:os.system [echo hi]", "x")


def test_stability_variants_and_reductions():
    from pslora_cli.methods.ps_lora import LITERAL_VARIANTS, SCALED_VARIANTS
    from pslora_cli.core import stability

    assert (SCALED_VARIANTS, LITERAL_VARIANTS) == (stability.MODULE_MEAN_VARIANTS, stability.LITERAL_VARIANTS)
    assert parse(GOOD).method.variant == stability.DEFAULT_VARIANT
    assert parse(GOOD, ["method.variant=dir+fro", "method.reduction=sum"]).method.reduction == "sum"
    msg = error(GOOD, ["method.reduction=sum"])
    assert msg.startswith("seq.yaml: method.reduction: variant 'magnitude-only' is a mean over elements by construction")


def test_a_key_given_twice_in_one_mapping_is_refused_naming_both_lines(tmp_path, capsys):
    from conftest import run_cli

    text = ("name: twice\ntraining:\n  steps: 3\ntasks:\n  - id: t1\n    data: {type: files, train: t.csv}\n"
            "training:\n  steps: 99999\n")
    with pytest.raises(InputError, match=r"line 7: key 'training' is given twice in one mapping \(lines 2 and 7\)"):
        parse_yaml(text, "twice.yaml")
    with pytest.raises(InputError, match="lines 1 and 2"):
        parse_yaml("a: 1\na: 2\n", "x")
    with pytest.raises(InputError, match="key 'steps' is given twice"):
        parse_yaml("training:\n  steps: 1\n  steps: 2\n", "x")
    assert parse_yaml("base: &b {steps: 1}\ntraining:\n  <<: *b\n  lr: 2\n", "x")["training"] == {"steps": 1, "lr": 2}
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "store")
    assert code == 2 and "given twice" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "store").exists()
