"""Calibration one decoder block at a time: the inputs each block receives, and a runner that moves
one block at a time to the device.

The model may stay in CPU memory (``load_model(..., on_device=False)``) while its blocks run on an
accelerator one after the other, as sequential calibration pipelines (GPTQ, llm-compressor) do, so a
model larger than the accelerator's memory can still be pruned and ordered: the device holds one
block, the calibration hidden states and the embeddings at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .architecture import decoder_blocks
from .devices import empty_cache


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


def _storage(blocks: torch.nn.ModuleList) -> torch.device:
    return next(blocks[0].parameters()).device


def _move_outside_blocks(model: torch.nn.Module, blocks: torch.nn.ModuleList, device: torch.device) -> None:
    """Move every tensor that is not a block's (embeddings, rotary tables, final norm, head) to ``device``."""
    inside = {id(m) for block in blocks for m in block.modules()}
    for module in model.modules():
        if id(module) not in inside:
            module._apply(lambda t: t.to(device), recurse=False)  # in place: tied weights stay tied


@contextmanager
def _streamed(model: torch.nn.Module, blocks: torch.nn.ModuleList, device: torch.device) -> Iterator[None]:
    """A whole-model forward on ``device`` with each block on it only while it runs."""
    storage = _storage(blocks)
    if storage == device:
        yield
        return
    def arrive(module: torch.nn.Module, args: tuple) -> None:  # a hook's return value would replace the inputs
        module.to(device)

    def leave(module: torch.nn.Module, args: tuple, output: Any) -> None:
        module.to(storage)

    handles = []
    for block in blocks:
        handles.append(block.register_forward_pre_hook(arrive))
        handles.append(block.register_forward_hook(leave))
    _move_outside_blocks(model, blocks, device)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for block in blocks:
            block.to(storage)
        _move_outside_blocks(model, blocks, storage)
        empty_cache(device)


@torch.no_grad()
def capture_layer_inputs(
    model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device | str | None = None
) -> list[LayerInputs]:
    """Each batch's inputs to every decoder block, from one dense forward per batch, on ``device``.

    Records block 0's hidden states and every block's other inputs (masks, rotary embeddings,
    position ids), which depend on the tokens and not on the weights, so a forward of the unpruned
    model gives the inputs each block will see after pruning too; the hidden states of later blocks
    do depend on the weights and are recomputed by the caller as it prunes. The forward stops at the
    last block. Cost: about one extra pass of the blocks per batch, and memory for the distinct
    mask and rotary tensors (typically one or two ``B x S x S`` masks and ``S x head_dim`` tables
    per batch shape, see :func:`_share`). ``device`` (default: the blocks' own) is where the forward
    runs; blocks stored elsewhere visit it one at a time, and the captured tensors stay on it.
    """
    blocks = decoder_layers(model)
    device = torch.device(device) if device is not None else _storage(blocks)
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

    # Registered before the streaming hooks, so the last block raises before it is moved.
    handles = [
        block.register_forward_pre_hook(lambda m, a, kw, i=i: record(i, a, kw), with_kwargs=True)
        for i, block in enumerate(blocks)
    ]
    captured: list[LayerInputs] = []
    try:
        with _streamed(model, blocks, device):
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


class BlockRunner:
    """Calibration batches through the decoder blocks in order, one block on ``device`` at a time.

    ``for index, prefix, block in runner:`` moves ``block`` to the device (and back to where it is
    stored afterwards); ``runner.run(index, block)`` gives its outputs for the current hidden states,
    ``runner.advance(outputs)`` makes them the next block's inputs. A caller that changes a block's
    weights (Wanda) runs it once for statistics, changes it, and advances with a second run.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batches: list[torch.Tensor],
        device: torch.device | str | None = None,
        *,
        modules: list[str] | None = None,
        what: str = "block-by-block calibration",
    ):
        """``modules``: the module names the caller observes, refused (naming ``what``) before any
        work when one lies outside the decoder blocks, where the runner never calls it."""
        self.blocks = decoder_layers(model)
        self.storage = _storage(self.blocks)
        self.device = torch.device(device) if device is not None else self.storage
        ids = {id(b) for b in self.blocks}
        self.prefixes = [name + "." for name, module in model.named_modules() if id(module) in ids]
        if modules is not None:
            self.check_inside(modules, what)
        captured = capture_layer_inputs(model, batches, self.device)
        self.hidden = [c.hidden_states for c in captured]
        self._extras = [[c.blocks[i] for c in captured] for i in range(len(self.blocks))]

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[tuple[int, str, torch.nn.Module]]:
        for index, block in enumerate(self.blocks):
            block.to(self.device)
            try:
                yield index, self.prefixes[index], block
            finally:
                if self.device != self.storage:
                    block.to(self.storage)
                    empty_cache(self.device)

    @torch.no_grad()
    def run(self, index: int, block: torch.nn.Module) -> list[torch.Tensor]:
        """The block's output hidden states per batch, each batch with the block's own other inputs."""
        outs = []
        for states, (args, kwargs) in zip(self.hidden, self._extras[index], strict=True):
            out = block(states, *args, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
        return outs

    def advance(self, outputs: list[torch.Tensor]) -> None:
        self.hidden = outputs

    def check_inside(self, names: list[str], what: str) -> None:
        """Refuse module names outside the decoder blocks: the runner never calls them."""
        outside = sorted(n for n in names if not any(n.startswith(p) for p in self.prefixes))
        if outside:
            raise ValueError(f"{what} sees decoder-block modules only; these are outside: {outside}")


@torch.no_grad()
def streamed_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """The model's logits for ``input_ids`` computed on ``device``, each block visiting it only while it runs."""
    blocks = decoder_layers(model)
    device = torch.device(device) if device is not None else _storage(blocks)
    with _streamed(model, blocks, device):
        return model(input_ids=input_ids.to(device), use_cache=False).logits.float().cpu()
