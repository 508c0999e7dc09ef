"""Reading an exported OpenVINO IR: each MatMul's weight, by the torch module it came from.

The converter names a linear's MatMul ``__module.<module>/aten::linear/MatMul`` (peft's
``.base_layer`` included when an adapter wraps it); :func:`matmul_module` turns that back into the
torch module name. A weight reaches its MatMul through ``Convert`` / ``Reshape`` / ``Transpose`` and,
when compressed, ``Subtract`` (zero point) and ``Multiply`` (scale): :func:`weight_constant` finds the
stored constant, :func:`int4_weight` reads a u4/i4 weight whole (codes, fp16 scales, zero points).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..architecture import in_head
from ..quantization import QuantizedWeight

_PASS_THROUGH = ("Convert", "Reshape", "Transpose")


def matmul_module(op: Any) -> str:
    """The torch module name of a MatMul the converter traced (``.base_layer`` dropped)."""
    return op.get_friendly_name().split("/", 1)[0].removeprefix("__module.").removesuffix(".base_layer")


def matmuls(xml: str | Path) -> Iterator[tuple[str, str, Any]]:
    """``(module name, op name, weight input node)`` of every MatMul in the IR at ``xml``."""
    import openvino as ov

    for op in ov.Core().read_model(str(xml)).get_ops():
        if op.get_type_name() == "MatMul":
            yield matmul_module(op), op.get_friendly_name(), op.input_value(1).get_node()


def unpack_4bit(const: Any) -> np.ndarray:
    """Values of a u4/i4 Constant (two per byte, the first in the low nibble), in its shape."""
    kind = const.get_element_type().get_type_name()
    shape = tuple(const.get_output_shape(0))
    packed = np.asarray(const.get_data()).view(np.uint8).ravel()
    values = np.empty(packed.size * 2, dtype=np.int16)
    values[0::2], values[1::2] = packed & 15, packed >> 4
    values = values[: int(np.prod(shape))]
    if kind == "i4":
        values = np.where(values >= 8, values - 16, values)
    return values.reshape(shape)


def _through(node: Any, kinds: tuple[str, ...] = _PASS_THROUGH) -> Any:
    while node.get_type_name() in kinds:
        node = node.input_value(0).get_node()
    return node


def weight_constant(node: Any) -> Any:
    """The Constant feeding a MatMul's weight input, through Convert/Subtract/Multiply/Reshape chains."""
    for _ in range(9):
        kind = node.get_type_name()
        if kind == "Constant":
            return node
        if kind not in (*_PASS_THROUGH, "Subtract", "Multiply"):
            return None
        node = node.input_value(0).get_node()  # the quantized tensor is the first operand
    return None


def _zero_point_constant(node: Any) -> Any:
    """The zero point of an INT8 weight (the Subtract's second operand), or None when symmetric."""
    while node.get_type_name() not in ("Subtract", "Constant"):
        node = node.input_value(0).get_node()
    return weight_constant(node.input_value(1).get_node()) if node.get_type_name() == "Subtract" else None


@dataclass
class IRQuantizedWeight:
    """The INT4 weight of one MatMul in an IR: element type, codes, fp16 scales, zero points."""

    element_type: str
    codes: np.ndarray  # [out, in]
    scale: np.ndarray  # [out, groups], float16
    zero_point: np.ndarray | None  # [out, groups]

    def zeros(self) -> int:
        """How many weights are exactly zero: a code equal to its group's zero point (0 when symmetric)."""
        if self.zero_point is None:
            return int(np.count_nonzero(self.codes == 0))
        group = self.codes.shape[1] // self.zero_point.shape[1]
        return int(np.count_nonzero(self.codes == np.repeat(self.zero_point, group, axis=1)))


def int4_weight(node: Any) -> IRQuantizedWeight | None:
    """The u4/i4 weight feeding a MatMul (``node``: its weight input), or None if it is not one."""
    mul = _through(node)
    if mul.get_type_name() != "Multiply":
        return None
    a, b = (_through(mul.input_value(i).get_node(), ("Convert",)) for i in range(2))
    scale_node, data = (b, a) if b.get_type_name() == "Constant" else (a, b)
    if scale_node.get_type_name() != "Constant":
        return None
    zp = None
    if data.get_type_name() == "Subtract":
        data, zp = (_through(data.input_value(i).get_node(), ("Convert",)) for i in range(2))
    if data.get_type_name() != "Constant" or data.get_element_type().get_type_name() not in ("u4", "i4"):
        return None
    codes = unpack_4bit(data)
    out = codes.shape[0]
    scale = np.asarray(scale_node.get_data()).astype(np.float16).reshape(out, -1)
    zero = None
    if zp is not None:
        if zp.get_type_name() != "Constant":
            return None
        is4 = zp.get_element_type().get_type_name() in ("u4", "i4")
        zero = (unpack_4bit(zp) if is4 else np.asarray(zp.get_data())).reshape(out, -1)
    return IRQuantizedWeight(data.get_element_type().get_type_name(), codes.reshape(out, -1), scale, zero)


def ir_quantized_codes(xml: str | Path) -> dict[str, IRQuantizedWeight]:
    """``{torch module name: its INT4 weight}`` for every MatMul of the IR whose weight is u4/i4.

    Names are those of :func:`nncf_elastic_lora.int4.load_quantized_weights` (peft's ``.base_layer``
    dropped).
    """
    found: dict[str, IRQuantizedWeight] = {}
    for module, _, node in matmuls(xml):
        weight = int4_weight(node)
        if weight is not None:
            found[module] = weight
    return found


def check_ir_codes(xml: str | Path, qweights: Mapping[str, QuantizedWeight]) -> dict[str, Any]:
    """Raise ValueError unless the IR holds exactly ``qweights`` (codes, scales, zero points).

    Returns a summary: modules checked and the fraction of zero weights (code == zero point) in them.
    """
    ir = ir_quantized_codes(xml)
    missing = sorted(set(qweights) - set(ir))
    if missing:
        raise ValueError(f"{xml} has no INT4 weight for {', '.join(missing[:5])}")
    extra = sorted(set(ir) - set(qweights))
    if extra:
        raise ValueError(
            f"{xml} has INT4 weights for modules the base does not quantize: {', '.join(extra[:5])}"
        )
    zeros = total = 0
    for name in sorted(qweights):
        qw, got = qweights[name], ir[name]
        if got.element_type != ("i4" if qw.sym else "u4"):
            raise ValueError(
                f"{name}: the IR stores {got.element_type} codes, expected {'i4' if qw.sym else 'u4'}"
            )
        if not np.array_equal(got.codes, qw.codes.cpu().numpy()):
            raise ValueError(f"{name}: the IR's codes differ from the base's")
        if not np.array_equal(
            got.scale.view(np.int16), qw.scale.cpu().to(torch.float16).numpy().view(np.int16)
        ):
            raise ValueError(f"{name}: the IR's scales differ from the base's")
        if (got.zero_point is None) != qw.sym or (
            got.zero_point is not None and not np.array_equal(got.zero_point, qw.zero_point.cpu().numpy())
        ):
            raise ValueError(f"{name}: the IR's zero points differ from the base's")
        zeros += got.zeros()
        total += got.codes.size
    return {"modules": len(qweights), "int4_sparsity": zeros / total if total else None}


def ir_weight_sparsity(
    xml: str | Path, head_names: set[str] | frozenset[str] = frozenset({"lm_head"})
) -> float | None:
    """Fraction of zero weights over the IR's MatMul weights as stored (head and adapters excluded).

    A zero weight stays zero through INT8 compression (it is stored as the zero point), so this
    shows whether a sparse base is still sparse in the deployed IR. In an INT8 IR it also counts
    weights smaller than half a quantization step, which round to zero (about 1 % of a dense
    SmolLM2); in an INT4 IR a zero is a code equal to its group's zero point (0 when symmetric).
    None for weight types it cannot read (nf4). ``head_names``: the torch module names of the output head
    (:func:`~nncf_elastic_lora.architecture.output_head_names`).
    """
    zeros = total = 0
    for module, op_name, weight in matmuls(xml):
        if in_head(module, head_names) or "lora_" in op_name:
            continue
        const = weight_constant(weight)
        if const is None:
            continue
        element = const.get_element_type().get_type_name()
        if element in ("u4", "i4"):
            int4 = int4_weight(weight)
            if int4 is None:
                return None
            zeros += int4.zeros()
            total += int4.codes.size
            continue
        if element == "nf4":
            return None
        data = const.get_data()
        zp = _zero_point_constant(weight) if element in ("u8", "i8") else None
        if zp is not None:  # dequantized zero: the value equals the zero point
            zeros += int(np.count_nonzero(data.astype(np.int32) == np.asarray(zp.get_data()).astype(np.int32)))
        else:
            zeros += int(np.count_nonzero(data == 0))
        total += data.size
    return zeros / total if total else None


def ir_runtime_options(xml: str | Path) -> dict[str, str]:
    """The runtime options the IR carries in its ``rt_info`` (``KV_CACHE_PRECISION``, ``ACTIVATIONS_SCALE_FACTOR``,
    ...): OpenVINO compiles it with them unless the caller's properties say otherwise, so two IRs compared under
    the same properties still run differently when these differ."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    if not model.has_rt_info("runtime_options"):
        return {}
    return {str(k): str(v) for k, v in model.get_rt_info("runtime_options").value.items()}
