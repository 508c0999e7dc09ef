"""LoNAS Mode B: the MLP intermediate channels of every decoder layer, scored, ordered, masked, sliced.

A gated MLP computes ``down(act(gate(x)) * up(x))``; its intermediate channel ``j`` is row ``j`` of
``gate`` and ``up`` (and of their LoRA ``B``) and column ``j`` of ``down`` (and of its LoRA ``A``).

- **Ordering** (:func:`order_mlp_channels`): permuting the channels of one MLP by one permutation
  changes nothing (tested to 1e-5), so they are permuted once, most important first, and every
  width keeps the most important channels. The importance of channel ``j`` is Wanda's score summed
  over ``down``'s column: ``Σ_i |W_down[i, j]| · ‖h_j‖₂`` over calibration tokens (``h`` = the
  intermediate activation, ``down``'s input).
- **Elastic width in the super-network** (:class:`ChannelMask`): a width ``w`` zeroes ``down``'s input
  channels from ``w`` on. That is exactly the sliced MLP (``gate``/``up`` rows and ``down`` columns
  from ``w`` on never reach the output, and they get no gradient), with no reshaping of any weight.
- **Extraction** (:func:`slice_mlp`): the kept prefixes as physically smaller linears.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..architecture import decoder_blocks
from ..blockwise import BlockRunner
from ..devices import accumulation_dtype
from ..formats import PER_LAYER_KEY

GATED_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # LLaMA, Mistral, Qwen, Gemma, Phi-3 style


@dataclass(frozen=True)
class GatedMLP:
    """Module names of one decoder layer's gated MLP."""

    layer: int
    name: str
    gate: str
    up: str
    down: str


def base_linear(module: nn.Module) -> nn.Linear:
    """The frozen base linear of a plain linear or of an adapter wrapping one (``base_layer``)."""
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear):
        raise TypeError(f"expected a linear layer, got {type(base).__name__}")
    return base


def gated_mlps(model: nn.Module) -> list[GatedMLP]:
    """Every decoder layer's gated MLP, in layer order.

    Raises:
        ValueError: a layer has no module with ``gate_proj``, ``up_proj`` and ``down_proj`` linears
            (Mode B needs a gated MLP: LLaMA, Mistral, Qwen, Gemma, ...), naming the layer's modules.
    """
    found = layer_modules(
        model,
        GATED_MLP_PROJECTIONS,
        what="gated MLP",
        hint="Channel elasticity (bootstrapNAS.elasticity.mode 'rank_and_channels') needs LLaMA-style MLPs",
    )
    return [GatedMLP(i, prefix, *(f"{prefix}.{p}" for p in GATED_MLP_PROJECTIONS)) for i, prefix, _ in found]


def layer_modules(
    model: nn.Module, projections: tuple[str, ...], *, what: str, hint: str
) -> list[tuple[int, str, nn.Module]]:
    """``(layer, module name, module)`` of the module in every decoder layer that holds all ``projections``.

    Raises:
        ValueError: a layer has none, naming the layer and its modules (``what`` and ``hint`` word it).
    """
    blocks_name, blocks = decoder_blocks(model)
    found = []
    for i, block in enumerate(blocks):
        hit = next(
            (
                (name, m)
                for name, m in block.named_modules()
                if all(isinstance(getattr(m, p, None), nn.Module) for p in projections)
            ),
            None,
        )
        if hit is None:
            children = ", ".join(n for n, _ in block.named_children())
            raise ValueError(
                f"{type(model).__name__}: decoder layer {i} has no {what} (a module with "
                f"{', '.join(projections)}); its modules: {children}. {hint}"
            )
        name, module = hit
        found.append((i, f"{blocks_name}.{i}.{name}" if name else f"{blocks_name}.{i}", module))
    return found


def intermediate_size(model: nn.Module, mlp: GatedMLP) -> int:
    return base_linear(model.get_submodule(mlp.down)).in_features


# ---------------------------------------------------------------------- importance and order


def channel_importance(down_weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``Σ_i |W_down[i, j]| · ‖h_j‖₂`` per intermediate channel ``j`` (``input_sq_sum``: ``Σ_t h_tj²``)."""
    return down_weight.abs().float().sum(0) * input_sq_sum.float().to(down_weight.device).sqrt()


def importance_order(importance: torch.Tensor) -> torch.Tensor:
    """Channel indices, most important first (ties keep the original order)."""
    return torch.argsort(importance, descending=True, stable=True)


@torch.no_grad()
def input_sq_sums(
    model: nn.Module, modules: list[str], batches: list[torch.Tensor], device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """``Σ_t x_tj²`` of every named linear's input (inside the decoder blocks) over the calibration tokens.

    The batches go through the blocks one block at a time on ``device`` (default: the model's), so a
    model kept in CPU memory visits an accelerator one block at a time.
    """
    sums = [torch.zeros(base_linear(model.get_submodule(n)).in_features, dtype=torch.float64) for n in modules]
    # Before the hooks: its capture forward runs the blocks too.
    runner = BlockRunner(model, batches, device, modules=modules, what="channel and KV-group ordering")
    handles = []
    for k, name in enumerate(modules):

        def hook(_module, args, k=k):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            x = x.to(accumulation_dtype(x.device))
            sums[k] += (x * x).sum(0).cpu().double()

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for index, _, block in runner:
            runner.advance(runner.run(index, block))
    finally:
        for h in handles:
            h.remove()
    return sums


def down_input_sq_sums(
    model: nn.Module, mlps: list[GatedMLP], batches: list[torch.Tensor], device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """``Σ_t h_tj²`` of every MLP's intermediate activation over the calibration tokens."""
    return input_sq_sums(model, [m.down for m in mlps], batches, device)


def permute_rows(module: nn.Module, order: torch.Tensor) -> None:
    """Reorder output channels: the base rows (and bias), a LoRA ``B``'s rows, a SparsePEFT mask's rows."""
    base = base_linear(module)
    # Into the weight's own storage: a new tensor would leave the loaded one (often a mapped file) resident.
    base.weight.data.copy_(base.weight.data[order])
    if base.bias is not None:
        base.bias.data = base.bias.data[order].contiguous()
    if hasattr(module, "lora_B"):
        module.lora_B.weight.data = module.lora_B.weight.data[order].contiguous()
    if getattr(module, "mask", None) is not None:
        module.mask = module.mask[order].contiguous()


def permute_columns(module: nn.Module, order: torch.Tensor) -> None:
    """Reorder input channels: the base columns, a LoRA ``A``'s columns, a SparsePEFT mask's columns."""
    base = base_linear(module)
    base.weight.data.copy_(base.weight.data[:, order])  # in place, as in permute_rows
    if hasattr(module, "lora_A"):
        module.lora_A.weight.data = module.lora_A.weight.data[:, order].contiguous()
    if getattr(module, "mask", None) is not None:
        module.mask = module.mask[:, order].contiguous()


@torch.no_grad()
def permute_mlp(model: nn.Module, mlp: GatedMLP, order: torch.Tensor) -> None:
    """Apply one permutation to an MLP's intermediate channels; the MLP computes the same function."""
    if hasattr(model.get_submodule(mlp.down), "scale"):
        raise ValueError(
            f"{mlp.name}: an INT4 (qa_sparsepeft) layer's quantization groups run along its input channels; "
            "order the channels before quantizing the base"
        )
    order = order.to(base_linear(model.get_submodule(mlp.down)).weight.device)
    permute_rows(model.get_submodule(mlp.gate), order)
    permute_rows(model.get_submodule(mlp.up), order)
    permute_columns(model.get_submodule(mlp.down), order)


@dataclass
class OrderingReport:
    """What ordering bought: the share of the total importance a prefix keeps, ordered vs as it was."""

    fractions: list[float]
    kept_ordered: list[float]  # mean over layers, per fraction
    kept_original: list[float]

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "fractions": self.fractions,
            "kept_ordered": self.kept_ordered,
            "kept_original": self.kept_original,
        }


@torch.no_grad()
def order_mlp_channels(
    model: nn.Module,
    batches: list[torch.Tensor],
    fractions: tuple[float, ...] = (0.875, 0.75, 0.625, 0.5),
    device: torch.device | str | None = None,
    sums: list[torch.Tensor] | None = None,
) -> OrderingReport:
    """Score every MLP's channels on ``batches`` (run on ``device``) and permute them most important first (in place).

    ``sums``: the down projections' input statistics already measured (:func:`input_sq_sums`), in
    :func:`gated_mlps` order; the batches are then not run again.
    """
    mlps = gated_mlps(model)
    if sums is None:
        sums = down_input_sq_sums(model, mlps, batches, device)
    ordered: list[list[float]] = [[] for _ in fractions]
    original: list[list[float]] = [[] for _ in fractions]
    for m, sq in zip(mlps, sums, strict=True):
        score = channel_importance(base_linear(model.get_submodule(m.down)).weight, sq)
        order = importance_order(score)
        total = float(score.sum()) or 1.0
        for k, f in enumerate(fractions):
            w = max(1, round(f * score.numel()))
            ordered[k].append(float(score[order[:w]].sum()) / total)
            original[k].append(float(score[:w].sum()) / total)
        permute_mlp(model, m, order)
    mean = [sum(v) / len(v) for v in ordered]
    return OrderingReport(list(fractions), mean, [sum(v) / len(v) for v in original])


# ---------------------------------------------------------------------- elastic width and slicing


class ChannelMask:
    """The elastic width of one MLP: a forward pre-hook on ``down`` that zeroes input channels ``≥ width``."""

    def __init__(self, down: nn.Module, size: int):
        self.size = size
        self.width = size
        self._keep: dict[tuple, torch.Tensor] = {}  # (width, dtype, device) -> 0/1 vector, made once
        self._handle = down.register_forward_pre_hook(self._hook)

    def set_width(self, width: int) -> None:
        if not 0 < width <= self.size:
            raise ValueError(f"width {width} is outside [1, {self.size}] for this layer's input channels")
        self.width = width

    def _hook(self, _module: nn.Module, args: tuple) -> tuple | None:
        if self.width == self.size:
            return None
        x = args[0]
        key = (self.width, x.dtype, x.device)
        keep = self._keep.get(key)
        if keep is None:
            keep = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
            keep[: self.width] = 1
            self._keep[key] = keep
        return (x * keep, *args[1:])

    def remove(self) -> None:
        self._handle.remove()


def _first_columns_in_place(w: torch.Tensor, cols: int) -> torch.Tensor:
    """``w[:, :cols]`` moved to the front of ``w``'s own storage, as a contiguous view of it.

    Row ``i`` moves from offset ``i * in`` to ``i * cols``, never later, so moving rows in order
    only overwrites rows already moved; a row whose old and new places overlap goes through a copy.
    """
    out, width = w.shape
    flat = w.view(-1)
    for i in range(1, out):
        src, dst = flat[i * width : i * width + cols], flat[i * cols : (i + 1) * cols]
        dst.copy_(src.clone() if i * width < (i + 1) * cols else src)
    return flat[: out * cols].view(out, cols)


def sliced_linear(linear: nn.Linear, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    """A linear holding the first ``rows`` output and ``cols`` input channels of ``linear``.

    The new weight lives in ``linear``'s own storage (a prefix view, columns compacted in place), so
    slicing a model needs no second copy of its MLPs: parameters loaded from a checkpoint are views
    of its mapped file, and new tensors would sit beside those pages, not replace them. ``linear``
    is spent.
    """
    w = linear.weight.data
    w = w[:rows] if rows is not None else w
    if cols is not None and cols < w.shape[1]:
        w = _first_columns_in_place(w, cols) if w.is_contiguous() else w[:, :cols].contiguous()
    elif not w.is_contiguous():
        w = w.contiguous()
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device="meta", dtype=w.dtype)
    out.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        bias = linear.bias.data[:rows] if rows is not None else linear.bias.data
        out.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return out


@torch.no_grad()
def slice_mlp(model: nn.Module, mlp: GatedMLP, width: int) -> None:
    """Replace an MLP's (plain, merged) linears by their first ``width`` intermediate channels."""
    parent = model.get_submodule(mlp.name)
    gate, up, down = (model.get_submodule(n) for n in (mlp.gate, mlp.up, mlp.down))
    for module in (gate, up, down):
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{mlp.name}: merge the adapters before slicing (found {type(module).__name__})")
    if not 0 < width <= down.in_features:
        raise ValueError(f"{mlp.name}: width {width} is outside [1, {down.in_features}]")
    parent.gate_proj = sliced_linear(gate, rows=width)
    parent.up_proj = sliced_linear(up, rows=width)
    parent.down_proj = sliced_linear(down, cols=width)
    if hasattr(parent, "intermediate_size"):
        parent.intermediate_size = width


def set_mlp_widths(model: nn.Module, widths: list[int]) -> None:
    """Slice every gated MLP of ``model`` to its width (one per decoder layer) and record them in its config."""
    mlps = gated_mlps(model)
    if len(widths) != len(mlps):
        raise ValueError(f"{len(widths)} MLP widths given for a model with {len(mlps)} decoder layers")
    for mlp, width in zip(mlps, widths, strict=True):
        slice_mlp(model, mlp, width)
    config = getattr(model, "config", None)
    if config is None:
        return
    if len(set(widths)) == 1:
        config.intermediate_size = widths[0]
        if hasattr(config, PER_LAYER_KEY):
            delattr(config, PER_LAYER_KEY)
    else:
        config.intermediate_size = max(widths)
        setattr(config, PER_LAYER_KEY, list(widths))
