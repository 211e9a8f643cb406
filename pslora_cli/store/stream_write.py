"""Write a safetensors file whose tensors are finished one at a time (a merge yields one module after another).

The header (names, dtypes, shapes, byte offsets) depends only on the shapes and dtypes, so it is written first
from the declared specs; each tensor's bytes follow as soon as it exists and it can then be freed. The file is
byte-compatible with the format's specification: 8-byte little-endian header length, the JSON header padded
with spaces to a multiple of 8, then the tensors' bytes back to back in header order.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


def write_streaming(path: Path | str, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                    tensors: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (an iterable of (name, tensor), in the order of `specs`) to `path`.

    specs: (name, dtype, shape) of every tensor, in the order they will arrive. A tensor that arrives out of
    order, with another dtype or shape, or missing, raises ValueError (the file is then incomplete: write to a
    temporary path).
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; this machine is not")
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in specs:
        if name in header or name == "__metadata__":
            raise ValueError(f"duplicate tensor name {name!r}")
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    expected = iter(specs)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, tensor in tensors:
            spec = next(expected, None)
            if spec is None or spec[0] != name:
                raise ValueError(f"tensor {name!r} arrived, expected {spec[0] if spec else 'no more tensors'}")
            if tensor.dtype != spec[1] or tuple(tensor.shape) != tuple(spec[2]):
                raise ValueError(f"tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, declared "
                                 f"{spec[1]} {tuple(spec[2])}")
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            if data.numel():
                f.write(memoryview(data.view(torch.uint8).numpy()))
            del tensor, data  # before the iterable computes the next one: one finished tensor alive at a time
        missing = [spec[0] for spec in expected]
        if missing:
            raise ValueError(f"tensors declared but not written: {', '.join(missing[:3])}")
