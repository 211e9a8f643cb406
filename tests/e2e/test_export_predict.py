"""`pslora export` and `pslora predict` on encoder and timm stores: the exported folder opens in the stock library
(transformers, timm) and reproduces `pslora eval`'s accuracy on the last stage; predict reads files and stdin; bad
inputs end in exit 2 with nothing written. (The language-model export is tested in test_generative_cli.py.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_VIT, run_cli, tiny_sequence, tree_state

CPU = torch.device("cpu")


def _test_sets(store: Path, n_tasks: int):
    """Each task's test texts/images and labels, as pslora's evaluation reads them."""
    from pslora_cli.data.loader import data_loader
    from pslora_cli.session import Session

    seq, _, _ = Session(store_path=store, device_name="cpu", quiet=True).open()
    load = data_loader(seq)
    return [(list(load(i).test_x), list(load(i).test_y)) for i in range(n_tasks)]


@pytest.fixture(scope="module")
def text_store(tiny_bert, tmp_path_factory):
    import yaml

    from pslora_cli.cli import main

    folder = tmp_path_factory.mktemp("export-text")
    seq = tiny_sequence(tiny_bert)
    seq["tasks"] = seq["tasks"][:2]
    (folder / "seq.yaml").write_text(yaml.safe_dump(seq, sort_keys=False))
    store = folder / "store"
    assert main(["run", str(folder / "seq.yaml"), "--store", str(store), "--device", "cpu", "--quiet"]) == 0
    return store


def test_encoder_export_opens_in_transformers_and_reproduces_eval(text_store, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "model"
    code, info, err = run_cli(capsys, "export", "--store", text_store, "--out", out, "--device", "cpu", "--json")
    assert code == 0, err
    assert info["kind"] == "encoder" and info["tasks"] == ["t1", "t2"] and info["merge"] == "magnitude"
    assert {"README.md", "config.json", "model.safetensors", "classifier.safetensors", "labels.json",
            "tokenizer.json"} <= set(info["files"])
    card = (out / "README.md").read_text()
    assert "| t2 |" in card and "AutoModel.from_pretrained" in card and "pslora export" not in card  # in-process

    labels = json.loads((out / "labels.json").read_text())
    assert labels["labels"] == ["animal", "food", "person", "plant"] and labels["tasks"]["t2"]["outputs"] == [2, 4]
    encoder, tokenizer = AutoModel.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    head = load_file(str(out / "classifier.safetensors"))
    matrix = json.loads((text_store / "eval" / "matrix.json").read_text())
    for i, (texts, ys) in enumerate(_test_sets(text_store, 2)):
        with torch.inference_mode():
            batch = tokenizer(texts, padding=True, truncation=True, max_length=labels["max_length"],
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            logits = ((hidden * mask).sum(1) / mask.sum(1)) @ head["weight"].T + head["bias"]
        offset = 2 * i  # task i's classes sit after the earlier tasks'
        stock = (logits.argmax(-1) == torch.tensor(ys) + offset).float().mean().item()
        assert stock == pytest.approx(matrix["task_agnostic"][2][i], abs=1e-9)


def test_export_task_model_and_merge_choice(text_store, tmp_path, capsys):
    from safetensors.torch import load_file

    code, info, err = run_cli(capsys, "export", "--store", text_store, "--out", tmp_path / "t1", "--task", "t1",
                              "--device", "cpu", "--json", "--quiet")
    assert code == 0, err
    assert info["tasks"] == ["t1"] and info["merge"] is None
    assert load_file(str(tmp_path / "t1" / "classifier.safetensors"))["weight"].shape[0] == 2
    assert "No accuracy matrix recorded for exactly this model" in (tmp_path / "t1" / "README.md").read_text()
    code, info, err = run_cli(capsys, "export", "--store", text_store, "--out", tmp_path / "sum", "--merge", "sum",
                              "--device", "cpu", "--json", "--quiet")
    assert code == 0 and info["merge"] == "sum", err
    a = load_file(str(tmp_path / "sum" / "model.safetensors"))
    b = load_file(str(tmp_path / "t1" / "model.safetensors"))
    key = next(k for k in a if "query.weight" in k)
    assert not torch.equal(a[key], b[key])


def test_export_refuses_a_full_folder_and_bad_options(text_store, tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree_state(tmp_path)
    for args, message in [
        ((), "folder is not empty (use --force to replace it)"),
        (("--task", "t9"), "unknown task 't9'"),
        (("--merge", "nope"), "--merge 'nope': expected one of"),
        (("--task", "t1", "--merge", "sum"), "one task's own model has no merge"),
        (("--force",), "is or holds the store"),
        (("--force", "inside"), "is inside the store"),
    ]:
        target = {(): out, ("--force",): text_store, ("--force", "inside"): text_store / "tasks" / "model"}.get(
            args, tmp_path / "new")
        args = tuple(a for a in args if a != "inside")
        store_before = tree_state(text_store)
        code, _, err = run_cli(capsys, "export", "--store", text_store, "--out", target, "--device", "cpu", *args)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert tree_state(tmp_path) == before  # nothing written, no temporary folder left
        assert tree_state(text_store) == store_before
    code, _, err = run_cli(capsys, "export", "--store", text_store, "--out", out, "--device", "cpu", "--force",
                           "--quiet")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "labels.json").is_file(), err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_predict_text_from_file_and_stdin(text_store, tmp_path, capsys, monkeypatch):
    (texts, ys), _ = _test_sets(text_store, 2)
    lines = tmp_path / "in.jsonl"
    lines.write_text("\n".join(json.dumps({"text": t, "id": k}) for k, t in enumerate(texts[:6])) + "\n\n")
    code, doc, err = run_cli(capsys, "predict", "--store", text_store, "--input", lines, "--device", "cpu", "--json")
    assert code == 0, err
    preds = doc["predictions"]
    assert len(preds) == 6 and [p["input"] for p in preds] == texts[:6]
    assert all(p["label"] in ("animal", "food", "person", "plant") and 0 < p["score"] <= 1 for p in preds)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts[:6])))
    code, again, _ = run_cli(capsys, "predict", "--store", text_store, "--input", "-", "--device", "cpu", "--json")
    assert code == 0 and [p["label"] for p in again["predictions"]] == [p["label"] for p in preds]
    code, aware, _ = run_cli(capsys, "predict", "--store", text_store, "--input", lines, "--task", "t1",
                             "--device", "cpu", "--json")
    assert code == 0 and all(p["task"] == "t1" and p["label"] in ("animal", "food") for p in aware["predictions"])


def test_predict_plain_output_and_bad_inputs(text_store, tmp_path, capsys):
    from pslora_cli.cli import main

    good = tmp_path / "in.txt"
    good.write_text("\ufeffa small furry animal\r\nbread\tbaked in an oven\r\n")  # BOM, CRLF, a tab
    assert main(["predict", "--store", str(text_store), "--input", str(good), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].split("\t")[2] == "a small furry animal" and float(out[0].split("\t")[1]) > 0
    assert out[1].split("\t")[2] == "bread\\tbaked in an oven"  # one line per input, the tab escaped
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": ""}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": \n')
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for source, message in [(tmp_path / "missing.txt", "cannot read it"), (bad, "line 2: a JSON line needs"),
                            (broken, "line 2: not valid JSON"), (empty, "holds no text")]:
        code, _, err = run_cli(capsys, "predict", "--store", text_store, "--input", source, "--device", "cpu")
        assert code == 2 and message in err and str(Path(source).name) in err and err.count("\n") == 1, err


def test_timm_export_opens_in_timm_and_reproduces_eval(tmp_path, write_sequence, capsys):
    import timm
    from PIL import Image

    from pslora_cli.config import Backbone
    from pslora_cli.models import load_backbone

    backbone = {"source": "timm", "name": "vit_tiny_patch16_224", "pretrained": False, "model_kwargs": TINY_VIT}
    fashion = {"type": "fashion_mnist", "train_per_class": 12, "test_per_class": 6}
    seq_file = write_sequence({
        "name": "tiny-vit", "scenario": "class-incremental", "seed": 0, "backbone": backbone,
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["qkv", "fc1"]},
        "training": {"steps": 4, "batch_size": 8, "learning_rate": 2e-2, "eval_batch_size": 64},
        "tasks": [{"id": "t1", "data": {**fashion, "classes": ["trouser", "bag"]}},
                  {"id": "t2", "data": {**fashion, "classes": ["sneaker", "dress"]}}]})
    store, out = tmp_path / "store", tmp_path / "model"
    assert run_cli(capsys, "run", seq_file, "--store", store, "--device", "cpu", "--quiet")[0] == 0
    code, info, err = run_cli(capsys, "export", "--store", store, "--out", out, "--device", "cpu", "--json")
    assert code == 0 and info["kind"] == "image" and set(info["files"]) == {"README.md", "config.json",
                                                                              "model.safetensors"}, err
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == ["trouser", "bag", "sneaker", "dress"]
    assert model.num_classes == 4
    pixels = load_backbone(Backbone(**{"pooling": "mean", "max_length": 64, "trust_remote_code": False,
                                       "weights": None, "image_size": None, **backbone}), CPU)
    matrix = json.loads((store / "eval" / "matrix.json").read_text())
    sets = _test_sets(store, 2)
    for i, (images, ys) in enumerate(sets):
        with torch.inference_mode():
            logits = model(pixels.collate(images, CPU)["pixel_values"])
        stock = (logits.argmax(-1) == torch.tensor(ys) + 2 * i).float().mean().item()
        assert stock == pytest.approx(matrix["task_agnostic"][2][i], abs=1e-9)

    # predict on image files and a folder, and an unreadable image
    folder = tmp_path / "images"
    folder.mkdir()
    for k, img in enumerate(sets[1][0][:3]):
        Image.fromarray(img).save(folder / f"{k}.png")
    code, doc, err = run_cli(capsys, "predict", "--store", store, "--input", folder, "--device", "cpu", "--json")
    assert code == 0 and [Path(p["input"]).name for p in doc["predictions"]] == ["0.png", "1.png", "2.png"], err
    with torch.inference_mode():
        want = model(pixels.collate(sets[1][0][:3], CPU)["pixel_values"]).argmax(-1).tolist()
    assert [p["label"] for p in doc["predictions"]] == [model.pretrained_cfg["label_names"][k] for k in want]
    (folder / "3.png").write_bytes(b"not a png")
    code, _, err = run_cli(capsys, "predict", "--store", store, "--input", folder, "--device", "cpu")
    assert code == 2 and "3.png: not a readable image" in err
