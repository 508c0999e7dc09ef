"""INT4 bases through NNCF: quantize a torch model's linears, and put the codes back for export.

An INT4 base (SQFT's quantized base) is made by ``nncf.compress_weights`` on the torch model;
its codes, fp16 scales and zero points are read out of NNCF's decompressors into
:class:`~nncf_elastic_lora.quantization.QuantizedWeight` s, and the model goes back to plain
``nn.Linear`` s holding the dequantized values, so training and peft see an ordinary model whose
function is exactly the INT4 model's. On disk an INT4 base is an ordinary Hugging Face checkpoint
(the dequantized float32 weights) plus ``quantized_weights.safetensors`` and ``quantization.json``.
The export puts NNCF's INT4 decompressors back on the torch model, holding *our* codes, and lets
optimum-intel trace it: the IR's u4/i4 constants are those codes, never a re-quantization.

Rounding between torch and OpenVINO. NNCF computes codes as ``round(w / s + z)`` in float32,
halves to even; since it computes them with compiled OpenVINO models (openvinotoolkit/nncf#2727) it
marks those divisions "non-convertable", as OpenVINO would rewrite ``a / b`` into ``a * (1 / b)``,
whose last bit differs and flips codes at a rounding boundary, and #3210 (commit 73590b057) removed
the last ``a * (1 / b)`` (in scale estimation) so numpy, torch and OpenVINO round alike (#3493,
0d42595ed, likewise casts to float32 inside FQ+LoRA). Our route never quantizes at run time: the IR
holds the codes and decompresses ``(q - z) * s``; measured here, OpenVINO's CPU plugin computes that
product in f32, where it is exact (a 4-bit integer times an fp16 scale), while NNCF's torch
decompressor and :func:`~nncf_elastic_lora.quantization.dequantize` round it to fp16, so IR and
torch weights differ by at most half an fp16 ulp (tests compare with an exact-product model, and
with ``DYNAMIC_QUANTIZATION_GROUP_SIZE=0``: by default the CPU plugin also quantizes activations to
int8 for INT4 matmuls, even under ``INFERENCE_PRECISION_HINT=f32``).

:func:`~nncf_elastic_lora.quantization.quantize` (QA-SparsePEFT's frozen-scale quantizer) rounds
``round(w / s) + z``, which differs from NNCF's ``round(w / s + z)`` only where adding ``z`` in
float32 lands on a half (2 codes in 1.2M here); and NNCF derives codes with its float32 scale but
stores the scale in fp16, so re-quantizing the *original* weights with the stored scales changes
about 0.05 % of codes. Re-quantizing the dequantized base gives its codes back exactly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ..architecture import in_head, output_head_names
from ..patterns import find_linears
from ..quantization import QuantizedWeight, code_dtype
from .checkpoint import QuantizedBaseError, check_codes_match_weights, linear_module

log = logging.getLogger(__name__)

MIN_ADJUSTED_GROUP_SIZE = 32  # NNCF's AdvancedCompressionParameters.min_adjusted_group_size
FALLBACKS = ("error", "adjust", "ignore")


# ----------------------------------------------------------------------------------------------
# Which linears, which group sizes
# ----------------------------------------------------------------------------------------------


def _target_linears(model: torch.nn.Module, target_modules: list[str]) -> dict[str, torch.nn.Linear]:
    if any("lora_" in name for name, _ in model.named_modules()):
        raise ValueError("quantize the base before attaching adapters: the model holds LoRA modules")
    targets = find_linears(model, target_modules)
    heads = output_head_names(model)
    for name in targets:
        if in_head(name, heads):
            raise ValueError(
                f"target module {name!r} is the output head; an INT4 base quantizes decoder linears only "
                "(the head, often tied to the embeddings, stays as it is): narrow target_modules"
            )
    if not targets:
        raise ValueError(f"target_modules {target_modules} match no linear layer")
    return targets


def adjusted_group_size(width: int, group_size: int) -> int | None:
    """NNCF's ADJUST fallback: the largest power of two dividing ``width``, below ``group_size``, >= 32."""
    g = width & (-width)
    return g if MIN_ADJUSTED_GROUP_SIZE <= g < group_size else None


def plan_group_sizes(
    targets: Mapping[str, torch.nn.Linear], group_size: int, fallback: str = "adjust"
) -> dict[str, int | None]:
    """The group size each target gets (None: left unquantized), as NNCF will choose it.

    ``group_size`` -1 means one group per output row. ``fallback`` for a layer whose input width is
    not a multiple of ``group_size``: "error" (ValueError naming it), "adjust" (NNCF's largest valid
    group size >= 32, else unquantized), "ignore" (unquantized).
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"group_size_fallback must be one of {FALLBACKS}, got {fallback!r}")
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be positive (or -1 for per-channel), got {group_size}")
    plan: dict[str, int | None] = {}
    for name, linear in targets.items():
        width = linear.in_features
        if group_size == -1:
            plan[name] = width
        elif width % group_size == 0:
            plan[name] = group_size
        elif fallback == "error":
            raise ValueError(
                f"{name} has {width} input channels, not a multiple of group_size {group_size}; use "
                "group_size_fallback 'adjust' or 'ignore', or a group size that divides every target's width"
            )
        else:
            plan[name] = adjusted_group_size(width, group_size) if fallback == "adjust" else None
    return plan


# ----------------------------------------------------------------------------------------------
# NNCF's hooks on a torch model: wrap, read decompressors, unwrap
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _nncf_wrapped(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model wrapped by NNCF's function hooks; afterwards plain again (forward, hooks removed)."""
    from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE, is_wrapped, wrap_model

    if is_wrapped(model):
        raise ValueError("the model is already wrapped by NNCF; give a plain torch model")
    saved = {k: model.__dict__[k] for k in ("forward", "_replicate_for_data_parallel") if k in model.__dict__}
    wrap_model(model)
    try:
        yield model
    finally:
        for key in ("forward", "_replicate_for_data_parallel"):
            model.__dict__.pop(key, None)
        model.__dict__.update(saved)
        model._modules.pop(ATR_HOOK_STORAGE, None)


def _decompressor_weights(decompressor: Any, packed: torch.Tensor) -> QuantizedWeight:
    """Codes, scales, zero points of one of NNCF's INT4 decompressors and its packed weight."""
    from nncf.torch.quantization.layers import (
        INT4AsymmetricWeightsDecompressor,
        INT4SymmetricWeightsDecompressor,
    )
    from nncf.torch.quantization.quantize_functions import unpack_int4, unpack_uint4

    out, width = decompressor.result_shape
    if isinstance(decompressor, INT4AsymmetricWeightsDecompressor):
        codes = unpack_uint4(packed).reshape(decompressor.compressed_weight_shape)
        zp = unpack_uint4(decompressor._zero_point).reshape(decompressor.zero_point_shape)
    elif isinstance(decompressor, INT4SymmetricWeightsDecompressor):
        codes, zp = unpack_int4(packed).reshape(decompressor.compressed_weight_shape), None
    else:
        raise TypeError(f"not an INT4 decompressor: {type(decompressor).__name__}")
    scale = decompressor._scale.detach().reshape(out, -1).to(torch.float16).clone()
    groups = scale.shape[1]
    return QuantizedWeight(
        codes=codes.reshape(out, width).to(code_dtype(4, zp is None)),
        scale=scale,
        zero_point=None if zp is None else zp.reshape(out, groups).to(torch.uint8),
        group_size=width // groups,
    )


def _make_decompressor(qw: QuantizedWeight, dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
    """NNCF's INT4 decompressor holding ``qw``'s scales (and zero points), and ``qw``'s packed codes."""
    from nncf.torch.quantization.layers import (
        INT4AsymmetricWeightsDecompressor,
        INT4SymmetricWeightsDecompressor,
    )

    out, width = qw.codes.shape
    groups = width // qw.group_size
    shape = (out, groups, qw.group_size)
    if qw.codes.numel() % 2 or (qw.zero_point is not None and qw.zero_point.numel() % 2):
        raise ValueError(
            f"INT4 packing needs an even number of codes and zero points, got shape {tuple(shape)}"
        )
    scale = qw.scale.reshape(out, groups, 1)
    if qw.sym:
        dec = INT4SymmetricWeightsDecompressor(scale, shape, result_shape=(out, width), result_dtype=dtype)
        packed = dec.pack_weight(qw.codes.reshape(shape).to(torch.int8))
    else:
        zp = qw.zero_point.reshape(out, groups, 1).to(torch.uint8)
        dec = INT4AsymmetricWeightsDecompressor(
            scale, zp, shape, result_shape=(out, width), result_dtype=dtype
        )
        packed = dec.pack_weight(qw.codes.reshape(shape).to(torch.uint8))
    return dec, packed


def _param_name(model: torch.nn.Module, param: torch.nn.Parameter) -> str:
    for name, p in model.named_parameters(remove_duplicate=False):
        if p is param:
            return name
    raise QuantizedBaseError("a quantized weight is not a parameter of the model")


# ----------------------------------------------------------------------------------------------
# quantize_base
# ----------------------------------------------------------------------------------------------


def _ignored_nodes(graph: Any, targets: set[str]) -> tuple[list[str], set[str]]:
    """Graph nodes that read a weight of a non-target module (ignored), and the targets found."""
    from nncf.common.graph.layer_attributes import ConstantLayerAttributes

    ignored, found = [], set()
    for node in graph.get_all_nodes():
        for edge in graph.get_input_edges(node):
            attrs = edge.from_node.layer_attributes
            if not isinstance(attrs, ConstantLayerAttributes) or not attrs.name.endswith(".weight"):
                continue
            module = attrs.name.removesuffix(".weight")
            if module in targets:
                found.add(module)
            elif node.node_name not in ignored:
                ignored.append(node.node_name)  # embeddings, head, norms, linears left out
    return ignored, found


def _calibration_dataset(
    texts: list[str], tokenizer: Any, device: torch.device, max_length: int
) -> list[dict]:
    items = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
        items.append({k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
    return items


@contextlib.contextmanager
def _nncf_quiet(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        nncf_logger.setLevel(level)


def _check_quantize_args(
    *, gptq: bool, awq: bool, scale_estimation: bool, calibration: list[str] | None, tokenizer: Any
) -> None:
    """Refuse option combinations NNCF's torch backend cannot run, before the model is touched."""
    if gptq:
        raise ValueError(
            "GPTQ is not available for torch models in NNCF 3.4 (its torch backend rejects gptq and "
            "lora_correction; they run on OpenVINO models only): use awq and/or scale_estimation"
        )
    if scale_estimation and not calibration:
        raise ValueError("scale_estimation is data-aware: give calibration texts (and their tokenizer)")
    if calibration and not (awq or scale_estimation):
        raise ValueError(
            "calibration texts are used only by awq or scale_estimation; enable one or drop them"
        )
    if calibration and tokenizer is None:
        raise ValueError("calibration texts need the tokenizer to turn them into model inputs")


def _quantizable(plan: Mapping[str, int | None], group_size: int, group_size_fallback: str) -> set[str]:
    """The planned targets that get a group size; logs those left unquantized."""
    left_out = sorted(n for n, g in plan.items() if g is None)
    if left_out:
        log.warning(
            "%d target layer(s) stay unquantized: their input width has no valid group size (group_size %d, "
            "fallback %s): %s",
            len(left_out), group_size, group_size_fallback, ", ".join(left_out),
        )  # fmt: skip
    return {n for n, g in plan.items() if g is not None}


def _calibration_inputs(
    calibration: list[str] | None, tokenizer: Any, device: torch.device, max_length: int
) -> tuple[dict, Any]:
    """``(example input for tracing, nncf.Dataset or None)``: the first calibration text, or a few ids."""
    import nncf

    if calibration:
        items = _calibration_dataset(list(calibration), tokenizer, device, max_length)
        return items[0], nncf.Dataset(items)
    return {"input_ids": torch.tensor([[1, 2, 3, 4]], device=device)}, None


def _compress_wrapped(
    model: torch.nn.Module,
    to_quantize: set[str],
    *,
    example: dict,
    dataset: Any,
    sym: bool,
    group_size: int,
    group_size_fallback: str,
    calibration: list[str] | None,
    awq: bool,
    scale_estimation: bool,
    progress: bool,
) -> None:
    """Run ``nncf.compress_weights`` on the (NNCF-wrapped) ``model``: only ``to_quantize`` is compressed."""
    import nncf
    from nncf.torch import wrap_model as nncf_wrap_model

    wrapper = nncf_wrap_model(model, example_input=example, trace_parameters=True)
    ignored, found = _ignored_nodes(wrapper.get_graph(), to_quantize)
    missing = sorted(to_quantize - found)
    if missing:
        raise ValueError(f"target module(s) not used in the model's forward pass: {', '.join(missing)}")
    fallback_mode = {
        "error": nncf.GroupSizeFallbackMode.ERROR,
        "adjust": nncf.GroupSizeFallbackMode.ADJUST,
        "ignore": nncf.GroupSizeFallbackMode.IGNORE,
    }[group_size_fallback]
    with _nncf_quiet(not progress):
        nncf.compress_weights(
            wrapper,
            mode=nncf.CompressWeightsMode.INT4_SYM if sym else nncf.CompressWeightsMode.INT4_ASYM,
            ratio=1.0,
            group_size=group_size,
            all_layers=True,  # heads and embeddings are in the ignored scope, never compressed
            backup_mode=nncf.BackupMode.NONE,  # a layer without a valid group size stays float
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
            dataset=dataset,
            subset_size=len(calibration) if calibration else 128,
            awq=awq or None,
            scale_estimation=scale_estimation or None,
            advanced_parameters=nncf.AdvancedCompressionParameters(
                group_size_fallback_mode=fallback_mode, min_adjusted_group_size=MIN_ADJUSTED_GROUP_SIZE
            ),
        )


def _verified_weight(
    module: str,
    decompressor: Any,
    param: torch.nn.Parameter,
    zero_mask: np.ndarray,
    planned: int | None,
    storage: torch.Tensor | None = None,
) -> QuantizedWeight:
    """``module``'s codes from its decompressor, checked: NNCF's value, zeros kept, the planned group size."""
    qw = _decompressor_weights(decompressor, param.data)
    nncf_value = decompressor(param.data)
    ours = qw.dequantize(nncf_value.dtype)
    if not torch.equal(ours, nncf_value):
        raise RuntimeError(f"{module}: dequantized codes differ from NNCF's decompressed weight")
    zeros = torch.from_numpy(np.unpackbits(zero_mask)[: ours.numel()].astype(bool))
    zeros = zeros.reshape(ours.shape).to(ours.device)
    if bool((ours[zeros] != 0).any()):
        raise RuntimeError(f"{module}: a weight that was exactly zero is not zero after quantization")
    if planned != qw.group_size:
        raise RuntimeError(f"{module}: NNCF chose group size {qw.group_size}, expected {planned}")
    if storage is not None and storage.shape == ours.shape and storage.dtype == ours.dtype:
        # Back into the float weight's own storage: a new tensor would leave the loaded one resident
        # beside it (a checkpoint is often a mapped file), about one more model in memory.
        storage.copy_(ours)
        ours = storage
    param.data = ours
    return qw


def _read_back_decompressors(
    model: torch.nn.Module,
    to_quantize: set[str],
    plan: Mapping[str, int | None],
    zero_masks: Mapping[str, np.ndarray],
    storages: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, QuantizedWeight]:
    """Each compressed target's codes (its weight set to their value), then NNCF's hooks removed."""
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseWeightsDecompressor

    storage = get_hook_storage(model)
    hooks = list(storage.named_hooks())
    strangers = [n for n, h in hooks if not isinstance(h, BaseWeightsDecompressor)]
    if strangers:
        raise QuantizedBaseError(
            "NNCF inserted operations a plain checkpoint cannot hold (AWQ's activation scales, say): "
            f"{', '.join(strangers)}; quantize without awq or leave those layers out"
        )
    params = dict(model.named_parameters())
    qweights: dict[str, QuantizedWeight] = {}
    for hook_name, decompressor in hooks:
        _, op_name, _ = decode_hook_name(hook_name)
        module = op_name.removesuffix(".weight")
        if module not in to_quantize:
            raise RuntimeError(f"NNCF compressed {op_name}, which is not a target")
        qweights[module] = _verified_weight(
            module, decompressor, params[op_name], zero_masks[module], plan[module], (storages or {}).get(module)
        )
    for hook_name, _ in hooks:
        storage.delete_hook(hook_name)
    return qweights


@torch.no_grad()
def quantize_base(
    model: torch.nn.Module,
    *,
    target_modules: list[str],
    group_size: int,
    sym: bool = False,
    group_size_fallback: str = "adjust",
    calibration: list[str] | None = None,
    tokenizer: Any = None,
    awq: bool = False,
    scale_estimation: bool = False,
    gptq: bool = False,
    max_length: int = 512,
    progress: bool = True,
) -> dict[str, QuantizedWeight]:
    """Quantize ``model``'s target linears to INT4 with ``nncf.compress_weights``, in place.

    Returns the codes, fp16 scales and zero points of each quantized module; the model is left a
    plain model whose target weights hold the dequantized values (bitwise what NNCF's compressed
    model computes), so it trains, saves and loads like any other. Every weight that was exactly
    zero stays exactly zero (checked). Targets that cannot be quantized at their width
    (``group_size_fallback`` "adjust" without a valid group size, or "ignore") keep their weights
    and are missing from the result (logged).

    Data-free by default (round to nearest with NNCF's min/max scales). NNCF 3.4's torch backend
    also runs AWQ (data-free, or data-aware on ``calibration`` texts) and scale estimation (needs
    ``calibration`` and ``tokenizer``); GPTQ and LoRA correction are OpenVINO-model-only there.
    AWQ may also rescale the float weights of a linear that feeds a target (the up projection
    before a down projection), as NNCF folds its scales there. On an error before NNCF runs the
    model is untouched; an error afterwards leaves it in an undefined state. ``progress=False``
    silences NNCF's log tables (its rich progress bars have no switch). ``max_length`` truncates
    each calibration text.
    """
    _check_quantize_args(
        gptq=gptq, awq=awq, scale_estimation=scale_estimation, calibration=calibration, tokenizer=tokenizer
    )
    targets = _target_linears(model, target_modules)
    plan = plan_group_sizes(targets, group_size, group_size_fallback)
    to_quantize = _quantizable(plan, group_size, group_size_fallback)
    if not to_quantize:
        log.warning("no target layer can be quantized; the model is unchanged")
        return {}
    device = next(model.parameters()).device
    zero_masks = {n: np.packbits((targets[n].weight == 0).cpu().numpy()) for n in to_quantize}
    storages = {n: targets[n].weight.data for n in to_quantize}  # NNCF swaps them for packed codes
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    example, dataset = _calibration_inputs(calibration, tokenizer, device, max_length)
    with _nncf_wrapped(model):
        _compress_wrapped(
            model,
            to_quantize,
            example=example,
            dataset=dataset,
            sym=sym,
            group_size=group_size,
            group_size_fallback=group_size_fallback,
            calibration=calibration,
            awq=awq,
            scale_estimation=scale_estimation,
            progress=progress,
        )
        qweights = _read_back_decompressors(model, to_quantize, plan, zero_masks, storages)
    del storages
    for name, p in model.named_parameters():
        p.requires_grad_(requires_grad.get(name, p.requires_grad))
    model.train(was_training)
    not_done = sorted(to_quantize - set(qweights))
    if not_done:
        raise RuntimeError(f"NNCF left target layer(s) uncompressed: {', '.join(not_done)}")
    adjusted = {n: qw.group_size for n, qw in qweights.items() if qw.group_size != group_size}
    if adjusted and group_size != -1:
        log.info("group size adjusted for %d layer(s): %s", len(adjusted), adjusted)
    return dict(sorted(qweights.items()))


# ----------------------------------------------------------------------------------------------
# Exact codes on the torch model (for export)
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def exact_int4_weights(
    model: torch.nn.Module, qweights: Mapping[str, QuantizedWeight]
) -> Iterator[torch.nn.Module]:
    """Within the block, each quantized weight is NNCF's INT4 decompressor holding exactly ``qweights``.

    This is the form ``nncf.compress_weights`` (or ``nncf.strip(..., StripFormat.DQ)``) leaves a torch
    model in, which optimum-intel's ``export_from_model`` traces into u4/i4 constants with fp16 scales;
    the codes are ours, not a re-quantization. A peft adapter's ``lora_A``/``lora_B`` stay float.
    Afterwards the model is restored (its dequantized float weights, no hooks).
    """
    from nncf.torch.function_hook import register_post_function_hook

    check_codes_match_weights(model, qweights)
    target = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    saved: list[tuple[torch.nn.Parameter, torch.Tensor, bool]] = []
    with _nncf_wrapped(target):
        try:
            for name in sorted(qweights):
                weight = linear_module(target, name).weight
                decompressor, packed = _make_decompressor(qweights[name], weight.dtype)
                decompressor.to(weight.device)
                register_post_function_hook(target, _param_name(target, weight), 0, decompressor)
                saved.append((weight, weight.data, weight.requires_grad))
                weight.requires_grad_(False)
                weight.data = packed.to(weight.device)
            yield model
        finally:
            for weight, data, grad in saved:
                weight.data = data
                weight.requires_grad_(grad)
