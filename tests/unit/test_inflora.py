"""InfLoRA's input subspaces (core/subspace.py) against hand computations in float64: the threshold schedule, the
first task's rule (directions while the cumulative share stays under the threshold), the later tasks' rule (grow
until the captured share reaches it), and the defining property: A_t is orthogonal to the earlier subspace, so the
new update leaves the module's output on every input in it unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from pslora_cli.core.subspace import (InputMatrix, design_down_projection, extend_basis, project_out,
                                     random_down_projection, threshold)
from pslora_cli.errors import InputError
from pslora_cli.methods.inflora import check_linear


def test_the_threshold_runs_from_the_first_value_to_the_last_over_the_tasks():
    assert threshold(0, 10, 0.95, 1.0) == pytest.approx(0.95)
    assert threshold(5, 10, 0.95, 1.0) == pytest.approx(0.975)
    assert threshold(3, 4, 0.9, 0.98) == pytest.approx(0.9 + 0.08 * 3 / 4)


def test_the_input_matrix_is_the_mean_of_x_x_transposed_over_tokens():
    x = torch.tensor([[[1.0, 2.0], [0.0, 1.0]], [[3.0, -1.0], [1.0, 1.0]]])  # 2 examples x 2 tokens x d 2
    m = InputMatrix(2)
    m.add(x[:1])
    m.add(x[1:])
    rows = x.reshape(-1, 2).double()
    assert torch.equal(m.value, rows.T @ rows / 4)


def test_the_first_task_keeps_the_directions_whose_cumulative_share_stays_under_the_threshold():
    c = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    # squared singular values 9, 4, 1, 0 of 14: cumulative shares 0.643, 0.929, 1, 1
    assert extend_basis(c, None, 0.95).shape[1] == 2
    assert extend_basis(c, None, 0.5).shape[1] == 1  # at least one direction
    basis = extend_basis(c, None, 0.95)
    assert torch.allclose(basis.abs(), torch.eye(4, dtype=torch.float64)[:, :2])


def test_a_later_task_grows_the_subspace_until_the_captured_share_reaches_the_threshold():
    basis = torch.eye(4, dtype=torch.float64)[:, :1]  # e1
    c = torch.diag(torch.tensor([2.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    # squared values 4, 0, 1, 1 (total 6); e1 already holds 4/6 = 0.667; each of e3, e4 adds 1/6
    assert extend_basis(c, basis, 0.6).shape[1] == 1      # already captured: nothing added
    grown = extend_basis(c, basis, 0.8)                    # 0.667 -> 0.833: one direction in span(e3, e4)
    assert grown.shape[1] == 2 and grown[1].abs().max() < 1e-12
    grown = extend_basis(c, basis, 0.975)                  # -> 1.0: both
    assert grown.shape[1] == 3
    assert torch.allclose(grown.T @ grown, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(project_out(torch.eye(4, dtype=torch.float64)[:, [0, 2, 3]], grown),
                          torch.zeros(4, 3, dtype=torch.float64), atol=1e-12)


def test_the_new_update_leaves_outputs_on_the_earlier_subspace_unchanged():
    """Task 1's inputs span a 3-dimensional subspace of 12 (plus a little noise the threshold leaves out);
    task 2's A is designed against it; whatever B task 2 learns, ΔW_2 maps the subspace to 0, and task 1's own
    inputs move only by their part outside it."""
    g = torch.Generator().manual_seed(0)
    d, rank = 12, 4
    mix = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    x1 = (torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 2.0],
                                                                                dtype=torch.float64)) @ mix[:, :3].T
    x1 = x1 + 0.01 * torch.randn(500, d, generator=g, dtype=torch.float64)
    c1 = x1.T @ x1 / len(x1)
    m1 = extend_basis(c1, None, 0.95)
    x2 = torch.randn(500, d, generator=g, dtype=torch.float64)
    a2 = design_down_projection(x2.T @ x2 / len(x2), m1, rank)
    assert a2.shape == (rank, d)
    assert (a2 @ m1).abs().max() < 1e-12                                          # A_t orthogonal to the bases
    assert torch.allclose(a2 @ a2.T, torch.eye(rank, dtype=torch.float64) / 3, atol=1e-12)  # Uᵀ/√3
    b2 = torch.randn(d, rank, generator=g, dtype=torch.float64)                   # any trained B
    delta = 2.0 * b2 @ a2
    assert (delta @ m1).abs().max() < 1e-12                                       # outputs on span(M) unchanged
    inside = x1 @ m1 @ m1.T
    assert (inside @ delta.T).abs().max() < 1e-12
    outside = x1 - inside
    bound = torch.linalg.matrix_norm(delta, 2) * outside.norm(dim=1)
    assert ((x1 @ delta.T).norm(dim=1) <= bound + 1e-12).all()
    # Without the projection (a plain top-r design), the update would reach task 1's subspace.
    u = torch.linalg.svd(x2.T @ x2, full_matrices=False)[0]
    assert ((2.0 * b2 @ (u[:, :rank].T / math.sqrt(3))) @ m1).abs().max() > 1e-3


def test_the_language_model_recipe_removes_the_earlier_subspace_from_a_random_a():
    """gainlora's A_t: the random A minus its part in span(M), rows at norm 1/√3; the new update maps span(M) to 0
    whatever B learns; before the first task A stays as initialised."""
    g = torch.Generator().manual_seed(1)
    d, rank = 16, 4
    basis = torch.linalg.qr(torch.randn(d, 5, generator=g, dtype=torch.float64))[0]
    a = torch.randn(rank, d, generator=g, dtype=torch.float64)
    designed = random_down_projection(a, basis)
    assert (designed @ basis).abs().max() < 1e-12
    assert torch.allclose(designed.norm(dim=1), torch.full((rank,), 1 / math.sqrt(3), dtype=torch.float64))
    # the direction kept is the random A's own outside the subspace, not the inputs' top singular vectors
    outside = a - a @ basis @ basis.T
    assert torch.allclose(designed, outside / outside.norm(dim=1, keepdim=True) / math.sqrt(3), atol=1e-12)
    b = torch.randn(d, rank, generator=g, dtype=torch.float64)
    assert ((b @ designed) @ basis).abs().max() < 1e-12
    assert random_down_projection(a, None) is a
    assert ((b @ a) @ basis).abs().max() > 1e-3  # without it the update would reach the earlier subspace


@pytest.mark.parametrize("kind, design, threshold_value", [("causal-lm", "random", 0.995), ("encoder", "inputs", 0.95)])
def test_each_model_kind_gets_its_official_recipe(tmp_path, kind, design, threshold_value, monkeypatch):
    from pslora_cli.config import validate, validate_sequence

    monkeypatch.setattr(validate, "backbone_kind", lambda backbone: kind)
    raw = {"name": "x", "backbone": {"source": "huggingface", "name": "some/model"}, "method": {"name": "inflora"},
           "tasks": [{"id": "t1", "data": {"type": "files", "train": "t.csv"}}]}
    monkeypatch.setattr(validate, "_check_modality", lambda seq, where: None)
    monkeypatch.setattr(validate, "_check_generative", lambda seq, where: None)
    seq = validate_sequence(raw, "x.yaml", tmp_path)
    assert (seq.method.subspace_design, seq.method.subspace_threshold) == (design, threshold_value)


def test_a_convolution_is_refused_by_name():
    check_linear({"blocks.0.attn.qkv.weight": (192, 64)})
    with pytest.raises(InputError, match=r"inflora adapts linear layers only; conv1.weight is a convolution"):
        check_linear({"conv1.weight": (64, 3, 7, 7)})
