"""The built-in LM converted from its GGUF on first use: one folder per GGUF content, published atomically."""

import pytest


def test_a_second_first_use_conversion_keeps_the_first_folder(tmp_path):
    """Two runs started together both convert the built-in LM; the second's rename meets the first's folder."""
    from pslora_cli.models.lm import publish_folder

    folder = tmp_path / "model"
    for name in ("a", "b"):
        tmp = tmp_path / f".tmp-{name}"
        tmp.mkdir()
        (tmp / "config.json").write_text(name)
        publish_folder(tmp, folder)
    assert (folder / "config.json").read_text() == "a"
    broken = tmp_path / "broken"
    (broken / "x").mkdir(parents=True)  # a non-empty folder without config.json is not a finished conversion
    tmp = tmp_path / ".tmp-c"
    tmp.mkdir()
    (tmp / "config.json").write_text("c")
    with pytest.raises(OSError):
        publish_folder(tmp, broken)


def test_the_converted_builtin_lm_is_keyed_by_content_not_by_install_time(tmp_path, monkeypatch):
    """A reinstall (a fresh venv, a CI clone) gives the same GGUF a new mtime: it must reuse the converted folder,
    not write another 0.5 GB copy of it; a GGUF with other bytes gets its own folder."""
    import os

    from pslora_cli.models import lm

    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    gguf = package / "m.gguf"
    gguf.write_bytes(bytes(range(256)) * 9000)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(lm.BUILTIN_LM, "fake-lm", ("fake_gguf_pkg", "m.gguf", "pip install fake"))
    monkeypatch.setenv("PSLORA_CACHE", str(tmp_path / "cache"))
    converted = []

    def convert(gguf_dir, gguf_name, folder, install):
        converted.append(folder)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(lm, "_convert_gguf", convert)
    first = lm.builtin_lm_folder("fake-lm")
    os.utime(gguf, ns=(10**18, 10**18))  # the same bytes, installed later
    assert lm.builtin_lm_folder("fake-lm") == first and len(converted) == 1
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 1  # one changed weight byte, same size
    gguf.write_bytes(bytes(data))
    assert lm.builtin_lm_folder("fake-lm") != first and len(converted) == 2
