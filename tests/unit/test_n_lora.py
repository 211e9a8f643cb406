"""N-LoRA's l1 term (training/regularisers.py, methods/n_lora.py) against hand computations in float64: its value
and its gradient for both forms, its placement (every task, the first included) and weight, and the refusal of the
official form on a module whose input and output widths differ."""

from __future__ import annotations

import pytest
import torch

from pslora_cli.config import Method
from pslora_cli.errors import InputError
from pslora_cli.methods.n_lora import sparsity_term
from pslora_cli.training.regularisers import Regulariser


class _Layer:
    def __init__(self, a, b, scaling):
        self.lora_A = {"default": type("W", (), {"weight": a})()}
        self.lora_B = {"default": type("W", (), {"weight": b})()}
        self.scaling = {"default": scaling}


def test_the_official_term_is_the_l1_norm_of_a_times_b_with_its_hand_gradient():
    a = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64, requires_grad=True)  # (r=2, d_in=3)
    b = torch.tensor([[0.5, -1.0], [2.0, 1.0], [-1.0, 0.25]], dtype=torch.float64, requires_grad=True)  # (d_out=3, r)
    # A B by hand: row 1 = [1*0.5 - 2*2 + 0.5*-1, 1*-1 - 2*1 + 0.5*0.25] = [-4.0, -2.875]
    #              row 2 = [0*0.5 + 3*2 - 1*-1, 0*-1 + 3*1 - 1*0.25] = [7.0, 2.75]
    term = sparsity_term(a, b, 4.0, "official")
    assert term.item() == pytest.approx(4.0 + 2.875 + 7.0 + 2.75)  # the LoRA scaling is not in the official term
    term.backward()
    sign = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)  # sign(A B)
    assert torch.allclose(a.grad, sign @ b.detach().T) and torch.allclose(b.grad, a.detach().T @ sign)


def test_the_update_term_is_the_l1_norm_of_the_scaled_update_with_its_hand_gradient():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)  # d_out 4 != d_in 5: fine here
    term = sparsity_term(a, b, 2.0, "update")
    delta = 2.0 * b.detach() @ a.detach()
    assert term.item() == pytest.approx(delta.abs().sum().item())
    term.backward()
    assert torch.allclose(a.grad, 2.0 * b.detach().T @ delta.sign()) and torch.allclose(b.grad, 2.0 * delta.sign() @ a.detach().T)
    assert torch.autograd.gradcheck(lambda x, y: sparsity_term(x, y, 2.0, "update"), (a.detach().requires_grad_(),
                                                                                    b.detach().requires_grad_()))


def test_the_regulariser_adds_the_weighted_sum_over_modules_from_the_first_task_on():
    g = torch.Generator().manual_seed(1)
    layers = {f"m{i}": _Layer(torch.randn(2, 6, generator=g), torch.randn(6, 2, generator=g), 2.0) for i in range(3)}
    method = Method(name="n-lora", stability_weight=0.0, orthogonality_weight=0.0, sparsity_weight=0.4,
                    merge="sum", previous="sum")
    reg = Regulariser(method, layers, [], {}, torch.device("cpu"))  # no earlier task: still on
    values = reg.terms(layers)
    ps, orth, sparse = values["stability"], values["orthogonality"], values["sparsity"]
    expected = sum((l.lora_A["default"].weight @ l.lora_B["default"].weight).abs().sum() for l in layers.values())
    assert ps.item() == 0 and orth.item() == 0 and sparse.item() == pytest.approx(expected.item(), rel=1e-6)
    assert reg.weighted(values).item() == pytest.approx(0.4 * expected.item(), rel=1e-6)


def test_the_official_form_is_refused_on_a_module_of_two_widths():
    layers = {"v_proj": _Layer(torch.zeros(2, 576), torch.zeros(192, 2), 1.0)}  # SmolLM2's v_proj: 576 -> 192
    with pytest.raises(InputError, match=r"method.sparsity_form: .*v_proj maps 576 to 192.*sparsity_form: update"):
        Regulariser(Method(sparsity_weight=0.4), layers, [], {}, torch.device("cpu"))
    Regulariser(Method(sparsity_weight=0.4, sparsity_form="update"), layers, [], {}, torch.device("cpu"))


def test_n_lora_validates_with_o_lora_s_protocol_and_its_weight():
    from pathlib import Path

    from pslora_cli.config import sequence_from_text

    text = "name: s\ntasks:\n  - id: a\n    data: {type: wordnet, classes: [animal, food]}\n"
    m = sequence_from_text(text, "s.yaml", Path("."), ["method.name=n-lora"]).method
    assert (m.sparsity_weight, m.orthogonality_weight, m.stability_weight, m.merge, m.previous) == \
        (0.4, 0.0, 0.0, "sum", "sum")
    assert sequence_from_text(text, "s.yaml", Path("."), ["method.name=ps-lora"]).method.sparsity_weight == 0.0
    assert sequence_from_text(text, "s.yaml", Path("."), ["method.name=o-lora"]).method.sparsity_weight == 0.0


def test_the_update_form_has_its_own_default_weight():
    from pathlib import Path

    from pslora_cli.config import sequence_from_text

    text = "name: s\ntasks:\n  - id: a\n    data: {type: wordnet, classes: [animal, food]}\n"
    m = sequence_from_text(text, "s.yaml", Path("."), ["method.name=n-lora", "method.sparsity_form=update"]).method
    assert m.sparsity_weight == 1.6e-4  # 0.4 x the two forms' measured ratio, 3.9e-4
    m = sequence_from_text(text, "s.yaml", Path("."), ["method.name=n-lora", "method.sparsity_form=update",
                                                       "method.sparsity_weight=0.01"]).method
    assert m.sparsity_weight == 0.01
