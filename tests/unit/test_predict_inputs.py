"""predict's input readers: texts line by line, images checked up front and decoded batch by batch."""

import numpy as np
import pytest
from PIL import Image

from pslora_cli.errors import InputError
from pslora_cli.commands.predict import load_images, read_images, read_texts


def test_read_images_checks_every_file_but_decodes_none(tmp_path, monkeypatch):
    for k in range(3):
        Image.fromarray(np.full((5, 4, 3), 40 * k, dtype=np.uint8)).save(tmp_path / f"{k}.png")
    (tmp_path / "notes.txt").write_text("not an image suffix: ignored")
    import pslora_cli.data.image_sources as sources

    decoded = []
    real = sources.pil_to_array
    monkeypatch.setattr(sources, "pil_to_array", lambda img: decoded.append(1) or real(img))
    paths = read_images(str(tmp_path))
    assert [p.name for p in paths] == ["0.png", "1.png", "2.png"] and decoded == []
    images = load_images(paths[1:])
    assert len(decoded) == 2 and [int(a[0, 0, 0]) for a in images] == [40, 80] and images[0].shape[:2] == (5, 4)


def test_read_images_names_the_bad_file(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(good[:len(good) // 2])  # truncated
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"b\.png: not a readable image"):
        read_images(str(tmp_path))
    with pytest.raises(InputError, match="not found"):
        read_images(str(tmp_path / "missing"))


def test_read_texts_lines_and_json(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text('plain line\n\n{"text": "from json"}\r\n')
    assert read_texts(str(f)) == ["plain line", "from json"]
    f.write_text('{"txt": 1}\n')
    with pytest.raises(InputError, match="line 1"):
        read_texts(str(f))
