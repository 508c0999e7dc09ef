"""Sparsification: Wanda, magnitude, N:M; pure mask functions and the layer-by-layer driver."""

from .calibration import calibration_batches
from .magnitude import magnitude_mask
from .masks import layer_mask, n_m_mask, parse_pattern, row_mask
from .sparsify import SparsityReport, layer_sparsity, linear_sparsity, sparsify_model
from .wanda import wanda_mask, wanda_scores

__all__ = [
    "SparsityReport",
    "calibration_batches",
    "layer_mask",
    "layer_sparsity",
    "linear_sparsity",
    "magnitude_mask",
    "n_m_mask",
    "parse_pattern",
    "row_mask",
    "sparsify_model",
    "wanda_mask",
    "wanda_scores",
]
