"""INT4 bases through NNCF, their on-disk format, and OpenVINO IRs that hold exactly their codes.

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
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .quantization import QuantizedWeight, code_range

log = logging.getLogger(__name__)

FORMAT = "nncf-elastic-lora-int4"
FORMAT_VERSION = 1
QUANTIZED_WEIGHTS = "quantized_weights.safetensors"
QUANTIZATION_JSON = "quantization.json"
MIN_ADJUSTED_GROUP_SIZE = 32  # NNCF's AdvancedCompressionParameters.min_adjusted_group_size
FALLBACKS = ("error", "adjust", "ignore")
_CORE_KEYS = {"format", "format_version", "bits", "group_size", "sym", "mode", "modules", "group_sizes",
              "nncf_version", "scales_sha256"}  # fmt: skip


class QuantizedBaseError(ValueError):
    """An INT4 base on disk is missing a file, is corrupt, or does not match its weights."""


# ----------------------------------------------------------------------------------------------
# Which linears, which group sizes
# ----------------------------------------------------------------------------------------------


def _target_linears(model: torch.nn.Module, target_modules: list[str]) -> dict[str, torch.nn.Linear]:
    from .architecture import in_head, output_head_names
    from .patterns import find_linears

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
        codes=codes.reshape(out, width).to(torch.int16),
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


def _linear(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    """The ``nn.Linear`` called ``name`` in ``model``: peft's ``base_layer`` when an adapter wraps it."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):  # a PeftModel: module names are those of the wrapped model
        model = get_base()
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise QuantizedBaseError(f"the model has no module {name!r}") from None
    module = getattr(module, "base_layer", module)
    if not isinstance(module, torch.nn.Linear):
        raise QuantizedBaseError(f"{name} is a {type(module).__name__}, not a linear layer")
    return module


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
    import nncf
    from nncf.torch import wrap_model as nncf_wrap_model
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseWeightsDecompressor

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
    targets = _target_linears(model, target_modules)
    plan = plan_group_sizes(targets, group_size, group_size_fallback)
    left_out = sorted(n for n, g in plan.items() if g is None)
    if left_out:
        log.warning(
            "%d target layer(s) stay unquantized: their input width has no valid group size (group_size %d, "
            "fallback %s): %s",
            len(left_out), group_size, group_size_fallback, ", ".join(left_out),
        )  # fmt: skip
    to_quantize = {n for n, g in plan.items() if g is not None}
    if not to_quantize:
        log.warning("no target layer can be quantized; the model is unchanged")
        return {}
    device = next(model.parameters()).device
    zero_masks = {n: np.packbits((targets[n].weight == 0).cpu().numpy()) for n in to_quantize}
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    dataset = None
    if calibration:
        items = _calibration_dataset(list(calibration), tokenizer, device, max_length)
        example = items[0]
        dataset = nncf.Dataset(items)
    else:
        example = {"input_ids": torch.tensor([[1, 2, 3, 4]], device=device)}

    with _nncf_wrapped(model):
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
            param = params[op_name]
            qw = _decompressor_weights(decompressor, param.data)
            nncf_value = decompressor(param.data)
            ours = qw.dequantize(nncf_value.dtype)
            if not torch.equal(ours, nncf_value):
                raise RuntimeError(f"{module}: dequantized codes differ from NNCF's decompressed weight")
            zeros = torch.from_numpy(np.unpackbits(zero_masks[module])[: ours.numel()].astype(bool))
            zeros = zeros.reshape(ours.shape).to(ours.device)
            if bool((ours[zeros] != 0).any()):
                raise RuntimeError(f"{module}: a weight that was exactly zero is not zero after quantization")
            if plan[module] != qw.group_size:
                raise RuntimeError(
                    f"{module}: NNCF chose group size {qw.group_size}, expected {plan[module]}"
                )
            param.data = ours
            qweights[module] = qw
        for hook_name, _ in hooks:
            storage.delete_hook(hook_name)
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
# On-disk format
# ----------------------------------------------------------------------------------------------


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


def _mode(sym: bool) -> str:
    return "int4_sym" if sym else "int4_asym"


def save_quantized_weights(
    directory: str | Path, qweights: Mapping[str, QuantizedWeight], meta: dict[str, Any] | None = None
) -> None:
    """Write ``quantized_weights.safetensors`` and ``quantization.json`` into an existing ``directory``.

    The caller writes the HF checkpoint (the dequantized weights) into the same directory, e.g.
    inside :func:`~nncf_elastic_lora.reports.atomic_directory`. ``meta`` adds fields (method,
    awq, calibration...) to ``quantization.json``; it may not redefine the format's own fields.
    """
    import nncf
    from safetensors.torch import save_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; create it (and the HF checkpoint) first")
    if not qweights:
        raise ValueError("no quantized weights to save")
    clash = sorted(_CORE_KEYS & set(meta or {}))
    if clash:
        raise ValueError(f"meta may not redefine quantization.json's own fields: {', '.join(clash)}")
    syms = {qw.sym for qw in qweights.values()}
    bits = {qw.bits for qw in qweights.values()}
    if len(syms) != 1 or bits != {4}:
        raise ValueError("an INT4 base is all symmetric or all asymmetric, with 4-bit codes")
    sym = syms.pop()
    sizes = [qw.group_size for qw in qweights.values()]
    group_size = max(set(sizes), key=sizes.count)
    low, high = code_range(4, sym)
    tensors: dict[str, torch.Tensor] = {}
    for name, qw in sorted(qweights.items()):
        codes = qw.codes.detach().cpu()
        if int(codes.min()) < low or int(codes.max()) > high:
            raise ValueError(f"{name}: codes outside [{low}, {high}]")
        _check_shapes(name, qw, QUANTIZED_WEIGHTS)
        tensors[f"{name}.codes"] = codes.to(torch.int8 if sym else torch.uint8).contiguous()
        tensors[f"{name}.scale"] = qw.scale.detach().cpu().to(torch.float16).contiguous()
        if not sym:
            tensors[f"{name}.zero_point"] = qw.zero_point.detach().cpu().to(torch.uint8).contiguous()
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bits": 4,
        "group_size": group_size,
        "sym": sym,
        "mode": _mode(sym),
        "modules": sorted(qweights),
        "group_sizes": {
            n: qw.group_size for n, qw in sorted(qweights.items()) if qw.group_size != group_size
        },
        "nncf_version": nncf.__version__,
        "scales_sha256": scales_fingerprint(qweights),
        **(meta or {}),
    }
    save_file(tensors, str(directory / QUANTIZED_WEIGHTS), metadata={"format": FORMAT})
    (directory / QUANTIZATION_JSON).write_text(json.dumps(info, indent=2) + "\n")


def save_quantized_base(
    directory: str | Path,
    model: Any,
    qweights: Mapping[str, QuantizedWeight],
    tokenizer: Any = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """An INT4 base directory: the HF checkpoint of ``model`` (dequantized weights), ``tokenizer``,
    and the two INT4 files; checks first that the model's weights are the codes' values."""
    check_codes_match_weights(model, qweights)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    save_quantized_weights(directory, qweights, meta)


def is_quantized_base(directory: str | Path) -> bool:
    """Whether ``directory`` holds an INT4 base (``quantization.json`` or ``quantized_weights.safetensors``).

    Either file is enough, so that a base missing the other one is reported by
    :func:`load_quantized_weights` rather than taken for a float checkpoint.
    """
    directory = Path(directory)
    return (directory / QUANTIZATION_JSON).is_file() or (directory / QUANTIZED_WEIGHTS).is_file()


def read_quantization_info(directory: str | Path) -> dict[str, Any]:
    """``quantization.json`` of an INT4 base, checked for the format's fields."""
    path = Path(directory) / QUANTIZATION_JSON
    if not path.is_file():
        raise QuantizedBaseError(f"{path} is missing: {Path(directory)} is not a complete INT4 base")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantizedBaseError(f"{path} is not valid JSON ({exc}); re-create the INT4 base") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise QuantizedBaseError(f"{path}: format is {got!r}, expected {FORMAT!r}")
    problems = []
    if info.get("bits") != 4:
        problems.append(f"bits is {info.get('bits')!r}, expected 4")
    if not isinstance(info.get("sym"), bool):
        problems.append(f"sym is {info.get('sym')!r}, expected true or false")
    if not isinstance(info.get("group_size"), int) or info["group_size"] <= 0:
        problems.append(f"group_size is {info.get('group_size')!r}, expected a positive integer")
    modules = info.get("modules")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        problems.append("modules must be a non-empty list of module names")
    if not isinstance(info.get("group_sizes", {}), dict):
        problems.append("group_sizes must map module names to group sizes")
    if problems:
        raise QuantizedBaseError(f"{path} is inconsistent: " + "; ".join(problems))
    return info


def _check_shapes(name: str, qw: QuantizedWeight, where: str) -> None:
    out, width = qw.codes.shape if qw.codes.dim() == 2 else (None, None)
    problems = []
    if out is None:
        problems.append(f"codes have shape {list(qw.codes.shape)}, expected [out, in]")
    elif qw.group_size <= 0 or width % qw.group_size:
        problems.append(f"input width {width} is not a multiple of group size {qw.group_size}")
    else:
        want = [out, width // qw.group_size]
        if list(qw.scale.shape) != want:
            problems.append(f"scale has shape {list(qw.scale.shape)}, expected {want}")
        if qw.zero_point is not None and list(qw.zero_point.shape) != want:
            problems.append(f"zero_point has shape {list(qw.zero_point.shape)}, expected {want}")
    if problems:
        raise QuantizedBaseError(f"{where}: {name}: " + "; ".join(problems))


def _config_linear_shapes(directory: Path) -> dict[str, tuple[int, int]] | None:
    """``{module: (out, in)}`` of the linears the checkpoint's config.json describes (None: no config)."""
    if not (directory / "config.json").is_file():
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # remote code, an architecture transformers lacks: loading will tell
        log.warning("could not check %s against %s: %s", QUANTIZED_WEIGHTS, directory / "config.json", exc)
        return None
    shapes = {
        n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    from .elastic.channels import gated_mlps
    from .models import per_layer_mlp_widths

    widths = per_layer_mlp_widths(directory)  # a LoNAS extraction with per-layer MLP widths
    if widths:
        mlps = gated_mlps(model)
        if len(widths) != len(mlps):
            raise QuantizedBaseError(
                f"{directory / 'config.json'}: {len(widths)} per-layer MLP widths for {len(mlps)} decoder layers"
            )
        for mlp, width in zip(mlps, widths, strict=True):
            shapes[mlp.gate] = (width, shapes[mlp.gate][1])
            shapes[mlp.up] = (width, shapes[mlp.up][1])
            shapes[mlp.down] = (shapes[mlp.down][0], width)
    return shapes


def load_quantized_weights(directory: str | Path, check_config: bool = True) -> dict[str, QuantizedWeight]:
    """The INT4 codes, scales and zero points of the base in ``directory``.

    Raises :class:`QuantizedBaseError` naming the file when a file is missing or corrupt, when the
    two files disagree (modules, symmetry, group sizes, scales fingerprint), or (``check_config``)
    when a module is not a linear of that shape in the directory's ``config.json``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    info = read_quantization_info(directory)
    path = directory / QUANTIZED_WEIGHTS
    if not path.is_file():
        raise QuantizedBaseError(f"{path} is missing: {directory} is not a complete INT4 base")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QuantizedBaseError(f"{path} is corrupt ({exc}); re-create the INT4 base") from None
    sym, group_size = info["sym"], info["group_size"]
    group_sizes = info.get("group_sizes", {})
    low, high = code_range(4, sym)
    modules = info["modules"]
    suffixes = ("codes", "scale") if sym else ("codes", "scale", "zero_point")
    expected = {f"{m}.{s}" for m in modules for s in suffixes}
    extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
    if missing or extra:
        detail = (f"missing {', '.join(missing[:4])}" if missing else "") + (
            f"{'; ' if missing else ''}not listed in {QUANTIZATION_JSON}: {', '.join(extra[:4])}"
            if extra
            else ""
        )
        raise QuantizedBaseError(
            f"{path} does not match {directory / QUANTIZATION_JSON} (sym={sym}): {detail}"
        )
    code_dtype = torch.int8 if sym else torch.uint8
    qweights: dict[str, QuantizedWeight] = {}
    for name in modules:
        codes, scale = tensors[f"{name}.codes"], tensors[f"{name}.scale"]
        zp = None if sym else tensors[f"{name}.zero_point"]
        if (
            codes.dtype != code_dtype
            or scale.dtype != torch.float16
            or (zp is not None and zp.dtype != torch.uint8)
        ):
            raise QuantizedBaseError(
                f"{path}: {name}: dtypes codes {codes.dtype}, scale {scale.dtype}"
                f"{'' if zp is None else f', zero_point {zp.dtype}'}; expected {code_dtype}, float16"
                f"{'' if zp is None else ', uint8'}"
            )
        qw = QuantizedWeight(codes.to(torch.int16), scale, zp, int(group_sizes.get(name, group_size)))
        _check_shapes(name, qw, f"{path} / {QUANTIZATION_JSON}")
        if int(codes.min()) < low or int(codes.max()) > high:
            raise QuantizedBaseError(f"{path}: {name}: codes outside [{low}, {high}]")
        if zp is not None and int(zp.max()) > 15:
            raise QuantizedBaseError(f"{path}: {name}: zero points outside [0, 15]")
        qweights[name] = qw
    if info.get("scales_sha256") != scales_fingerprint(qweights):
        raise QuantizedBaseError(
            f"the scales and zero points in {path} do not match scales_sha256 in {directory / QUANTIZATION_JSON}"
        )
    if check_config:
        shapes = _config_linear_shapes(directory)
        if shapes is not None:
            for name, qw in qweights.items():
                want = shapes.get(name)
                if want != tuple(qw.codes.shape):
                    what = "has no linear layer" if want is None else f"has shape {list(want)}"
                    raise QuantizedBaseError(
                        f"{path}: {name} has codes of shape {list(qw.codes.shape)}, but the model in "
                        f"{directory / 'config.json'} {what} there"
                    )
    return qweights


@torch.no_grad()
def check_codes_match_weights(model: torch.nn.Module, qweights: Mapping[str, QuantizedWeight]) -> None:
    """Raise :class:`QuantizedBaseError` naming the first module whose weight is not its codes' value.

    The comparison is bitwise (the weight is ``dequantize(codes)`` cast to the weight's dtype), so
    a base that someone modified after quantization (fine-tuned, merged into) is caught.
    """
    for name in sorted(qweights):
        qw = qweights[name]
        weight = _linear(model, name).weight
        if tuple(weight.shape) != tuple(qw.codes.shape):
            raise QuantizedBaseError(
                f"{name}: the model's weight has shape {list(weight.shape)}, the codes {list(qw.codes.shape)}"
            )
        value = qw.dequantize(weight.dtype).to(weight.device)
        if not torch.equal(value, weight):
            differ = value != weight
            raise QuantizedBaseError(
                f"{name}: the model's weight is not the value of its INT4 codes ({int(differ.sum())} of "
                f"{weight.numel()} entries differ, by up to {float((value - weight).abs().max()):.3g}); "
                "the base was modified after quantization: re-quantize it, or merge with the QA-SparsePEFT merge"
            )


# ----------------------------------------------------------------------------------------------
# Exact codes on the torch model (for export) and read back from the IR
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
                weight = _linear(target, name).weight
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


def _unpack_4bit(const: Any) -> np.ndarray:
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


def _through(node: Any, kinds: tuple[str, ...] = ("Convert", "Reshape", "Transpose")) -> Any:
    while node.get_type_name() in kinds:
        node = node.input_value(0).get_node()
    return node


@dataclass
class IRQuantizedWeight:
    """The INT4 weight of one MatMul in an IR: element type, codes, fp16 scales, zero points."""

    element_type: str
    codes: np.ndarray  # [out, in]
    scale: np.ndarray  # [out, groups], float16
    zero_point: np.ndarray | None  # [out, groups]


def _ir_int4_weight(node: Any) -> IRQuantizedWeight | None:
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
    codes = _unpack_4bit(data)
    out = codes.shape[0]
    scale = np.asarray(scale_node.get_data()).astype(np.float16).reshape(out, -1)
    zero = None
    if zp is not None:
        if zp.get_type_name() != "Constant":
            return None
        is4 = zp.get_element_type().get_type_name() in ("u4", "i4")
        zero = (_unpack_4bit(zp) if is4 else np.asarray(zp.get_data())).reshape(out, -1)
    return IRQuantizedWeight(data.get_element_type().get_type_name(), codes.reshape(out, -1), scale, zero)


def ir_quantized_codes(xml: str | Path) -> dict[str, IRQuantizedWeight]:
    """``{torch module name: its INT4 weight}`` for every MatMul of the IR whose weight is u4/i4.

    The converter names a linear's MatMul ``__module.<module>/aten::linear/MatMul``; peft's
    ``.base_layer`` is dropped, so names are those of :func:`load_quantized_weights`.
    """
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    found: dict[str, IRQuantizedWeight] = {}
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        module = op.get_friendly_name().split("/", 1)[0].removeprefix("__module.").removesuffix(".base_layer")
        weight = _ir_int4_weight(op.input_value(1).get_node())
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
        zp = 0 if qw.zero_point is None else np.repeat(qw.zero_point.cpu().numpy(), qw.group_size, axis=1)
        zeros += int(np.count_nonzero(got.codes == zp))
        total += got.codes.size
    return {"modules": len(qweights), "int4_sparsity": zeros / total if total else None}
