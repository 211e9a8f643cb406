"""Adapters from anywhere are merged only when their factors are their update: `merge --adapters` and
`analyze-shifts --adapters` refuse PEFT initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoRA-GA,
LoftQ; exit 2 naming the folder and its init_lora_weights), accept PEFT's conversion of a trained PiSSA adapter to
plain LoRA (whose merge is the trained model's own weights), and treat out-of-range merge options as bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:PiSSA changes the base weights:UserWarning")]
MODULE = "encoder.layer.0.attention.self.query.weight"


def _peft(base: Path, init, r: int = 2, alpha: int = 4):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    return get_peft_model(AutoModel.from_pretrained(base),
                          LoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"], init_lora_weights=init))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from conftest import build_word_bert

    return build_word_bert(tmp_path_factory.mktemp("init-base") / "base")


@pytest.fixture(scope="module")
def plain(base, tmp_path_factory) -> Path:
    """A plain LoRA adapter with non-zero factors (init_lora_weights=False, what training leaves)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("plain") / "plain"
    _peft(base, False).save_pretrained(folder)
    return folder


def _with_init(source: Path, folder: Path, init) -> Path:
    """A copy of an adapter whose config names another init_lora_weights (the factors do not matter here)."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": init}))
    return folder


def _refused(capsys, tmp_path: Path, folders: list[Path], message: str) -> None:
    for out in (tmp_path / "out.safetensors", tmp_path / "out-model"):
        code, _, err = run_cli(capsys, "merge", "--adapters", *folders, "--out", out)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()
    code, _, err = run_cli(capsys, "analyze-shifts", "--adapters", *folders, "--out", tmp_path / "shifts")
    assert code == 2 and message in err, err
    assert not (tmp_path / "shifts").exists()


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_adapters_that_rewrite_the_base_weights_are_refused_naming_folder_and_init(base, plain, init, tmp_path,
                                                                                   capsys):
    torch.manual_seed(1)
    folder = tmp_path / f"made-with-{init}"
    _peft(base, init).save_pretrained(folder)  # as PEFT saves it: init_lora_weights kept in the config
    assert json.loads((folder / "adapter_config.json").read_text())["init_lora_weights"] == init
    capsys.readouterr()
    _refused(capsys, tmp_path, [plain, folder], f"{folder.name}/adapter_config.json: init_lora_weights {init!r} "
                                                f"rewrites the base weights")
    code, _, err = run_cli(capsys, "merge", "--adapters", plain, folder, "--out", tmp_path / "x.safetensors")
    assert "path_initial_model_for_weight_conversion" in err  # says how to convert it


@pytest.mark.parametrize("init, message", [
    ("corda", "init_lora_weights 'corda' rewrites the base weights"),
    ("lora_ga", "init_lora_weights 'lora_ga' rewrites the base weights"),
    ("loftq", "init_lora_weights 'loftq' trains against a quantised W0"),
    ("something-new", "init_lora_weights 'something-new': an initialisation pslora does not know"),
])
def test_other_rewriting_or_unknown_initialisations_are_refused(plain, init, message, tmp_path, capsys):
    folder = _with_init(plain, tmp_path / f"adapter-{init}", init)
    _refused(capsys, tmp_path, [plain, folder], message)


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal", "mica"])
def test_initialisations_that_leave_the_base_weights_alone_merge(plain, init, tmp_path, capsys):
    folder = _with_init(plain, tmp_path / "other", init)
    code, _, err = run_cli(capsys, "merge", "--adapters", plain, folder, "--out", tmp_path / "m.safetensors")
    assert code == 0, err


def test_an_untrained_pissa_adapter_would_have_been_merged_as_a_large_update(base, plain, tmp_path, capsys):
    """What the refusal prevents: PiSSA's untrained factors hold the top singular directions of W0 (its residual
    W0 - s·B0·A0 is what PEFT trains on), so s·B0·A0 read as an update is a large part of W0, not 0."""
    from transformers import AutoModel

    from pslora_cli.models.adapters import AdapterFile

    folder = tmp_path / "pissa"
    _peft(base, "pissa").save_pretrained(folder)
    w0 = dict(AutoModel.from_pretrained(base).named_parameters())[MODULE]
    as_update = AdapterFile(folder).delta(MODULE)
    assert torch.linalg.norm(as_update) > 0.3 * torch.linalg.norm(w0)  # the adapter itself changed nothing yet


def test_peft_s_conversion_of_a_trained_pissa_adapter_merges_to_the_trained_model(base, plain, tmp_path, capsys):
    """PEFT converts a PiSSA adapter to plain LoRA of rank 2r given the adapter saved before training; that one
    passes, and W0 + its update is the trained PiSSA model's weight."""
    from transformers import AutoModel

    torch.manual_seed(2)
    model = _peft(base, "pissa")
    initial = tmp_path / "pissa-initial"
    model.peft_config["default"].init_lora_weights = True  # as PEFT's PiSSA guide saves the initial adapter
    model.save_pretrained(initial)
    model.peft_config["default"].init_lora_weights = "pissa"
    with torch.no_grad():  # "training": the factors move
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    layer = model.base_model.model.encoder.layer[0].attention.self.query
    trained_weight = (layer.get_base_layer().weight + layer.get_delta_weight("default")).detach()
    converted = tmp_path / "pissa-converted"
    model.save_pretrained(converted, path_initial_model_for_weight_conversion=str(initial))
    config = json.loads((converted / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True and config["r"] == 4

    zero = tmp_path / "zero"  # a plain adapter whose update is 0, so that the sum is the converted update alone
    _peft(base, True).save_pretrained(zero)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "merge", "--adapters", converted, zero, "--method", "sum", "--out",
                           tmp_path / "sum.safetensors")
    assert code == 0, err
    w0 = dict(AutoModel.from_pretrained(base).named_parameters())[MODULE]
    merged = load_file(str(tmp_path / "sum.safetensors"))[MODULE]
    assert torch.allclose(w0 + merged, trained_weight, atol=1e-5)


@pytest.mark.parametrize("option, value, message", [
    ("--density", "7", "--density 7.0: the fraction of each update TIES keeps; give a number in (0, 1]"),
    ("--density", "0", "--density 0.0"),
    ("--density", "nan", "--density nan"),
    ("--scale", "inf", "--scale inf: the merged update's scale; give a finite number"),
])
def test_merge_options_out_of_range_are_bad_input(plain, option, value, message, tmp_path, capsys):
    other = _with_init(plain, tmp_path / "other", True)
    out = tmp_path / "merged.safetensors"
    code, _, err = run_cli(capsys, "merge", "--adapters", plain, other, "--method", "ties", option, value, "--out", out)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
