"""Calibration batches and the inputs each decoder block receives."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from ..architecture import decoder_blocks
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
    """The model's list of decoder blocks (see :func:`nncf_elastic_lora.architecture.decoder_blocks`)."""
    return decoder_blocks(model)[1]


class _Captured(Exception):
    """Raised by the last block's pre-hook: nothing after it is needed."""


# One block's inputs besides its hidden states: further positional arguments and keyword arguments.
BlockInputs = tuple[tuple[Any, ...], dict[str, Any]]

# Equal tensors are looked for among this many kept ones of the same shape: bounds the comparisons
# when a model does pass distinct per-block tensors.
_SHARE_CANDIDATES = 8


@dataclass
class LayerInputs:
    """One calibration batch's inputs to the decoder blocks.

    ``hidden_states`` is block 0's hidden-state input; ``blocks[i]`` is everything else block ``i``
    receives (attention mask, rotary embeddings, position ids, ...), its own and not block 0's:
    sliding-window and full-attention blocks (Gemma 2/3) get different masks and rotary tables.
    """

    hidden_states: torch.Tensor
    blocks: list[BlockInputs] = field(default_factory=list)


def _share(value: Any, pool: dict[tuple, list[torch.Tensor]]) -> Any:
    """``value`` with every tensor replaced by an equal one already kept, if any.

    Blocks usually get the very same mask and rotary tensors (shared by identity already), and
    batches of one shape get equal ones: each distinct value is then held once.
    """
    if isinstance(value, torch.Tensor):
        kept = pool.setdefault((value.shape, value.dtype, value.device), [])
        for other in kept[-_SHARE_CANDIDATES:]:
            if other is value or torch.equal(other, value):
                return other
        kept.append(value)
        return value
    if type(value) in (tuple, list):
        return type(value)(_share(v, pool) for v in value)
    if type(value) is dict:
        return {k: _share(v, pool) for k, v in value.items()}
    return value


def _order_error(model: torch.nn.Module, blocks: torch.nn.ModuleList) -> str:
    return (
        f"{type(model).__name__}: its forward does not call its {len(blocks)} decoder blocks once each, "
        "in order; layer-by-layer calibration needs that"
    )


@torch.no_grad()
def capture_layer_inputs(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[LayerInputs]:
    """Each batch's inputs to every decoder block, from one dense forward per batch.

    Records block 0's hidden states and every block's other inputs (masks, rotary embeddings,
    position ids), which depend on the tokens and not on the weights, so a forward of the unpruned
    model gives the inputs each block will see after pruning too; the hidden states of later blocks
    do depend on the weights and are recomputed by the caller as it prunes. The forward stops at the
    last block. Cost: about one extra pass of the blocks per batch, and memory for the distinct
    mask and rotary tensors (typically one or two ``B x S x S`` masks and ``S x head_dim`` tables
    per batch shape, see :func:`_share`).
    """
    blocks = decoder_layers(model)
    pool: dict[tuple, list[torch.Tensor]] = {}
    current: list[LayerInputs] = []

    def record(index: int, args: tuple, kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        if "hidden_states" in kwargs:
            hidden, rest = kwargs.pop("hidden_states"), args
        else:
            hidden, rest = args[0], args[1:]
        if index == 0:
            current.append(LayerInputs(hidden_states=hidden))
        if len(current) != 1 or len(current[0].blocks) != index:
            raise RuntimeError(_order_error(model, blocks))
        current[0].blocks.append((_share(tuple(rest), pool), _share(kwargs, pool)))
        if index == len(blocks) - 1:
            raise _Captured

    handles = [
        block.register_forward_pre_hook(lambda m, a, kw, i=i: record(i, a, kw), with_kwargs=True)
        for i, block in enumerate(blocks)
    ]
    device = next(model.parameters()).device
    captured: list[LayerInputs] = []
    try:
        for ids in batches:
            current.clear()
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Captured:
                pass
            if len(current) != 1 or len(current[0].blocks) != len(blocks):
                raise RuntimeError(_order_error(model, blocks))
            captured.append(current[0])
    finally:
        for h in handles:
            h.remove()
    return captured
