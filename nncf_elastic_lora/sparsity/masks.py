"""Pruning masks from importance scores: the maths shared by Wanda and magnitude, as pure functions.

A mask is a boolean tensor shaped like the weight, ``True`` where the weight is **removed**.
"""

from __future__ import annotations

import torch


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' -> (N, M), N of every M consecutive inputs zeroed."""
    if pattern == "unstructured":
        return None
    n, m = (int(x) for x in pattern.split(":"))
    if not 0 < n < m:
        raise ValueError(f"N:M pattern needs 0 < N < M, got {pattern!r}")
    return n, m


def row_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Remove the ``int(in_features * ratio)`` lowest scores of every output row."""
    k = int(scores.shape[1] * ratio)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        lowest = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, lowest, True)
    return mask


def layer_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Remove the ``int(numel * ratio)`` lowest scores of the whole matrix (magnitude's baseline)."""
    k = int(scores.numel() * ratio)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.sort(scores.flatten(), stable=True).indices[:k]] = True
    return mask.view_as(scores)


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Remove the ``n`` lowest scores in every group of ``m`` consecutive inputs of a row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{n}:{m} sparsity needs in_features divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    lowest = torch.topk(groups, n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
    return mask.reshape(rows, cols)
