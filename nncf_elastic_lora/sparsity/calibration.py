"""Calibration batches and the inputs of the first decoder layer."""

from __future__ import annotations

import random
from typing import Any

import torch

from ..data import Example


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


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder blocks."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__}: no decoder `layers` list found; only LLaMA-style models are supported"
        )
    return layers


class _Captured(Exception):
    pass


@torch.no_grad()
def capture_layer_inputs(
    model: torch.nn.Module, batches: list[torch.Tensor]
) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Run the embeddings only, returning each batch's (hidden_states, layer kwargs) for layer 0."""
    first = decoder_layers(model)[0]
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for ids in batches:
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured
