"""`pslora merge --adapters` and `pslora analyze-shifts --adapters` on adapters made with stock PEFT
(`get_peft_model` + `save_pretrained`, three ranks): on the unit tests' tiny BERT and on the built-in MiniLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import adapter_delta, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
RANKS = (2, 4, 8)


def make_adapters(base: Path, folder: Path, targets=("query", "value")) -> list[Path]:
    """Three LoRA adapters saved by stock PEFT, random A and B (init_lora_weights=False), ranks 2, 4, 8 and
    alphas that differ."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    out = []
    for i, r in enumerate(RANKS):
        torch.manual_seed(i)
        model = get_peft_model(AutoModel.from_pretrained(base),
                               LoraConfig(r=r, lora_alpha=2 * r + i, target_modules=list(targets),
                                          init_lora_weights=False))
        model.save_pretrained(folder / f"adapter{i}")
        out.append(folder / f"adapter{i}")
    return out


def own_deltas(folders: list[Path], module: str) -> list[torch.Tensor]:
    """ΔW = (alpha / r) · B @ A from each adapter's own files."""
    return [adapter_delta(f, module) for f in folders]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import build_word_bert

    root = tmp_path_factory.mktemp("byo")
    base = build_word_bert(root / "base")
    return base, make_adapters(base, root)


MODULES = ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"]


def test_merge_adapters_equals_the_merge_recomputed_from_their_tensors(tiny, tmp_path, capsys):
    from peft import PeftModel
    from peft.utils.merge_utils import task_arithmetic, ties
    from transformers import AutoModel

    base, folders = tiny
    results = {}
    for method, extra in (("magnitude", []), ("ties", ["--density", "0.25"]), ("task-arithmetic", ["--scale", "0.7"]),
                          ("magmax", [])):
        out = tmp_path / f"{method}.safetensors"
        code, info, err = run_cli(capsys, "merge", "--adapters", *folders, "--method", method, *extra, "--out", out,
                                  "--json", "--device", "cpu")
        assert code == 0, err
        assert info["modules"] == 4 and [a["rank"] for a in info["adapters"]] == list(RANKS)
        results[method] = load_file(str(out))
    for module in MODULES:
        deltas = own_deltas(folders, module)
        best = deltas[0]
        for d in deltas[1:]:
            best = torch.where(d.abs() > best.abs(), d, best)  # PS-LoRA's merge: ties to the earlier adapter
        assert torch.equal(results["magnitude"][module + ".weight"], best), module
        assert torch.allclose(results["ties"][module + ".weight"], ties(deltas, torch.ones(3), 0.25), atol=1e-6)
        assert torch.allclose(results["task-arithmetic"][module + ".weight"],
                              task_arithmetic(deltas, torch.full((3,), 0.7)), atol=1e-6)
        top = deltas[0]
        for d in deltas[1:]:
            top = torch.where(d.abs() >= top.abs(), d, top)
        assert torch.allclose(results["magmax"][module + ".weight"], 0.5 * top, atol=0)
    # the updates are the ones PEFT itself applies
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(base), folders[2])
    layer = peft_model.base_model.model.encoder.layer[0].attention.self.query
    assert torch.allclose(layer.get_delta_weight("default"), own_deltas(folders, MODULES[0])[2], atol=1e-6)


def test_merge_adapters_into_a_model_folder_that_automodel_opens(tiny, tmp_path, capsys):
    from transformers import AutoModel

    base, folders = tiny
    out = tmp_path / "model"
    code, info, err = run_cli(capsys, "merge", "--adapters", *folders, "--out", out, "--json", "--device", "cpu")
    assert code == 0 and info["kind"] == "model folder", err
    merged = dict(AutoModel.from_pretrained(out).named_parameters())
    w0 = dict(AutoModel.from_pretrained(base).named_parameters())
    for module in MODULES:
        deltas = own_deltas(folders, module)
        best = deltas[0]
        for d in deltas[1:]:
            best = torch.where(d.abs() > best.abs(), d, best)
        assert torch.allclose(merged[module + ".weight"], w0[module + ".weight"] + best, atol=1e-6)
    untouched = "encoder.layer.0.attention.self.key.weight"
    assert torch.equal(merged[untouched], w0[untouched])
    card = (out / "README.md").read_text()
    assert all(a["sha256"] in card for a in info["adapters"]) and "magnitude" in card
    assert (out / "tokenizer.json").is_file()
    code, _, err = run_cli(capsys, "merge", "--adapters", *folders, "--out", out)
    assert code == 2 and "not empty" in err


def test_merge_adapters_on_the_builtin_minilm(tmp_path, capsys):
    from transformers import AutoModel

    from pslora_cli.config import Backbone
    from pslora_cli.models import resolve_model_path

    base = Path(resolve_model_path(Backbone(source="builtin", name="all-minilm-l6-v2")))
    folders = make_adapters(base, tmp_path)
    out = tmp_path / "merged"
    code, info, err = run_cli(capsys, "merge", "--adapters", *folders, "--method", "ties", "--out", out, "--json",
                              "--device", "cpu")
    assert code == 0 and info["modules"] == 12, err
    merged = dict(AutoModel.from_pretrained(out).named_parameters())
    w0 = dict(AutoModel.from_pretrained(base).named_parameters())
    from peft.utils.merge_utils import ties

    module = "encoder.layer.5.attention.self.value"
    # 384 x 384 entries: density 0.2 keeps 29491.2 of them, which PEFT truncates and the trim rounds; compare where
    # both keep the same entries (all but the boundary one), i.e. up to the smallest kept magnitude
    expected = ties(own_deltas(folders, module), torch.ones(3), 0.2)
    diff = (merged[module + ".weight"] - w0[module + ".weight"] - expected).abs()
    assert (diff > 1e-5).sum() <= 3
    dense = tmp_path / "magnitude.safetensors"
    code, _, err = run_cli(capsys, "merge", "--adapters", *folders, "--out", dense)
    assert code == 0, err
    deltas = own_deltas(folders, module)
    best = deltas[0]
    for d in deltas[1:]:
        best = torch.where(d.abs() > best.abs(), d, best)
    assert torch.equal(load_file(str(dense))[module + ".weight"], best)


def test_analyze_shifts_on_adapters_writes_its_tables_and_figures(tiny, tmp_path, capsys):
    _, folders = tiny
    out = tmp_path / "shifts"
    code, doc, err = run_cli(capsys, "analyze-shifts", "--adapters", *folders, "--out", out, "--json")
    assert code == 0, err
    assert [st["task"] for st in doc["stages"]] == ["adapter1", "adapter2"]
    sign = doc["stages"][0]["pooled"]
    assert sign and (out / "shifts.json").is_file() and (out / "shifts.csv").is_file()
    assert (out / "sign-agreement.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "shift-histograms.png").is_file()
    code, _, err = run_cli(capsys, "analyze-shifts", "--adapters", *folders, "--intervene", "--out", tmp_path / "x")
    assert code == 2 and "--intervene" in err and not (tmp_path / "x").exists()


class NotATensor:
    pass


def _bad_cases(tiny, root: Path) -> dict:
    from peft import IA3Config, get_peft_model
    from transformers import AutoModel

    from conftest import build_word_bert

    base, folders = tiny
    cases = {}
    other = root / "other-base"
    shutil.copytree(folders[1], other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "someone/else"}))
    cases["different base models"] = (other, "adapts base model 'someone/else'")
    missing = root / "missing"
    shutil.copytree(folders[1], missing)
    (missing / "adapter_model.safetensors").unlink()
    cases["missing weights"] = (missing, "adapter_model.safetensors: missing (nor is there adapter_model.bin)")
    pickled = root / "pickled"
    shutil.copytree(folders[1], pickled)
    (pickled / "adapter_model.safetensors").unlink()
    torch.save({"x": NotATensor()}, pickled / "adapter_model.bin")
    cases["pickled weights"] = (pickled, "adapter_model.bin: refused")
    ia3 = root / "ia3"
    get_peft_model(AutoModel.from_pretrained(base), IA3Config(target_modules=["query", "value"],
                                                              feedforward_modules=[])).save_pretrained(ia3)
    cases["not LoRA"] = (ia3, "peft_type 'IA3' is not LORA")
    wider = build_word_bert(root / "wider-base", hidden=32)
    shapes = make_adapters(wider, root / "wider")[0]
    cfg = json.loads((shapes / "adapter_config.json").read_text())
    (shapes / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(base)}))
    cases["mismatched shapes"] = (shapes, "has weight shape")
    from peft import LoraConfig

    dora = root / "dora"
    get_peft_model(AutoModel.from_pretrained(base), LoraConfig(r=2, target_modules=["query", "value"], use_dora=True,
                                                               init_lora_weights=False)).save_pretrained(dora)
    cases["DoRA"] = (dora, "'use_dora' is set")
    from transformers import AutoModelForSequenceClassification

    cls = root / "with-head"
    get_peft_model(AutoModelForSequenceClassification.from_pretrained(base, num_labels=2),
                   LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS",
                              init_lora_weights=False)).save_pretrained(cls)
    cases["a head beside the factors"] = (cls, "beside the LoRA factors")
    return cases


def test_bad_adapters_exit_2_naming_the_folder_with_nothing_written(tiny, tmp_path, capsys):
    _, folders = tiny
    cases = _bad_cases(tiny, tmp_path / "bad")
    capsys.readouterr()  # the progress bars of making them
    assert set(cases) == {"different base models", "missing weights", "pickled weights", "not LoRA", "mismatched shapes",
                          "DoRA", "a head beside the factors"}
    for name, (bad, message) in cases.items():
        for out in (tmp_path / "out.safetensors", tmp_path / "out-model"):
            code, _, err = run_cli(capsys, "merge", "--adapters", folders[0], bad, "--out", out)
            assert code == 2 and message in err and err.count("\n") == 1, (name, err)
            assert str(bad.name) in err, (name, err)
            assert not out.exists(), name
        code, _, err = run_cli(capsys, "analyze-shifts", "--adapters", folders[0], bad, "--out", tmp_path / "s")
        assert code == 2 and message in err, (name, err)
        assert not (tmp_path / "s").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    code, _, err = run_cli(capsys, "merge", "--adapters", folders[0], "--out", tmp_path / "one.safetensors")
    assert code == 2 and "at least two" in err
    # a hub id where the hub is not reachable (the tests run offline): one line, nothing written
    code, _, err = run_cli(capsys, "merge", "--adapters", folders[0], "nobody/no-such-adapter", "--out",
                           tmp_path / "hub.safetensors")
    assert code == 2 and "nobody/no-such-adapter: not a local folder, and not fetched from the hub" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "hub.safetensors").exists()


def test_an_adapter_saved_as_bin_merges_as_its_safetensors_twin(tiny, tmp_path, capsys):
    """The older adapter_model.bin, read with weights_only=True, gives the same merge."""
    _, folders = tiny
    twin = tmp_path / "as-bin"
    shutil.copytree(folders[2], twin)
    (twin / "adapter_model.safetensors").unlink()
    torch.save(load_file(str(folders[2] / "adapter_model.safetensors")), twin / "adapter_model.bin")
    outs = []
    for third in (folders[2], twin):
        outs.append(tmp_path / f"{third.name}.safetensors")
        code, _, err = run_cli(capsys, "merge", "--adapters", folders[0], folders[1], third, "--out", outs[-1])
        assert code == 0, err
    a, b = load_file(str(outs[0])), load_file(str(outs[1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
