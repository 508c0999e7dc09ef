"""Wanda: pruning by weights and activations (Sun et al., 2023).

``S_ij = |W_ij| * ||X_j||_2`` where ``||X_j||_2`` is the L2 norm of input feature ``j`` over all
calibration tokens. Scores are compared within each output row (or within N:M groups) and the
lowest are zeroed. No weight update, no second-order information.
"""

from __future__ import annotations

import torch

from ..devices import accumulation_dtype
from .masks import n_m_mask, row_mask


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X||_2`` with ``input_sq_sum[j] = sum over tokens of x_j**2``."""
    return weight.abs().float() * input_sq_sum.float().to(weight.device).sqrt().unsqueeze(0)


def wanda_mask(
    weight: torch.Tensor, input_sq_sum: torch.Tensor, ratio: float, n_m: tuple[int, int] | None = None
) -> torch.Tensor:
    """The Wanda mask (``True`` = remove): per-row ``ratio``, or ``n`` of every ``m`` inputs."""
    scores = wanda_scores(weight, input_sq_sum)
    return n_m_mask(scores, *n_m) if n_m else row_mask(scores, ratio)


class InputNormStat:
    """Accumulates ``sum over tokens of x_j**2`` for a linear layer's input, as a forward hook."""

    def __init__(self, in_features: int):
        self.sq_sum = torch.zeros(in_features, dtype=torch.float64)
        self.tokens = 0

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1])
        x = x.to(accumulation_dtype(x.device))
        self.sq_sum += (x * x).sum(dim=0).cpu().double()
        self.tokens += x.shape[0]
