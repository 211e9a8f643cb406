"""The Triton kernel of the direction term (strategy "triton") equals the dense reference in value and gradients,
float64, run on the CPU by Triton's interpreter (on a CUDA machine, on the GPU)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernel is defined: before stability_triton is imported

from pslora_cli.core.lora import lora_delta
from pslora_cli.core.stability import parameter_stability_loss  # noqa: E402
from pslora_cli.core.stability_lean import HistoryFactors, lean_stability_loss, prepare_history  # noqa: E402

F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(seed, d_out, d_in, r, tasks, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, d_in, generator=g, dtype=dtype).to(DEVICE).requires_grad_(True)
    b = torch.randn(d_out, r, generator=g, dtype=dtype).to(DEVICE).requires_grad_(True)
    prev = [(torch.randn(r, d_in, generator=g, dtype=dtype).to(DEVICE),
             torch.randn(d_out, r, generator=g, dtype=dtype).to(DEVICE), 0.7) for _ in range(tasks)]
    h = sum(lora_delta(pa, pb, s) for pa, pb, s in prev)
    return a, b, h, prev


def _grads(loss, a, b):
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


# shapes that are not multiples of the 64 x 64 tiles, several row groups, ranks below and above 16
@pytest.mark.parametrize("d_out,d_in,r,tasks", [(9, 13, 3, 2), (150, 70, 8, 3), (130, 200, 17, 1)])
@pytest.mark.parametrize("history", ["dense", "factors", "tanh cache"])
@pytest.mark.parametrize("variant", ["dir+fro", "dir+factor"])
def test_triton_kernel_equals_the_reference(d_out, d_in, r, tasks, history, variant):
    a, b, h, prev = _case(d_out + d_in + r, d_out, d_in, r, tasks)
    alpha, scale = torch.tensor(1.3, dtype=F64), 0.8
    ref = _grads(parameter_stability_loss(lora_delta(a, b, scale), h, alpha=alpha, reduction="mean", variant=variant,
                                          lora_A=a, lora_B=b), a, b)
    if history == "dense":
        hist = h
    elif history == "factors":
        hist = prepare_history(factors=prev, alpha=alpha, variant=variant, store="factors")
    else:
        hist = prepare_history(h, alpha=alpha, variant=variant, store="dense")
    got = _grads(lean_stability_loss(a, b, scale, hist, alpha=alpha, variant=variant, strategy="triton"), a, b)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-13)


def test_triton_kernel_sum_reduction_no_grad_and_float32():
    a, b, h, prev = _case(5, 70, 90, 8, 2)
    alpha = 2.0
    ref = parameter_stability_loss(lora_delta(a, b, 0.5), h, alpha=alpha, reduction="sum", variant="dir+fro")
    hist = HistoryFactors(*[torch.cat(x, dim=d) for x, d in
                            (([pb * s for _, pb, s in prev], 1), ([pa for pa, _, _ in prev], 0))])
    with torch.no_grad():
        got = lean_stability_loss(a, b, 0.5, hist, alpha=alpha, reduction="sum", variant="dir+fro",
                                  strategy="triton")
    assert got.item() == pytest.approx(ref.item(), rel=1e-11)
    a32, b32 = a.detach().float().requires_grad_(True), b.detach().float().requires_grad_(True)
    ref32 = _grads(parameter_stability_loss(lora_delta(a32, b32, 0.5), h.float(), alpha=alpha, variant="dir+fro"),
                   a32, b32)
    got32 = _grads(lean_stability_loss(a32, b32, 0.5, h.float(), alpha=alpha, variant="dir+fro", strategy="triton"),
                   a32, b32)
    for x, y in zip(got32, ref32):
        torch.testing.assert_close(x, y, rtol=2e-5, atol=1e-6)


def test_triton_strategy_refuses_the_other_variants():
    a, b, h, _ = _case(1, 9, 13, 3, 1)
    for variant in ("weighted-dir+fro", "deviation", "hinge+ratio", "direction-only", "magnitude-only"):
        with pytest.raises(ValueError, match="strategy 'triton' covers the variants dir\\+fro and dir\\+factor"):
            lean_stability_loss(a, b, 1.0, h, alpha=1.0, variant=variant, strategy="triton")
