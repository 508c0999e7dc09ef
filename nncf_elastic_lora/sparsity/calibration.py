"""Calibration batches; the inputs each decoder block receives are captured by :mod:`..blockwise`."""

from __future__ import annotations

import random

import torch

from ..blockwise import BlockInputs, LayerInputs, capture_layer_inputs, decoder_layers
from ..data import Example

__all__ = ["BlockInputs", "LayerInputs", "calibration_batches", "capture_layer_inputs", "decoder_layers"]


def calibration_batches(
    examples: list[Example], tokenizer, num_samples: int, seq_len: int, seed: int = 0
) -> list[torch.Tensor]:
    """``num_samples`` windows of ``seq_len`` tokens drawn at seeded random offsets from the texts.

    Texts are joined with the EOS token into one stream, as Wanda samples windows from C4.
    """
    if not examples:
        raise ValueError("no calibration examples: the calibration task's train split is empty")
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = tokenizer([e.text for e in examples], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([t for seq in encoded for t in (*seq, *sep)])
    if ids.numel() < seq_len + 1:
        raise ValueError(f"calibration texts have {ids.numel()} tokens, fewer than seq_len={seq_len}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, ids.numel() - seq_len) for _ in range(num_samples)]
    return [ids[s : s + seq_len].unsqueeze(0) for s in starts]
