"""The INT4 base on disk: a Hugging Face checkpoint of the dequantized weights plus the codes.

``quantized_weights.safetensors`` holds each module's codes (int8 when symmetric, uint8 otherwise),
fp16 scales and uint8 zero points; ``quantization.json`` (format ``nncf-elastic-lora-int4``) lists
the modules, group sizes, symmetry, NNCF's version and a fingerprint of the scales. The file names
and the "is this an INT4 base" test live in :mod:`nncf_elastic_lora.formats`; NNCF's side (making
the codes) in :mod:`.quantize`; the IR's side (reading codes back) in
:mod:`nncf_elastic_lora.deploy.ir`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..elastic.channels import gated_mlps
from ..formats import INT4_FORMAT as FORMAT
from ..formats import INT4_FORMAT_VERSION as FORMAT_VERSION
from ..formats import QUANTIZATION_JSON, QUANTIZED_WEIGHTS, per_layer_mlp_widths
from ..quantization import QuantizedWeight, code_dtype, code_range, scales_fingerprint

log = logging.getLogger(__name__)

_CORE_KEYS = {"format", "format_version", "bits", "group_size", "sym", "mode", "modules", "group_sizes",
              "nncf_version", "scales_sha256"}  # fmt: skip


class QuantizedBaseError(ValueError):
    """An INT4 base on disk is missing a file, is corrupt, or does not match its weights."""


def linear_module(model: torch.nn.Module, name: str) -> torch.nn.Linear:
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


def _mode(sym: bool) -> str:
    return "int4_sym" if sym else "int4_asym"


def save_quantized_weights(
    directory: str | Path, qweights: Mapping[str, QuantizedWeight], meta: dict[str, Any] | None = None
) -> None:
    """Write ``quantized_weights.safetensors`` and ``quantization.json`` into an existing ``directory``.

    The caller writes the HF checkpoint (the dequantized weights) into the same directory, e.g.
    inside :func:`~nncf_elastic_lora.outputs.atomic_directory`. ``meta`` adds fields (method,
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
        tensors[f"{name}.codes"] = codes.to(code_dtype(4, sym)).contiguous()
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
    group_sizes = info.get("group_sizes", {})
    if not isinstance(group_sizes, dict):
        problems.append("group_sizes must map module names to group sizes")
    else:
        bad = {k: v for k, v in group_sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v <= 0}
        if bad:
            name, value = next(iter(bad.items()))
            problems.append(f"group_sizes[{name!r}] is {value!r}, expected a positive integer")
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


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``quantized_weights.safetensors`` in ``directory`` (missing or corrupt: an error)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / QUANTIZED_WEIGHTS
    if not path.is_file():
        raise QuantizedBaseError(f"{path} is missing: {directory} is not a complete INT4 base")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QuantizedBaseError(f"{path} is corrupt ({exc}); re-create the INT4 base") from None


def _check_tensor_names(
    tensors: Mapping[str, torch.Tensor], modules: list[str], sym: bool, directory: Path
) -> None:
    """Refuse a tensor file whose names are not the listed modules' codes and scales (and zero points)."""
    path = directory / QUANTIZED_WEIGHTS
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


def _module_weight(
    name: str, tensors: Mapping[str, torch.Tensor], sym: bool, group_size: int, path: Path
) -> QuantizedWeight:
    """Module ``name``'s codes, scales and zero points, checked for dtypes, shapes and ranges."""
    low, high = code_range(4, sym)
    want = code_dtype(4, sym)
    codes, scale = tensors[f"{name}.codes"], tensors[f"{name}.scale"]
    zp = None if sym else tensors[f"{name}.zero_point"]
    if (
        codes.dtype != want
        or scale.dtype != torch.float16
        or (zp is not None and zp.dtype != torch.uint8)
    ):
        raise QuantizedBaseError(
            f"{path}: {name}: dtypes codes {codes.dtype}, scale {scale.dtype}"
            f"{'' if zp is None else f', zero_point {zp.dtype}'}; expected {want}, float16"
            f"{'' if zp is None else ', uint8'}"
        )
    qw = QuantizedWeight(codes, scale, zp, group_size)
    _check_shapes(name, qw, f"{path} / {QUANTIZATION_JSON}")
    if int(codes.min()) < low or int(codes.max()) > high:
        raise QuantizedBaseError(f"{path}: {name}: codes outside [{low}, {high}]")
    if not bool(torch.isfinite(scale).all()) or bool((scale == 0).any()):
        raise QuantizedBaseError(f"{path}: {name}: scales hold NaN, inf or zero")
    if zp is not None and int(zp.max()) > 15:
        raise QuantizedBaseError(f"{path}: {name}: zero points outside [0, 15]")
    return qw


def _check_against_config(directory: Path, qweights: Mapping[str, QuantizedWeight]) -> None:
    """Refuse codes whose module is not a linear of that shape in the directory's ``config.json``."""
    shapes = _config_linear_shapes(directory)
    if shapes is None:
        return
    for name, qw in qweights.items():
        want = shapes.get(name)
        if want != tuple(qw.codes.shape):
            what = "has no linear layer" if want is None else f"has shape {list(want)}"
            raise QuantizedBaseError(
                f"{directory / QUANTIZED_WEIGHTS}: {name} has codes of shape {list(qw.codes.shape)}, but the "
                f"model in {directory / 'config.json'} {what} there"
            )


def load_quantized_weights(directory: str | Path, check_config: bool = True) -> dict[str, QuantizedWeight]:
    """The INT4 codes, scales and zero points of the base in ``directory``.

    Raises :class:`QuantizedBaseError` naming the file when a file is missing or corrupt, when the
    two files disagree (modules, symmetry, group sizes, scales fingerprint), or (``check_config``)
    when a module is not a linear of that shape in the directory's ``config.json``.
    """
    directory = Path(directory)
    info = read_quantization_info(directory)
    path = directory / QUANTIZED_WEIGHTS
    tensors = _read_tensors(directory)
    sym, group_size = info["sym"], info["group_size"]
    group_sizes = info.get("group_sizes", {})
    modules = info["modules"]
    _check_tensor_names(tensors, modules, sym, directory)
    qweights = {
        name: _module_weight(name, tensors, sym, int(group_sizes.get(name, group_size)), path)
        for name in modules
    }
    if info.get("scales_sha256") != scales_fingerprint(qweights):
        raise QuantizedBaseError(
            f"the scales and zero points in {path} do not match scales_sha256 in {directory / QUANTIZATION_JSON}"
        )
    if check_config:
        _check_against_config(directory, qweights)
    return qweights


@torch.no_grad()
def check_codes_match_weights(model: torch.nn.Module, qweights: Mapping[str, QuantizedWeight]) -> None:
    """Raise :class:`QuantizedBaseError` naming the first module whose weight is not its codes' value.

    The comparison is bitwise (the weight is ``dequantize(codes)`` cast to the weight's dtype), so
    a base that someone modified after quantization (fine-tuned, merged into) is caught.
    """
    for name in sorted(qweights):
        qw = qweights[name]
        weight = linear_module(model, name).weight
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
