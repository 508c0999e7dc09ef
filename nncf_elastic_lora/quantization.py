"""Integer weight quantisation with frozen scales and zero points (INT4 bases, QA-SparsePEFT).

The convention is NNCF's, so that codes computed here are the codes NNCF's decompressors and the
OpenVINO IR hold: weights are split into groups of ``group_size`` consecutive input channels;
asymmetric codes lie in ``[0, 2ⁿ−1]`` with an integer zero point per group, symmetric codes in
``[−2ⁿ⁻¹, 2ⁿ⁻¹−1]`` without one; scales are stored in float16 and dequantisation
``(q − z) · s`` is computed in float16, as NNCF's torch decompressor and the IR compute it.

A weight that is exactly zero quantises to ``z`` and dequantises to exactly zero, so a sparse
base stays sparse through quantisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """The integer codes, float16 scales and (asymmetric) zero points of one linear weight.

    ``codes``: ``[out, in]``, int8 when symmetric, uint8 otherwise (:func:`code_dtype`: one byte
    per weight, so an 8 B model's codes are 8 GB, not 16); ``scale`` and ``zero_point``:
    ``[out, in // group_size]``. Arithmetic on codes goes through float16 (:func:`dequantize`):
    subtracting uint8 zero points from uint8 codes would wrap.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    group_size: int
    bits: int = 4
    # The float weight the codes were rounded from, where a caller loaded it (FQ-LoRA quantises it plus
    # the update, as NNCF's FQ_LORA does); None for an INT4 base read on its own.
    float_weight: torch.Tensor | None = None

    @property
    def sym(self) -> bool:
        return self.zero_point is None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero_point, self.group_size).to(dtype)


def code_range(bits: int, sym: bool) -> tuple[int, int]:
    """The lowest and highest integer code."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)


def code_dtype(bits: int, sym: bool) -> torch.dtype:
    """The smallest integer dtype holding every code: int8 (symmetric) or uint8 (asymmetric), to 8 bits."""
    if not 2 <= bits <= 8:
        raise ValueError(f"codes of {bits} bits are not supported; use 2 to 8 bits")
    return torch.int8 if sym else torch.uint8


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    out, inp = w.shape
    if inp % group_size:
        raise ValueError(f"input width {inp} is not a multiple of the group size {group_size}")
    return w.reshape(out, inp // group_size, group_size)


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, group_size: int, bits: int = 4
) -> torch.Tensor:
    """Codes of ``w`` under frozen ``scale``/``zero_point``: ``clamp(round(w / s) + z)``, in :func:`code_dtype`.

    ``torch.round`` rounds halves to even, as OpenVINO's and NNCF's quantisers do.
    """
    low, high = code_range(bits, zero_point is None)
    g = _grouped(w.float(), group_size)
    q = torch.round(g / scale.float().unsqueeze(-1))
    if zero_point is not None:
        q = q + zero_point.float().unsqueeze(-1)
    return q.clamp(low, high).reshape(w.shape).to(code_dtype(bits, zero_point is None))


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, group_size: int
) -> torch.Tensor:
    """``(q − z) · s`` computed in float16 (NNCF's and the IR's decompression), shaped like ``codes``."""
    s = scale.to(torch.float16).unsqueeze(-1)
    q = _grouped(codes, group_size).to(torch.float16)
    if zero_point is not None:
        q = q - zero_point.to(torch.float16).unsqueeze(-1)
    return (q * s).reshape(codes.shape)


class _FakeQuantize(torch.autograd.Function):
    """Quantise-dequantise in the forward pass; the identity in the backward (straight-through)."""

    @staticmethod
    def forward(ctx, w, scale, zero_point, group_size, bits):  # noqa: ANN001
        codes = quantize(w, scale, zero_point, group_size, bits)
        return dequantize(codes, scale, zero_point, group_size).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        return grad, None, None, None, None


def fake_quantize(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, group_size: int, bits: int = 4
) -> torch.Tensor:
    """``dequantize(quantize(w))`` with a straight-through gradient to ``w``; scales stay frozen."""
    return _FakeQuantize.apply(w, scale, zero_point, group_size, bits)


def scales_fingerprint(qweights: Mapping[str, QuantizedWeight]) -> str:
    """SHA-256 over every module's name, scales and zero points, in sorted module order."""
    h = hashlib.sha256()
    for name in sorted(qweights):
        qw = qweights[name]
        h.update(name.encode() + b"\0")
        scale = qw.scale.detach().to(torch.float16).contiguous().cpu()
        h.update(str(tuple(scale.shape)).encode())
        h.update(scale.view(torch.int16).numpy().astype("<i2").tobytes())
        if qw.zero_point is not None:
            h.update(qw.zero_point.detach().to(torch.uint8).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
