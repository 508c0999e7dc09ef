"""The elastic LoRA layers: a frozen base linear plus a low-rank branch whose rank is switchable.

``y = base(x) + s · B[:, :r] (A[:r] x)`` with ``A ∈ R^{r_max×in}``, ``B ∈ R^{out×r_max}`` (peft's
layout: ``lora_A.weight``, ``lora_B.weight``). Every sub-adapter shares these weights and uses the
leading ``r`` components. The scaling is fixed at ``s = alpha / r_max`` whatever the active rank, as
the Shears reference does; a sub-adapter saved for peft keeps it through ``alpha_pattern``
(``alpha_i = alpha · r_i / r_max``). At an active rank ``r`` the branch costs what a plain LoRA of
rank ``r`` costs: the weights are sliced, never masked.

Five kinds of adapter (:class:`AdapterKind`), one layer class each, registered in
:data:`ADAPTER_LAYERS` the way peft registers its layer types:

- ``lora`` (:class:`ElasticLoraLinear`): the plain low-rank branch above (Shears).
- ``sparsepeft`` (:class:`SparsePeftLinear`): ``Lp = (s · B A) ⊙ M`` with ``M = (W ≠ 0)`` of the
  frozen base, so ``W + Lp`` keeps the base's zeros (SQFT's SparsePEFT).
- ``qa_sparsepeft`` (:class:`QASparsePeftLinear`): the forward sees ``FQ(W + Lp)``, the sum
  quantised with the INT4 base's frozen scales and zero points (straight-through gradient), so the
  merged INT4 model is the trained model (SQFT's QA-SparsePEFT).
- ``fq_lora`` (:class:`FQLoraLinear`): the forward sees ``FQ(W + s · B A)`` through NNCF's own
  FQ+LoRA quantiser function, whose per-group ranges train with the adapter (NNCF's
  ``CompressionFormat.FQ_LORA_NLS``); no mask, so a sparse base's zeros are not kept. It merges into
  INT4 codes under the *trained* scales.
- ``fq_sparsepeft`` (:class:`FQSparsePeftLinear`): ``FQ(W + Lp)`` with SparsePEFT's mask inside the same
  trainable quantiser: the ranges train as in ``fq_lora``, and a pruned weight stays exactly zero under any
  trained range (NNCF's range tuning keeps zero a code), so the merged INT4 model keeps the base's sparsity.

The maths lives in the pure functions :func:`lora_delta`, :func:`sparse_merged_weight` and
:func:`qa_codes`; the layers' forward and :mod:`nncf_elastic_lora.merge` call the same ones,
so a merge reproduces the trained forward bit for bit (the FQ kinds: up to their trained scales' float16
storage, codes identical).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quantization import QuantizedWeight, code_dtype, code_range, fake_quantize, quantize


class AdapterKind(str, Enum):
    """How the low-rank update meets the base weight."""

    LORA = "lora"
    SPARSEPEFT = "sparsepeft"
    QA_SPARSEPEFT = "qa_sparsepeft"
    FQ_LORA = "fq_lora"
    FQ_SPARSEPEFT = "fq_sparsepeft"

    @property
    def int4_trained(self) -> bool:
        """Trained through an INT4 base's quantiser, so it merges into INT4 codes (and needs the base's)."""
        return self in (AdapterKind.QA_SPARSEPEFT, AdapterKind.FQ_LORA, AdapterKind.FQ_SPARSEPEFT)

    @property
    def trains_ranges(self) -> bool:
        """Its INT4 quantisers' ranges train with the adapter (NNCF's FQ+LoRA), so it merges under new scales."""
        return self in (AdapterKind.FQ_LORA, AdapterKind.FQ_SPARSEPEFT)

    @classmethod
    def parse(cls, value: AdapterKind | str) -> AdapterKind:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown adapter kind {value!r}; expected one of {[k.value for k in cls]}"
            ) from None


# ---------------------------------------------------------------------- the maths, as pure functions


def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``s · B A``. Slices are made contiguous so that a sub-adapter read back from disk (contiguous
    tensors) gives the same bits as the live super-adapter's slices."""
    return (b.contiguous() @ a.contiguous()) * scaling


def sparse_delta(a: torch.Tensor, b: torch.Tensor, scaling: float, mask: torch.Tensor) -> torch.Tensor:
    """``Lp = (s · B A) ⊙ M``. A product with the mask (cast from bool) rather than ``torch.where``
    (faster here); a finite update becomes ±0 at masked positions and ``0 + (−0) = +0``, so the
    merged zeros are exact (a NaN stays NaN, and merges refuse it)."""
    delta = lora_delta(a, b, scaling)
    return delta * mask.to(delta.dtype)


class _MaskedLoraLinear(torch.autograd.Function):
    """``y = F.linear(x, W̃, bias)`` with ``W̃ = W + Lp`` (SparsePEFT) or ``FQ(W + Lp)`` (QA-SparsePEFT).

    Autograd through the plain expression keeps, per layer, the out×in merged weight and the
    float mask for backward (~8 bytes per base weight: a second copy of the model in float32).
    Here backward saves only what the model holds anyway (``x``, ``W``, ``A``, ``B``, the bool mask)
    and recomputes ``W̃``; the gradient is the same: ``G = s · (gᵀ x) ⊙ M`` (straight through the
    quantiser for QA), ``∂A = Bᵀ G``, ``∂B = G Aᵀ``.
    """

    @staticmethod
    def forward(ctx, x, w, a, b, mask, bias, scaling, grid):  # noqa: ANN001
        ctx.save_for_backward(x, w, a, b, mask)
        ctx.scaling, ctx.grid = scaling, grid
        return F.linear(x, _effective_weight(w, a, b, scaling, mask, grid), bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        x, w, a, b, mask = ctx.saved_tensors
        grad_x = grad_a = grad_b = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ _effective_weight(w, a, b, ctx.scaling, mask, ctx.grid)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            g = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1])
            g = g.mul_(mask.to(g.dtype)).mul_(ctx.scaling)
            grad_a = b.T @ g if ctx.needs_input_grad[2] else None
            grad_b = g @ a.T if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[5]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, None, grad_a, grad_b, None, grad_bias, None, None


def _effective_weight(w, a, b, scaling, mask, grid):  # noqa: ANN001, ANN202
    merged = sparse_merged_weight(w, a, b, scaling, mask)
    return merged if grid is None else fake_quantize(merged, *grid)


def masked_lora_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None,
    scaling: float,
    grid: tuple | None = None,
) -> torch.Tensor:
    """The SparsePEFT (``grid`` None) or QA-SparsePEFT (``grid = (scale, zero_point, group_size, bits)``)
    linear, memory-lean in backward (see :class:`_MaskedLoraLinear`)."""
    return _MaskedLoraLinear.apply(x, w, a, b, mask, bias, scaling, grid)


def sparse_merged_weight(
    w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, mask: torch.Tensor
) -> torch.Tensor:
    """``W + Lp`` in the adapter's dtype: the one weight the SparsePEFT forward and merge use."""
    return w.to(a.dtype) + sparse_delta(a, b, scaling, mask)


def qa_codes(merged: torch.Tensor, qweight: QuantizedWeight) -> torch.Tensor:
    """The integer codes of ``merged`` under the base's frozen scales and zero points."""
    return quantize(merged, qweight.scale, qweight.zero_point, qweight.group_size, qweight.bits)


# ---------------------------------------------------------------------- the layers


class ElasticLoraLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` (``base_layer``) with an elastic-rank LoRA branch."""

    kind = AdapterKind.LORA

    def __init__(
        self,
        base_layer: nn.Linear,
        max_rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if max_rank <= 0:
            raise ValueError(f"max_rank must be positive, got {max_rank}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.max_rank = max_rank
        self.alpha = alpha
        self.scaling = alpha / max_rank
        device = base_layer.weight.device
        self.lora_A = nn.Linear(self.in_features, max_rank, bias=False, device=device)
        self.lora_B = nn.Linear(max_rank, self.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(
            self.lora_A.weight, a=math.sqrt(5), generator=generator
        )  # peft's default init
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.active_rank = max_rank

    def set_active_rank(self, rank: int) -> None:
        if not 0 <= rank <= self.max_rank:
            raise ValueError(f"rank {rank} is outside [0, {self.max_rank}] for this adapter")
        self.active_rank = rank

    @property
    def weight(self) -> torch.Tensor:  # so code that inspects `.weight` of a linear keeps working
        return self.base_layer.weight

    def lora_weights(self, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A[:r], B[:, :r])`` at ``rank`` (default: the active rank)."""
        r = self.active_rank if rank is None else rank
        return self.lora_A.weight[:r], self.lora_B.weight[:, :r]

    def delta_weight(self, rank: int | None = None) -> torch.Tensor:
        """The dense update ``s · B A`` at ``rank``, shaped like the base weight."""
        a, b = self.lora_weights(rank)
        return lora_delta(a, b, self.scaling)

    def merged_weight(self, rank: int | None = None) -> torch.Tensor:
        """The weight a merge at ``rank`` writes into the base linear (in the adapter's dtype)."""
        return self.base_layer.weight.to(self.lora_A.weight.dtype) + self.delta_weight(rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.active_rank == 0:
            return result
        a, b = self.lora_weights()
        update = F.linear(F.linear(self.lora_dropout(x).to(a.dtype), a), b) * self.scaling
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind.value}, in={self.in_features}, out={self.out_features}, "
            f"max_rank={self.max_rank}, active_rank={self.active_rank}"
        )


class SparsePeftLinear(ElasticLoraLinear):
    """SparsePEFT: the update is masked by the base's non-zeros, so merging keeps the sparsity.

    ``(s · B A) ⊙ M`` has no low-rank form, so the forward materialises ``W + Lp`` (an out×in
    product per layer, as the SQFT reference does) and applies one ``F.linear``. The mask is a
    non-persistent buffer: it belongs to the base and is recomputed when the adapter is attached.
    """

    kind = AdapterKind.SPARSEPEFT

    def __init__(
        self,
        base_layer: nn.Linear,
        max_rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(base_layer, max_rank, alpha, dropout, generator)
        self.register_buffer("mask", base_layer.weight.detach() != 0, persistent=False)

    def delta_weight(self, rank: int | None = None) -> torch.Tensor:
        """The masked update ``Lp = (s · B A) ⊙ M`` at ``rank``."""
        a, b = self.lora_weights(rank)
        return sparse_delta(a, b, self.scaling, self.mask)

    def merged_weight(self, rank: int | None = None) -> torch.Tensor:
        a, b = self.lora_weights(rank)
        return sparse_merged_weight(self.base_layer.weight, a, b, self.scaling, self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_rank == 0:
            return self.base_layer(x)
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            # Dropout acts on the adapter's input only, so the update needs its own product here.
            delta = self.delta_weight()
            return self.base_layer(x) + F.linear(self.lora_dropout(x).to(delta.dtype), delta).to(x.dtype)
        return self._masked_linear(x, None)

    def _masked_linear(self, x: torch.Tensor, grid: tuple | None) -> torch.Tensor:
        a, b = self.lora_weights()
        w, bias = self.base_layer.weight.to(a.dtype), self._bias(a.dtype)
        return masked_lora_linear(x.to(a.dtype), w, a, b, self.mask, bias, self.scaling, grid).to(x.dtype)

    def _bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        bias = self.base_layer.bias
        return None if bias is None else bias.to(dtype)


class QASparsePeftLinear(SparsePeftLinear):
    """QA-SparsePEFT: the forward applies ``FQ(W + Lp)`` with the INT4 base's frozen scales and zeros.

    ``W`` is the dequantised INT4 weight (checked bitwise at construction: scales from another base
    would silently train against the wrong grid). Only ``A`` and ``B`` train; the straight-through
    estimator passes the gradient of the quantised weight to ``W + Lp``. With ``B = 0`` the codes
    are the base's own, so the forward is the base's exactly.

    With ``quantized.float_weight`` (``qa_base_weight: float``) ``W`` is instead the float weight the codes
    were quantized from, copied into the base layer: on the dequantized weight every update under half a
    quantization step rounds back to the same code, so the forward never sees it and the loss cannot follow
    the gradient (the straight-through estimator's resolution); on the float weight the weights near a
    rounding boundary move first. The mask is then the float weight's zeros (the sparse model's), and
    ``FQ(W)`` at rank 0 is the base's codes up to the float16 scales' rounding (checked).
    """

    kind = AdapterKind.QA_SPARSEPEFT

    def __init__(
        self,
        base_layer: nn.Linear,
        max_rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        *,
        quantized: QuantizedWeight,
        name: str = "",
    ):
        if dropout > 0:
            raise ValueError(
                f"{self.kind.value} adapters take no dropout: the update is quantised together with the base "
                "weight, so there is no separate adapter input to drop; set lora_dropout to 0"
            )
        check_dequantized_base(base_layer.weight, quantized, name)
        on_float = quantized.float_weight is not None
        if on_float:
            check_float_source(quantized.float_weight, quantized, name)
            with torch.no_grad():
                base_layer.weight.copy_(quantized.float_weight.to(base_layer.weight))
        super().__init__(base_layer, max_rank, alpha, dropout, generator)  # the mask: zeros of W as set here
        self.on_float_weight = on_float
        device = base_layer.weight.device
        self.register_buffer("scale", quantized.scale.detach().to(device), persistent=False)
        zp = quantized.zero_point
        self.register_buffer("zero_point", None if zp is None else zp.detach().to(device), persistent=False)
        self.group_size, self.bits = quantized.group_size, quantized.bits

    @property
    def grid(self) -> QuantizedWeight:
        """The base's frozen scales and zero points (``codes`` left empty: they depend on the update)."""
        return QuantizedWeight(torch.empty(0), self.scale, self.zero_point, self.group_size, self.bits)

    def codes(self, rank: int | None = None) -> torch.Tensor:
        """The INT4 codes of ``W + Lp`` at ``rank``: what the forward fake-quantises, what a merge stores."""
        return qa_codes(self.merged_weight(rank), self.grid)

    def effective_weight(self, rank: int | None = None) -> torch.Tensor:
        """``FQ(W + Lp)``: the weight the forward applies (straight-through to ``A`` and ``B``)."""
        return fake_quantize(
            self.merged_weight(rank), self.scale, self.zero_point, self.group_size, self.bits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_rank == 0 and not self.on_float_weight:  # FQ(W) == W bitwise (checked at construction)
            return self.base_layer(x)
        return self._masked_linear(x, (self.scale, self.zero_point, self.group_size, self.bits))


class FQLoraLinear(QASparsePeftLinear):
    """NNCF's FQ+LoRA: the forward applies ``FQ(W + s · B A)`` with **trainable** per-group ranges.

    ``W`` is the float weight the INT4 base was quantized from (``quantized.float_weight``, copied into the
    base layer; the pipeline loads it from the model the base records), as NNCF's FQ_LORA keeps it: an update
    under half a quantization step then moves the codes of the weights near a rounding boundary, where on
    the dequantized weight it would round away. Without it, the base layer's own weight is ``W``.

    The quantise-dequantise is NNCF's own (``asymmetric_quantize_lora`` / ``symmetric_quantize_lora``,
    the functions behind ``CompressionFormat.FQ_LORA_NLS``: range tuning so that zero stays a code,
    gradients to the ranges as well as to the weight). The ranges start at the INT4 base's scales and
    zero points (as NNCF initialises them from ``compress_weights``), so with ``B = 0`` the forward is
    the base's (up to float rounding: NNCF's float32 FQ against the float16 dequantisation). Unlike
    QA-SparsePEFT the update is not masked: where the quantiser's scales move, a frozen grid could not
    hold the update; where zeros must survive, use ``fq_sparsepeft`` (or ``qa_sparsepeft``, its grid frozen).

    The merge (:meth:`codes` under :attr:`grid`) stores the trained scales in float16, as every INT4
    base here does: the merged weight differs from the trained forward by that rounding, and the float16
    product ``(q − z) · s`` rounding once more, only (about 1 % of a quantisation step at most), codes identical.
    """

    kind = AdapterKind.FQ_LORA
    masked = False  # FQSparsePeftLinear keeps the mask QASparsePeftLinear computed

    def __init__(self, *args: Any, quantized: QuantizedWeight, **kwargs: Any):  # as QASparsePeftLinear
        # FQ of the float weight the codes came from (copied in by QASparsePeftLinear), as NNCF's FQ_LORA: FQ of
        # the dequantized one would round away every update under half a quantization step
        super().__init__(*args, quantized=quantized, **kwargs)
        if not self.masked:
            self.mask = None  # no mask: the update reaches every weight
        self.levels = 2**self.bits
        scale = self.scale.float().unsqueeze(-1)  # [out, groups, 1], NNCF's layout
        if self.zero_point is None:  # NNCF's symmetric scale is the range's half-width: s · levels / 2
            self.input_scale = nn.Parameter(scale * (self.levels // 2))
        else:
            self.input_low = nn.Parameter(-self.zero_point.float().unsqueeze(-1) * scale)
            self.input_range = nn.Parameter(scale * (self.levels - 1) - _NNCF_EPS)

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """The trainable ranges (trained at ``learning_rate × quantizer_lr_ratio``; NNCF's example: a tenth)."""
        if self.zero_point is None:
            return [self.input_scale]
        return [self.input_low, self.input_range]

    def quantizer_state(self) -> dict[str, torch.Tensor]:
        return {
            n: getattr(self, n)
            for n in (("input_scale",) if self.zero_point is None else ("input_low", "input_range"))
        }

    def delta_weight(self, rank: int | None = None) -> torch.Tensor:
        return ElasticLoraLinear.delta_weight(self, rank)

    def merged_weight(self, rank: int | None = None) -> torch.Tensor:
        return ElasticLoraLinear.merged_weight(self, rank)

    def effective_weight(self, rank: int | None = None) -> torch.Tensor:
        """``FQ(W + s · B A)`` at ``rank`` through NNCF's function: the weight the forward applies."""
        from nncf.torch.quantization.quantize_functions import (
            asymmetric_quantize_lora,
            symmetric_quantize_lora,
        )

        a, b = self.lora_weights(rank)
        w = self.base_layer.weight.to(a.dtype)
        shape = (self.out_features, self.in_features // self.group_size, self.group_size)
        low, high = code_range(self.bits, self.zero_point is None)
        if self.zero_point is None:
            return symmetric_quantize_lora(w, shape, a * self.scaling, b, self.input_scale, low, high,
                                           self.levels, _NNCF_EPS)  # fmt: skip
        return asymmetric_quantize_lora(w, shape, a * self.scaling, b, self.input_low, self.input_range, low, high,
                                        self.levels, _NNCF_EPS)  # fmt: skip

    def _trained_grid(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The trained ranges as float32 ``(scale, zero point)`` ``[out, groups]``, as NNCF's strip derives them."""
        from nncf.torch.quantization.quantize_functions import TuneRange

        low, high = code_range(self.bits, self.zero_point is None)
        eps = torch.finfo(torch.float32).eps
        if self.zero_point is None:
            scale = self.input_scale.detach().float() / abs(low)
            return torch.where(scale.abs() < eps, eps, scale).squeeze(-1), None
        input_low, input_range = TuneRange.apply(
            self.input_low.detach(), self.input_range.detach().abs() + _NNCF_EPS, self.levels
        )
        scale = input_range.float() / high
        scale = torch.where(scale.abs() < eps, eps, scale)
        zero_point = (low - torch.round(input_low.float() / scale)).clamp(low, high)
        return scale.squeeze(-1), zero_point.squeeze(-1)

    @property
    def grid(self) -> QuantizedWeight:
        """The trained scales (float16, as stored) and zero points; ``codes`` left empty."""
        scale, zero_point = self._trained_grid()
        zp = None if zero_point is None else zero_point.to(torch.uint8)
        return QuantizedWeight(torch.empty(0), scale.to(torch.float16), zp, self.group_size, self.bits)

    def codes(self, rank: int | None = None) -> torch.Tensor:
        """The INT4 codes of the trained ``FQ(W + s · B A)`` at ``rank`` (NNCF's strip: qdq / s + z, rounded)."""
        low, high = code_range(self.bits, self.zero_point is None)
        with torch.no_grad():
            qdq = self.effective_weight(rank).float()
            scale, zero_point = self._trained_grid()
            q = qdq.reshape(self.out_features, -1, self.group_size) / scale.unsqueeze(-1)
            if zero_point is not None:
                q = q + zero_point.unsqueeze(-1)
            q = torch.round(q).clamp(low, high).reshape(qdq.shape)
        return q.to(code_dtype(self.bits, self.zero_point is None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inference = not self.training and not torch.is_grad_enabled()
        w = self._inference_weight() if inference else self.effective_weight()
        return F.linear(x.to(w.dtype), w, self._bias(w.dtype)).to(x.dtype)

    def _inference_weight(self) -> torch.Tensor:
        """``effective_weight()`` kept (in eval mode) while nothing it depends on changes: evaluation and
        search run many forwards at one rank, and quantising every weight per forward would dominate them."""
        params = (self.lora_A.weight, self.lora_B.weight, self.base_layer.weight, *self.quantizer_parameters())
        key = (self.active_rank, *((id(p), p._version) for p in params))
        if getattr(self, "_cached_key", None) != key:
            self._cached_weight, self._cached_key = self.effective_weight().detach(), key
        return self._cached_weight

    def lost_zeros(self, merged: torch.Tensor) -> int:
        """How many masked (pruned) positions of ``merged`` are not zero: 0 unmasked, or unless a range lost its
        zero code."""
        return 0 if self.mask is None else int((~self.mask & (merged != 0)).sum())

    def train(self, mode: bool = True) -> FQLoraLinear:
        self._cached_weight = self._cached_key = None  # one weight's worth of memory, not kept while training
        return super().train(mode)


class FQSparsePeftLinear(FQLoraLinear):
    """FQ-SparsePEFT: ``FQ(W + Lp)``, SparsePEFT's masked update inside FQ-LoRA's **trainable** quantiser.

    ``Lp = (s · B A) ⊙ M`` with ``M = (W ≠ 0)`` of the base layer's weight as the layer is built: the float
    weight the INT4 base was quantized from (the sparse model's; the INT4 base's own where it was built without
    it, ``base_weight: dequantized``), so a pruned weight enters the quantiser as exactly 0. NNCF's range
    tuning keeps 0 inside every trained range, and its quantiser derives the zero point and the output from
    one product, so a 0 input comes out as 0 and its code is the zero point, which dequantizes to 0 under any
    stored scale: the merged INT4 model keeps the sparse model's zeros while its scales train, which
    QA-SparsePEFT's frozen grid does not allow. Merges and strips as ``fq_lora`` (codes under the trained grid).
    """

    kind = AdapterKind.FQ_SPARSEPEFT
    masked = True  # the mask: zeros of W as copied in (the sparse float model's)

    def delta_weight(self, rank: int | None = None) -> torch.Tensor:
        return SparsePeftLinear.delta_weight(self, rank)

    def merged_weight(self, rank: int | None = None) -> torch.Tensor:
        return SparsePeftLinear.merged_weight(self, rank)

    def effective_weight(self, rank: int | None = None) -> torch.Tensor:
        """``FQ(W + Lp)`` at ``rank`` through NNCF's quantise-dequantise (as ``asymmetric_quantize_lora`` /
        ``symmetric_quantize_lora`` apply it, with the masked sum in place of ``W + B A``)."""
        from nncf.torch.quantization.quantize_functions import (
            QuantizeAsymmetricTorch,
            QuantizeSymmetricTorch,
            TuneRange,
        )

        merged = self.merged_weight(rank)
        shape = (self.out_features, self.in_features // self.group_size, self.group_size)
        low, high = code_range(self.bits, self.zero_point is None)
        if self.zero_point is None:
            scale = torch.where(self.input_scale.abs() < _NNCF_EPS, _NNCF_EPS, self.input_scale)
            return QuantizeSymmetricTorch.apply(merged, shape, scale, low, high, self.levels)
        input_low, input_range = TuneRange.apply(self.input_low, self.input_range.abs() + _NNCF_EPS, self.levels)
        return QuantizeAsymmetricTorch.apply(merged, shape, input_low, input_range, low, high, self.levels)


# NNCF's quantisers add this to a range before dividing by it.
_NNCF_EPS = 1e-16


def check_dequantized_base(weight: torch.Tensor, quantized: QuantizedWeight, name: str = "") -> None:
    """Refuse a base weight that is not the dequantisation of ``quantized`` (scales of another base)."""
    label = f"module {name!r}" if name else "the base weight"
    if tuple(quantized.codes.shape) != tuple(weight.shape):
        raise ValueError(
            f"{label}: the INT4 codes have shape {list(quantized.codes.shape)} but the weight has "
            f"{list(weight.shape)}; the quantized weights belong to another base model"
        )
    w = weight.detach()
    deq = quantized.dequantize(w.dtype).to(w.device)
    if not torch.equal(w, deq):
        bad = int((w != deq).sum())
        raise ValueError(
            f"{label}: the weight differs from the dequantized INT4 weight at {bad} of {w.numel()} positions; "
            "the scales and zero points belong to another base (load the INT4 base checkpoint they came with)"
        )
    codes = quantize(w, quantized.scale.to(w.device), _to(quantized.zero_point, w.device),
                     quantized.group_size, quantized.bits)  # fmt: skip
    if not torch.equal(codes, quantized.codes.to(device=w.device, dtype=codes.dtype)):
        raise ValueError(
            f"{label}: re-quantising the dequantized weight does not give its INT4 codes back (codes out of "
            f"range for {quantized.bits} bits?); the quantized weights are inconsistent"
        )


def trains_on_float_weights(kind: AdapterKind | str | None, record: Mapping[str, Any] | None) -> bool:
    """Whether an adapter of ``kind`` whose folder records ``record`` (``elastic_lora.json`` or the sub-adapter
    record) trained on the float weights its INT4 base was quantized from: fq_lora / fq_sparsepeft unless it records
    ``base_weight: dequantized`` (built without its float source), qa_sparsepeft when it records
    ``base_weight: float``. Loading or merging it needs those weights again."""
    if kind is None:
        return False
    kind = AdapterKind.parse(kind)
    recorded = (record or {}).get("base_weight")
    if recorded not in (None, "float", "dequantized"):
        raise ValueError(f"base_weight is {recorded!r}; expected 'float' or 'dequantized' (re-create the adapter)")
    if kind.trains_ranges:  # fq_lora folders of older versions record none: they trained on the float weights
        return recorded != "dequantized"
    return kind is AdapterKind.QA_SPARSEPEFT and recorded == "float"


def run_trains_on_float_weights(kind: AdapterKind | str, qa_base_weight: str) -> bool:
    """Whether a run that trains adapters of ``kind`` (its ``qa_base_weight`` setting given) trains them on the
    float weights its INT4 base was quantized from: the FQ kinds always, ``qa_sparsepeft`` when it is "float".
    ``qa_base_weight`` belongs to QA alone: its default ("dequantized") must not turn the FQ kinds off their
    float weights (it did from 2026-12-07 12:00 to this fix: fq_lora runs then trained on the INT4 weights)."""
    kind = AdapterKind.parse(kind)
    return trains_on_float_weights(kind, {"base_weight": qa_base_weight} if kind is AdapterKind.QA_SPARSEPEFT else None)


# Float weights whose own rounding under the base's scales gives other codes than the base's at more than this
# share of positions were not what the codes came from (AWQ rescales weights: 22-92 % of a tiny model's codes
# differ; another model). The float16 scales' boundary cases: 0.1 % at most (RTN, scale estimation).
FLOAT_SOURCE_TOLERANCE = 0.01


def check_float_source(float_weight: torch.Tensor, quantized: QuantizedWeight, name: str = "") -> None:
    """Refuse a float weight the INT4 codes were not quantized from: training through ``FQ(W + update)`` on it
    would start from another model than the INT4 base (at rank 0 it must give the base's codes)."""
    label = f"module {name!r}" if name else "the float weight"
    if tuple(float_weight.shape) != tuple(quantized.codes.shape):
        raise ValueError(
            f"{label}: the float source has shape {list(float_weight.shape)} but the INT4 codes have "
            f"{list(quantized.codes.shape)}; it is not the model the INT4 base was quantized from"
        )
    w = float_weight.detach().float()
    codes = quantize(w, quantized.scale.to(w.device), _to(quantized.zero_point, w.device),
                     quantized.group_size, quantized.bits)  # fmt: skip
    differ = int((codes != quantized.codes.to(device=w.device, dtype=codes.dtype)).sum())
    if differ > FLOAT_SOURCE_TOLERANCE * w.numel():
        raise ValueError(
            f"{label}: the float source rounds to other INT4 codes than the base's at {differ} of {w.numel()} "
            f"positions (more than {FLOAT_SOURCE_TOLERANCE:.1%}): the base was not quantized from these weights "
            "as they are (AWQ rescales the weights it quantizes); train on the dequantized weights "
            "(qa_base_weight 'dequantized') or quantize the base without awq"
        )


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


ADAPTER_LAYERS: dict[AdapterKind, type[ElasticLoraLinear]] = {
    AdapterKind.LORA: ElasticLoraLinear,
    AdapterKind.SPARSEPEFT: SparsePeftLinear,
    AdapterKind.QA_SPARSEPEFT: QASparsePeftLinear,
    AdapterKind.FQ_LORA: FQLoraLinear,
    AdapterKind.FQ_SPARSEPEFT: FQSparsePeftLinear,
}


def create_adapter_layer(
    kind: AdapterKind | str,
    base_layer: nn.Linear,
    max_rank: int,
    alpha: float,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    quantized: QuantizedWeight | None = None,
    name: str = "",
) -> ElasticLoraLinear:
    """The adapter layer of ``kind`` around ``base_layer`` (``quantized``: the base's INT4 weight, qa only)."""
    kind = AdapterKind.parse(kind)
    cls = ADAPTER_LAYERS[kind]
    if kind.int4_trained:
        if quantized is None:
            raise ValueError(f"module {name!r}: a {kind.value} adapter needs the base's quantized weight")
        return cls(base_layer, max_rank, alpha, dropout, generator, quantized=quantized, name=name)
    return cls(base_layer, max_rank, alpha, dropout, generator)
