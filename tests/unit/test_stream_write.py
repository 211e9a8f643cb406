import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pslora_cli.store.stream_write import write_streaming


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "encoder.layer.0.q.weight": torch.randn(16, 7, generator=g),
        "conv.weight": torch.randn(4, 3, 1, 1, generator=g),
        "heads.t1.bias": torch.randn(3, generator=g).double(),
        "half": torch.randn(5, generator=g).half(),
        "bf": torch.randn(2, 3, generator=g).bfloat16(),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(5, dtype=torch.int64),
        "strided": torch.randn(6, 4, generator=g).t(),  # not contiguous
    }


def test_streamed_file_reads_back_with_safetensors(tmp_path):
    tensors = _tensors()
    specs = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    path = tmp_path / "m.safetensors"
    write_streaming(path, specs, iter(tensors.items()), {"method": "magnitude", "tasks": '["t1"]'})
    back = load_file(str(path))
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"method": "magnitude", "tasks": '["t1"]'}
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(8), "little") % 8 == 0  # header padded to a multiple of 8


def test_out_of_order_wrong_or_missing_tensors_are_refused(tmp_path):
    a, b = torch.zeros(2, 2), torch.ones(3)
    specs = [("a", torch.float32, (2, 2)), ("b", torch.float32, (3,))]
    with pytest.raises(ValueError, match="tensor 'b' arrived, expected a"):
        write_streaming(tmp_path / "x", specs, [("b", b), ("a", a)])
    with pytest.raises(ValueError, match=r"tensor 'b' is torch.float64 \(3,\), declared torch.float32 \(3,\)"):
        write_streaming(tmp_path / "x", specs, [("a", a), ("b", b.double())])
    with pytest.raises(ValueError, match="declared but not written: b"):
        write_streaming(tmp_path / "x", specs, [("a", a)])
    with pytest.raises(ValueError, match="expected no more tensors"):
        write_streaming(tmp_path / "x", specs, [("a", a), ("b", b), ("c", b)])
    with pytest.raises(ValueError, match="duplicate tensor name 'a'"):
        write_streaming(tmp_path / "x", specs + [("a", torch.float32, (1,))], [])
