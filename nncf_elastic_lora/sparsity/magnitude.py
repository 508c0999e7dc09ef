"""Magnitude pruning, the baseline: ``S = |W|``.

Unstructured magnitude compares the whole matrix (one threshold per layer), as the Wanda
paper's magnitude baseline does; N:M compares within each group, as Wanda does.
"""

from __future__ import annotations

import torch

from .masks import layer_mask, n_m_mask


def magnitude_mask(weight: torch.Tensor, ratio: float, n_m: tuple[int, int] | None = None) -> torch.Tensor:
    scores = weight.abs().float()
    return n_m_mask(scores, *n_m) if n_m else layer_mask(scores, ratio)
