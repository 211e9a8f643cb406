"""InfLoRA's input subspaces (Liang & Li, CVPR 2024), after its official code (liangyanshuo/InfLoRA,
`methods/inflora.py`: `_train`, `update_DualGPM`; `models/sinet_inflora.py`, `models/vit_inflora.py`: the input
matrix). Pure torch, any device.

Per adapted module, the input matrix of a task is the mean over its tokens of x xᵀ (d_in x d_in). Before task t
trains, its down-projection is fixed from that matrix with the earlier tasks' input subspace M (orthonormal
columns, d_in x k) projected out: A_t = (top-r left singular vectors of (I − M Mᵀ) C)ᵀ / √3, so that A_t M = 0
and the new update s·B_t·A_t leaves the module's output on inputs in span(M) unchanged whatever B_t learns. After
task t trains, M grows by the directions of the task's input matrix outside it until the captured share of its
squared singular values reaches the threshold (λ_b − λ_a)·t/T + λ_a (0.95 → 1.0 in the official configs).

The official code keeps M as either the occupied subspace ("remove") or its complement ("retain", once M holds
more than half the dimensions), to keep the smaller of the two; both give the same projection and the same
growth rule up to ties at the threshold. Here M is always the occupied subspace.
"""

from __future__ import annotations

import math

import torch

A_SCALE = 1 / math.sqrt(3)  # the official A_t = Uᵀ/√3


def threshold(task_index: int, num_tasks: int, start: float, end: float) -> float:
    """The share of the input matrix's energy kept after task `task_index` (0-based) of `num_tasks`."""
    return (end - start) * task_index / num_tasks + start


class InputMatrix:
    """Running mean of x xᵀ over the rows of the inputs seen (rows: tokens; columns: d_in), in float64, on the
    inputs' device."""

    def __init__(self, dim: int):
        self.dim = dim
        self.sum: torch.Tensor | None = None
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().reshape(-1, self.dim).to(torch.float64)
        product = rows.T @ rows
        self.sum = product if self.sum is None else self.sum + product
        self.count += rows.shape[0]

    @property
    def value(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no inputs were seen")
        return self.sum / self.count


def project_out(matrix: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """(I − M Mᵀ) C: the part of C's columns outside span(M)."""
    if basis is None or basis.shape[1] == 0:
        return matrix
    basis = basis.to(matrix.dtype)
    return matrix - basis @ (basis.T @ matrix)


def design_down_projection(matrix: torch.Tensor, basis: torch.Tensor | None, rank: int) -> torch.Tensor:
    """A_t (rank x d_in): the top `rank` left singular vectors of the projected input matrix, transposed, / √3."""
    u, _, _ = torch.linalg.svd(project_out(matrix, basis), full_matrices=False)
    a = u[:, :rank].T * A_SCALE
    # Directions the projection removed carry only rounding error: remove it again so that A_t Mᵀ is 0 to
    # float precision, not just to the SVD's.
    return project_out(a.T, basis).T.contiguous()


def random_down_projection(a: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """The language-model recipe's A_t (liangyanshuo/gainlora, `src/cl_trainer_inflora.py`, `get_reg_matrix`): the
    randomly initialised A (rank x d_in) with its component in the earlier subspace removed, A − A M Mᵀ, each row
    then scaled to norm 1/√3. Before the first task there is no subspace and the official code leaves A as
    initialised."""
    if basis is None or basis.shape[1] == 0:
        return a
    projected = project_out(a.to(torch.float64).T, basis.to(torch.float64)).T
    return projected / (projected.norm(dim=1, keepdim=True) / A_SCALE)


def extend_basis(matrix: torch.Tensor, basis: torch.Tensor | None, keep: float) -> torch.Tensor:
    """The input subspace after a task whose input matrix is `matrix`: for the first task, the top directions
    whose cumulative share of the squared singular values stays under `keep` (at least one); later, the earlier
    basis plus the top directions of the projected matrix until the share captured reaches `keep`. Columns
    orthonormal, at most d_in."""
    u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    total = (s ** 2).sum()
    if basis is None or basis.shape[1] == 0:
        share = torch.cumsum(s ** 2, 0) / total
        r = max(int((share < keep).sum()), 1)
        return u[:, :r].contiguous()
    basis = basis.to(matrix.dtype)
    u, s, _ = torch.linalg.svd(project_out(matrix, basis), full_matrices=False)
    captured = float((total - (s ** 2).sum()) / total)
    ratios = (s ** 2 / total).tolist()
    r = 0
    while r < len(ratios) and captured < keep:
        captured += ratios[r]
        r += 1
    if r == 0:
        return basis
    grown = torch.cat([basis, u[:, :r]], dim=1)
    # Re-orthonormalise (the new directions are orthogonal to the basis up to rounding).
    q, _ = torch.linalg.qr(grown)
    return q[:, :min(grown.shape[1], matrix.shape[0])].contiguous()
