"""Export a model (dense, sparse, merged, or a base plus a PEFT adapter) to OpenVINO IR.

optimum-intel does the conversion (``export_from_model``, stateful, ``text-generation-with-past``)
and NNCF, through optimum-intel's ``OVQuantizer``, compresses the IR's weights to INT8 or INT4,
data-free or data-aware (AWQ, scale estimation) on calibration texts we pass in, since no hub
dataset may be reachable. The tokenizer and detokenizer are converted with openvino-tokenizers,
so every exported directory loads in optimum-intel's ``OVModelForCausalLM`` and in OpenVINO
GenAI's ``LLMPipeline``; the export checks the latter before it reports success.

An adapter is either kept as a low-rank branch in the IR (the base's zeros survive) or merged;
a dense low-rank update merged into a sparse base fills it in, which the export warns about and
measures.

An INT4 base (:mod:`nncf_elastic_lora.int4`: a checkpoint with ``quantization.json``) is not
re-quantized: the IR's u4/i4 constants are exactly the base's codes, with its fp16 scales and zero
points, and an adapter stays an unmerged float branch (merging into INT4 is the QA-SparsePEFT merge).
"""

from __future__ import annotations

import logging
import shutil
import time
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from ..adapters import check_adapter_fits
from ..architecture import output_head_names
from ..config import ModelConfig, check_compression_options, int4_base_export_conflicts
from ..elastic.supernet import check_base_record
from ..formats import OV_DETOKENIZER, OV_MODEL, OV_TOKENIZER, OV_WEIGHTS, QUANTIZED_WEIGHTS, is_quantized_base
from ..int4 import (
    check_codes_match_weights,
    exact_int4_weights,
    load_quantized_weights,
    read_quantization_info,
)
from ..merge import check_not_channel_sliced, read_sub_adapter_record
from ..models import load_model
from ..outputs import (
    atomic_directory,
    check_free_space,
    check_not_input,
    check_output,
    directory_size,
    disk_full_as_error,
    save_checkpoint,
    tensor_bytes,
    write_json,
)
from ..provenance import model_fingerprint
from ..runtime import sparse_kernel_check
from ..sparsity import linear_sparsity
from .ir import check_ir_codes, ir_runtime_options, ir_weight_sparsity
from .parity import compare_ir_with_torch

log = logging.getLogger(__name__)

TASK = "text-generation-with-past"
# Adapter nodes in the traced IR carry peft's module names; keep them out of weight compression.
LORA_NODES = ".*lora_[AB].*"


class WeightFormat(str, Enum):
    """Precision of the IR's weights."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"


class GroupSizeFallback(str, Enum):
    """What NNCF does when a layer's input width is not a multiple of the INT4 group size."""

    ERROR = "error"
    ADJUST = "adjust"  # the largest valid group size >= 32, else the INT8 backup precision
    IGNORE = "ignore"  # leave that layer uncompressed


class BackupPrecision(str, Enum):
    """Where an INT4 IR keeps the weights that are not INT4 (embeddings, LM head, layers without a group size)."""

    INT8_ASYM = "int8_asym"  # optimum-intel's and NNCF's default for INT4 exports
    INT8_SYM = "int8_sym"
    NONE = "none"  # left in float


class ExportError(RuntimeError):
    """The export could not produce a complete, loadable OpenVINO model directory."""


def attach_adapter(
    model: torch.nn.Module, adapter: str | Path, merge: bool, base_fingerprint: str | None = None
) -> tuple[torch.nn.Module, dict]:
    """The model with the peft adapter in ``adapter`` applied: merged, or kept as a branch.

    An adapter recorded for another base than ``base_fingerprint`` is refused; one recording none is
    applied with a WARNING (:func:`~nncf_elastic_lora.elastic.supernet.check_base_record`).
    """
    from peft import PeftModel

    adapter = Path(adapter)
    check_adapter_fits(model, adapter)
    check_not_channel_sliced(adapter)
    record = read_sub_adapter_record(adapter) or {}
    check_base_record(adapter.resolve(), record.get("base_fingerprint"), base_fingerprint)
    before = linear_sparsity(model)
    peft_model = PeftModel.from_pretrained(model, adapter)
    info: dict[str, Any] = {"path": str(adapter), "merged": merge, "base_sparsity": before}
    if not merge:
        return peft_model.get_base_model(), info
    merged = peft_model.merge_and_unload()
    info["merged_sparsity"] = after = linear_sparsity(merged)
    if before > 0.01 and after < before - 0.01:
        log.warning(
            "merging the dense adapter filled in the sparse base: %.1f%% -> %.1f%% zeros in the linear layers; "
            "export with the adapter unmerged to keep the base sparse",
            100 * before,
            100 * after,
        )
    return merged, info


# Converted tokenizers of this process, by :func:`_tokenizer_digest`: {IR file name: bytes}. A run exports
# the same tokenizer several times (the shipped IR, dense references, the plain alternative's, LoNAS's latency
# sub-networks), and each conversion costs ~2 s.
_CONVERTED_TOKENIZERS: dict[str, dict[str, bytes]] = {}


_LOAD_LOCATION = {"name_or_path", "is_local", "vocab_file", "merges_file", "tokenizer_file", "_commit_hash"}
_CONVERTED_SETTINGS = ("model_max_length", "truncation_side", "clean_up_tokenization_spaces", "model_input_names")


def _tokenizer_digest(tokenizer: Any) -> str | None:
    """A digest of everything openvino-tokenizers converts (vocabulary, merges, normalisers, special tokens, chat
    template, init options) and of its version; None for a tokenizer without a serialisable fast backend."""
    import hashlib
    import json
    from importlib.metadata import version

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    # where it was loaded from is not converted: a copy saved elsewhere (LoNAS's sub-networks) converts the same
    init = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _LOAD_LOCATION}
    # settings the conversion reads as they are now (set after loading, init_kwargs would not show them)
    now = {k: getattr(tokenizer, k, None) for k in _CONVERTED_SETTINGS}
    state = {"class": type(tokenizer).__name__, "backend": backend.to_str(), "chat_template": tokenizer.chat_template,
             "init_kwargs": init, "settings": now, "special": tokenizer.special_tokens_map,
             "openvino_tokenizers": version("openvino-tokenizers")}  # fmt: skip
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def _export_tokenizer(tokenizer: Any, output: Path) -> None:
    """openvino_tokenizer.xml and openvino_detokenizer.xml, as LLMPipeline needs them (converted once per process
    and tokenizer, then copied)."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    names = [f for xml in (OV_TOKENIZER, OV_DETOKENIZER) for f in (xml, xml.removesuffix(".xml") + ".bin")]
    digest = _tokenizer_digest(tokenizer)
    if digest in _CONVERTED_TOKENIZERS:
        for name, data in _CONVERTED_TOKENIZERS[digest].items():
            (output / name).write_bytes(data)
        return
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # batched generation pads on the left, as optimum-intel exports it
    try:
        ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as exc:
        raise ExportError(
            f"openvino-tokenizers could not convert the tokenizer ({type(tokenizer).__name__}): {exc}"
        ) from exc
    finally:
        tokenizer.padding_side = side
    ov.save_model(ov_tokenizer, output / OV_TOKENIZER)
    ov.save_model(ov_detokenizer, output / OV_DETOKENIZER)
    if digest is not None:
        _CONVERTED_TOKENIZERS[digest] = {name: (output / name).read_bytes() for name in names}


def quantization_config(
    weight_format: WeightFormat,
    *,
    group_size: int = 64,
    ratio: float = 1.0,
    sym: bool = False,
    awq: bool = False,
    scale_estimation: bool = False,
    calibration: list[str] | None = None,
    tokenizer_dir: str | Path | None = None,
    group_size_fallback: GroupSizeFallback = GroupSizeFallback.ADJUST,
    unmerged_adapter: bool = False,
    keep_adapter_precision: bool = False,
    backup_precision: BackupPrecision | str = BackupPrecision.INT8_ASYM,
    activations: str = "none",
) -> Any:
    """optimum-intel's ``OVWeightQuantizationConfig`` for an INT8 or INT4 IR (None for fp32/fp16), or with
    ``activations`` 'int8' its ``OVQuantizationConfig`` (W8A8, ``nncf.quantize`` calibrated on ``calibration``).

    ``unmerged_adapter``: the model holds an adapter branch, so AWQ is refused (it rescales
    activations the branch also reads); ``keep_adapter_precision`` leaves its matrices uncompressed.
    ``backup_precision`` (INT4): the precision of the weights left out of INT4 (embeddings, head).
    """
    from optimum.intel import OVWeightQuantizationConfig

    weight_format = WeightFormat(weight_format)
    if activations not in ("none", "int8"):
        raise ValueError(f"activations must be 'none' or 'int8', got {activations!r}")
    if activations == "int8":
        return _w8a8_config(weight_format, sym=sym, calibration=calibration, tokenizer_dir=tokenizer_dir,
                            unmerged_adapter=unmerged_adapter)  # fmt: skip
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    check_compression_options(
        weight_format.value,
        awq=awq,
        scale_estimation=scale_estimation,
        data_aware=bool(calibration),
        ratio=ratio,
        unmerged_adapter=unmerged_adapter,
    )
    if scale_estimation and not calibration:
        raise ValueError("scale_estimation needs calibration texts")
    if weight_format in (WeightFormat.FP32, WeightFormat.FP16):
        return None
    kwargs: dict[str, Any] = {"bits": 8 if weight_format is WeightFormat.INT8 else 4, "sym": sym}
    if weight_format is WeightFormat.INT4:
        kwargs.update(
            group_size=group_size,
            ratio=ratio,
            group_size_fallback=GroupSizeFallback(group_size_fallback).value,
            quant_method="awq" if awq else "default",
            scale_estimation=scale_estimation or None,
            backup_precision=BackupPrecision(backup_precision).value,
        )
    if calibration:
        kwargs.update(dataset=list(calibration), tokenizer=str(tokenizer_dir), num_samples=len(calibration))
    if keep_adapter_precision:
        kwargs["ignored_scope"] = {"patterns": [LORA_NODES], "validate": False}
    return OVWeightQuantizationConfig(**kwargs)


def _w8a8_config(
    weight_format: WeightFormat, *, sym: bool, calibration: list[str] | None, tokenizer_dir: str | Path | None,
    unmerged_adapter: bool,
) -> Any:
    """``OVQuantizationConfig``: INT8 weights (symmetric, so a zero weight is code 0) and INT8 activations."""
    from optimum.intel import OVQuantizationConfig

    if weight_format is not WeightFormat.INT8:
        raise ValueError(f"activations 'int8' (W8A8) needs weight_format int8, not {weight_format.value}")
    if not calibration:
        raise ValueError("activations 'int8' (W8A8) needs calibration texts for the activation ranges")
    if unmerged_adapter:
        raise ValueError(
            "activations 'int8' (W8A8) would quantize the unmerged adapter's branch with the base: merge the "
            "adapter first (merge_adapter)"
        )
    return OVQuantizationConfig(bits=8, sym=sym, dataset=list(calibration), tokenizer=str(tokenizer_dir),
                                num_samples=len(calibration))  # fmt: skip


def _compress(source: Path, target: Path, config: Any) -> None:
    import nncf
    from optimum.intel import OVConfig, OVModelForCausalLM, OVQuantizer

    ov_model = OVModelForCausalLM.from_pretrained(source, export=False, compile=False)
    try:
        OVQuantizer.from_pretrained(ov_model).quantize(
            ov_config=OVConfig(quantization_config=config), save_directory=target
        )
    except nncf.InvalidGroupSizeError as exc:
        raise ExportError(
            f"{exc}\nuse export.group_size_fallback 'adjust' (or --group-size-fallback adjust) or a smaller group size"
        ) from None
    for item in source.iterdir():  # tokenizer files and IRs, chat template: everything not rewritten
        if not (target / item.name).exists():
            shutil.copy2(item, target / item.name)


def check_genai(
    path: str | Path, device: str = "CPU", prompt: str = "1 + 1 =", max_new_tokens: int = 4
) -> str:
    """Load the directory in OpenVINO GenAI's LLMPipeline and generate; return the text."""
    import openvino_genai

    try:
        pipe = openvino_genai.LLMPipeline(str(path), device)
        return str(pipe.generate(prompt, openvino_genai.GenerationConfig(max_new_tokens=max_new_tokens)))
    except Exception as exc:
        raise ExportError(f"{path} does not load or generate in openvino_genai.LLMPipeline: {exc}") from exc


def export_openvino(
    model: str | Path | ModelConfig,
    output: str | Path,
    *,
    adapter: str | Path | None = None,
    merge_adapter: bool = False,
    weight_format: WeightFormat | str = WeightFormat.FP32,
    group_size: int = 64,
    ratio: float = 1.0,
    sym: bool = False,
    awq: bool = False,
    scale_estimation: bool = False,
    calibration: list[str] | None = None,
    group_size_fallback: GroupSizeFallback | str = GroupSizeFallback.ADJUST,
    keep_adapter_precision: bool = True,
    backup_precision: BackupPrecision | str = BackupPrecision.INT8_ASYM,
    activations: str = "none",
    save_merged: str | Path | None = None,
    genai_device: str | None = "CPU",
    compare_prompts: list[str] | tuple[str, ...] | None = None,
    compare_tokens: int = 16,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``model`` (plus ``adapter``) to an OpenVINO model directory at ``output``.

    Args:
        model: an HF checkpoint directory, hub id, bundled id, or a :class:`ModelConfig`.
        adapter: a PEFT LoRA folder (a sub-adapter written by ``train``/``search``, or any peft LoRA).
        merge_adapter: merge the adapter into the weights instead of keeping it as an IR branch.
        weight_format: fp32, fp16, or NNCF-compressed int8 (per channel) / int4 (grouped).
        calibration: texts for data-aware compression (AWQ statistics, scale estimation).
        keep_adapter_precision: leave the adapter's matrices uncompressed in an int8/int4 IR.
        backup_precision: int4 (an INT4 base's exact codes too): the precision of the weights left out
            of INT4, embeddings and LM head (``int8_asym`` as optimum-intel; ``none``: float).
        activations: ``int8`` quantizes the activations too (W8A8, ``nncf.quantize`` on ``calibration``;
            int8 weights, merged adapters only): what OpenVINO's CPU sparse-weight kernels need.
        save_merged: also write the merged HF checkpoint there (``optimum-cli export openvino`` takes it).
        genai_device: load the result in ``LLMPipeline`` on this device as a final check (None: skip).
        compare_prompts: compare the IR with the torch model on these prompts (logits, greedy
            tokens; see :mod:`nncf_elastic_lora.deploy.parity`) and write ``parity.json``.
        overwrite: replace an existing ``output`` (only one of ours or a model directory).

    The directory is written atomically, with ``export_report.json``; returns that report.
    """
    unmerged = adapter is not None and not merge_adapter
    qconfig_args = dict(
        group_size=group_size, ratio=ratio, sym=sym, awq=awq, scale_estimation=scale_estimation,
        calibration=calibration, group_size_fallback=group_size_fallback, unmerged_adapter=unmerged,
        keep_adapter_precision=keep_adapter_precision and unmerged, backup_precision=BackupPrecision(backup_precision),
        activations=activations,
    )  # fmt: skip
    weight_format, int4_dir = _checked_weight_format(
        model, weight_format, adapter, merge_adapter, qconfig_args
    )
    _check_outputs(model, output, adapter, merge_adapter, save_merged, overwrite)
    model_config = model if isinstance(model, ModelConfig) else ModelConfig(name_or_path=str(model))
    base_fingerprint = model_fingerprint(model_config)  # as training recorded it: before the dtype change
    # On the CPU in float32 whatever model.device says: OpenVINO's converter traces a CPU model, and the
    # parity check compares the IR with that very model.
    model_config = model_config.model_copy(update={"dtype": "float32", "device": "cpu"})
    output = Path(output)
    start = time.perf_counter()
    torch_model, tokenizer, qweights, report = _load_for_export(
        model_config, weight_format, int4_dir, adapter, merge_adapter, base_fingerprint
    )
    if save_merged is not None:
        save_checkpoint(save_merged, torch_model, tokenizer, verb="merge")
    needed = export_bytes(torch_model, weight_format, int4_codes=qweights is not None)
    check_free_space(output, needed, "export")
    with disk_full_as_error("export", output, needed), atomic_directory(output, verb="export") as tmp:
        backup = qconfig_args["backup_precision"]
        report.update(  # an INT4 base ships its own codes, never a re-quantization
            _export_int4_base(torch_model, tokenizer, tmp, int4_dir, qweights, backup) if qweights is not None
            else _export_and_compress(torch_model, tokenizer, tmp, weight_format, qconfig_args)
        )
        report["export_s"] = time.perf_counter() - start
        report.update(_ir_facts(tmp, torch_model, tokenizer, genai_device, compare_prompts, compare_tokens))
        write_json(tmp / "export_report.json", report)
    log.info("exported %s to %s (%s)", model_config.name_or_path, output, weight_format.value)
    return report


# Bytes per float32 weight byte of the IR a format writes (int8/int4 write the float IR first, then compress).
_IR_BYTES = {WeightFormat.FP32: 1.0, WeightFormat.FP16: 0.5, WeightFormat.INT8: 1.25, WeightFormat.INT4: 1.13}


def export_bytes(torch_model: Any, weight_format: WeightFormat, int4_codes: bool = False) -> int:
    """About the most disk an export of ``torch_model`` holds at once (float32 weights in memory).

    ``int4_codes``: an INT4 base's codes are written directly (no float IR first), so its IR is about
    the size of the INT4 weights themselves; the float32 total is a safe bound only for the others.
    """
    factor = 0.3 if int4_codes else _IR_BYTES[weight_format]  # 4-bit codes + f16 scales, f32 embeddings
    return int(tensor_bytes(torch_model.state_dict().values()) * factor) + 16 * 2**20  # + tokenizers, reports


def _checked_weight_format(
    model: str | Path | ModelConfig,
    weight_format: WeightFormat | str,
    adapter: str | Path | None,
    merge_adapter: bool,
    qconfig_args: dict[str, Any],
) -> tuple[WeightFormat, Path | None]:
    """The IR's weight format and the INT4 base's directory (None: not one); bad options fail here,
    before anything is loaded."""
    weight_format = WeightFormat(weight_format)
    int4_dir = _int4_base_dir(model)
    if int4_dir is not None:
        _check_int4_base_options(
            int4_dir,
            weight_format,
            adapter,
            merge_adapter,
            qconfig_args["ratio"],
            qconfig_args["awq"],
            qconfig_args["scale_estimation"],
            qconfig_args["calibration"],
        )
        return WeightFormat.INT4, int4_dir
    quantization_config(weight_format, **qconfig_args)
    return weight_format, None


def _check_outputs(
    model: str | Path | ModelConfig,
    output: str | Path,
    adapter: str | Path | None,
    merge_adapter: bool,
    save_merged: str | Path | None,
    overwrite: bool,
) -> None:
    """Refuse an output (or ``save_merged``) that is an input, exists without ``overwrite``, or clashes."""
    sources = [p for p in (model, adapter) if isinstance(p, str | Path)]
    if isinstance(model, ModelConfig):
        sources.append(model.name_or_path)
    for target in (output, save_merged):
        if target is not None:
            check_not_input(target, sources)
            check_output(target, overwrite)
    if save_merged is not None and Path(save_merged).resolve() == Path(output).resolve():
        raise ValueError(
            f"--save-merged {save_merged} is the export's output; give it a directory of its own"
        )
    if save_merged is not None and not (adapter is not None and merge_adapter):
        raise ValueError("save_merged needs an adapter and merge_adapter=True")


def _load_for_export(
    model_config: ModelConfig,
    weight_format: WeightFormat,
    int4_dir: Path | None,
    adapter: str | Path | None,
    merge_adapter: bool,
    base_fingerprint: str | None = None,
) -> tuple[Any, Any, dict[str, Any] | None, dict[str, Any]]:
    """``(torch model with the adapter applied, tokenizer, INT4 base's codes or None, report so far)``."""
    torch_model, tokenizer = load_model(model_config)
    report: dict[str, Any] = {
        "model": model_config.name_or_path,
        "adapter": None,
        "weight_format": weight_format.value,
        "source_sparsity": linear_sparsity(torch_model),
    }
    qweights = None
    if int4_dir is not None:
        qweights = load_quantized_weights(int4_dir)
        check_codes_match_weights(torch_model, qweights)  # a base modified after quantization fails here
    if adapter is not None:
        torch_model, report["adapter"] = attach_adapter(torch_model, adapter, merge_adapter, base_fingerprint)
    return torch_model, tokenizer, qweights, report


def _export_and_compress(
    torch_model: Any, tokenizer: Any, target: Path, weight_format: WeightFormat, qconfig_args: dict[str, Any]
) -> dict[str, Any]:
    """The float IR (and tokenizers) into ``target``; for int8/int4 compressed by NNCF from a float IR.

    Returns the report's ``compression`` entry (nothing for fp32/fp16)."""
    from optimum.exporters.openvino import export_from_model
    from optimum.intel import OVConfig

    fp_dir = target / "fp" if weight_format in (WeightFormat.INT8, WeightFormat.INT4) else target
    ov_config = OVConfig(dtype="fp16") if weight_format is WeightFormat.FP16 else None
    with torch.no_grad():
        export_from_model(torch_model, fp_dir, task=TASK, ov_config=ov_config, preprocessors=[tokenizer])
    _export_tokenizer(tokenizer, fp_dir)
    qconfig = quantization_config(weight_format, tokenizer_dir=fp_dir, **qconfig_args)
    if qconfig is None:
        return {}
    compressed = target / "compressed"
    _compress(fp_dir, compressed, qconfig)
    shutil.rmtree(fp_dir)
    for item in compressed.iterdir():
        item.rename(target / item.name)
    compressed.rmdir()
    compression = {k: v for k, v in qconfig.to_dict().items() if k not in ("dataset", "tokenizer")}
    compression["calibration_samples"] = len(qconfig_args["calibration"] or [])
    return {"compression": compression}


def _ir_facts(
    target: Path,
    torch_model: Any,
    tokenizer: Any,
    genai_device: str | None,
    compare_prompts: list[str] | tuple[str, ...] | None,
    compare_tokens: int,
) -> dict[str, Any]:
    """The exported directory's sparsity, sizes and runtime options, its GenAI check and torch parity
    (``parity.json``)."""
    facts: dict[str, Any] = {
        "ir_sparsity": ir_weight_sparsity(target / OV_MODEL, output_head_names(torch_model)),
        "runtime_options": ir_runtime_options(target / OV_MODEL),
        "size_bytes": {
            "model_bin": directory_size(target, OV_WEIGHTS),
            "directory": directory_size(target),
        },
    }
    if facts["ir_sparsity"] and facts["ir_sparsity"] >= 0.05:  # would the CPU plugin's sparse kernels use the zeros?
        facts["sparse_kernels"] = sparse_kernel_check(target / OV_MODEL)
    if genai_device:
        facts["genai_check"] = {"device": genai_device, "text": check_genai(target, genai_device)}
    if compare_prompts:
        parity = compare_ir_with_torch(
            target,
            torch_model,
            tokenizer,
            list(compare_prompts),
            max_new_tokens=compare_tokens,
            device=genai_device or "CPU",
            genai=genai_device is not None,
        )
        write_json(target / "parity.json", parity)
        facts["parity"] = parity["summary"]
    return facts


def _int4_base_dir(model: str | Path | ModelConfig) -> Path | None:
    """The directory of ``model`` when it is an INT4 base (:func:`~nncf_elastic_lora.formats.is_quantized_base`)."""
    name = model.name_or_path if isinstance(model, ModelConfig) else model
    path = Path(name).expanduser()
    return path if path.is_dir() and is_quantized_base(path) else None


def _check_int4_base_options(
    base: Path,
    weight_format: WeightFormat,
    adapter: str | Path | None,
    merge_adapter: bool,
    ratio: float,
    awq: bool,
    scale_estimation: bool,
    calibration: list[str] | None,
) -> None:
    """Refuse export options that would change an INT4 base's codes."""
    if adapter is not None and merge_adapter:
        raise ValueError(
            f"{base} is an INT4 base: merging the adapter (merge_adapter) would add a float update to INT4 "
            "weights and re-quantize them; merge with the QA-SparsePEFT merge (which re-quantizes with the "
            "base's frozen scales, exactly as training saw it) or export with the adapter unmerged"
        )
    if weight_format not in (WeightFormat.INT4, WeightFormat.FP32):
        raise ValueError(
            f"{base} is an INT4 base: the IR ships its own INT4 codes; weight_format {weight_format.value!r} "
            "does not apply (use 'int4')"
        )
    used = int4_base_export_conflicts(
        awq=awq, scale_estimation=scale_estimation, data_aware=bool(calibration), ratio=ratio
    )
    if used:
        raise ValueError(
            f"{base} is an INT4 base whose codes are fixed: {', '.join(used)} would re-quantize it; "
            "drop the option (quantize the base data-aware instead)"
        )


def _finish_int4_ir(target: Path, backup: BackupPrecision) -> int | None:
    """Make the exported exact-codes IR what ``optimum-cli export openvino --weight-format int4`` writes: its float
    weights in ``backup`` precision (INT8, as optimum-intel's INT4 exports keep embeddings and head), and the
    runtime's default KV cache.

    NNCF compresses only weights that are still float constants: the INT4 codes are left as they are, and so
    is an unmerged adapter's branch (:data:`LORA_NODES`). optimum-intel marks an LLM it exports as float with
    ``KV_CACHE_PRECISION=f16`` and drops that mark when it compresses the weights; this IR was exported as float
    (its codes inside), so the mark is dropped here too. Kept, it ran this IR with an f16 KV cache and the plain
    exports with the runtime's u8 one: 1.07 ± 0.03x the same IR's decode speed at batch 1 on an AVX2 CPU (20
    paired rounds), a tilt in every comparison with them. Returns the float weight bytes before compression
    (None with ``backup`` none).
    """
    import nncf
    import openvino as ov

    xml = target / OV_MODEL
    model = ov.Core().read_model(xml)
    changed = backup is not BackupPrecision.NONE
    if model.has_rt_info(["runtime_options", "KV_CACHE_PRECISION"]):
        options = model.get_rt_info("runtime_options").value
        if str(options["KV_CACHE_PRECISION"]) == "f16":
            del options["KV_CACHE_PRECISION"]
            model.set_rt_info(options, "runtime_options")
            changed = True
    if not changed:
        return None
    before = None
    if backup is not BackupPrecision.NONE:
        before = sum(
            op.get_byte_size() for op in model.get_ops()
            if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f32
        )  # fmt: skip
        mode = (nncf.CompressWeightsMode.INT8_ASYM if backup is BackupPrecision.INT8_ASYM
                else nncf.CompressWeightsMode.INT8_SYM)  # fmt: skip
        model = nncf.compress_weights(
            model, mode=mode, ignored_scope=nncf.IgnoredScope(patterns=[LORA_NODES], validate=False)
        )
    staged = target / f".finished_{OV_MODEL}"
    ov.save_model(model, staged, compress_to_fp16=False)  # the other constants stay as exported
    del model
    staged.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    staged.replace(xml)
    return before


def _export_int4_base(
    torch_model: Any,
    tokenizer: Any,
    target: Path,
    base: Path,
    qweights: dict[str, Any],
    backup: BackupPrecision = BackupPrecision.INT8_ASYM,
) -> dict[str, Any]:
    """Export with NNCF's INT4 decompressors holding the base's codes, the rest in ``backup``
    precision; check the IR still holds the codes exactly."""
    from optimum.exporters.openvino import export_from_model

    with exact_int4_weights(torch_model, qweights), torch.no_grad():
        export_from_model(torch_model, target, task=TASK, preprocessors=[tokenizer])
    _export_tokenizer(tokenizer, target)
    float_bytes = _finish_int4_ir(target, backup)
    try:
        summary = check_ir_codes(target / OV_MODEL, qweights)
    except ValueError as exc:
        raise ExportError(f"the IR does not hold the INT4 base's codes: {exc}") from None
    info = read_quantization_info(base)
    return {
        "weight_format": WeightFormat.INT4.value,
        "codes": f"from {base / QUANTIZED_WEIGHTS}",
        "compression": {
            "source": "int4_base",
            "mode": info.get("mode"),
            "group_size": info["group_size"],
            "sym": info["sym"],
            "modules": summary["modules"],
            "scales_sha256": info.get("scales_sha256"),
            "ir_codes_verified": True,
            "ir_int4_sparsity": summary["int4_sparsity"],
            "backup_precision": backup.value,  # embeddings, head and layers left out of INT4
            "backup_float_bytes_before": float_bytes,
        },
    }
