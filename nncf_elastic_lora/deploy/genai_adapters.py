"""OpenVINO GenAI runtime adapters: one base IR, many LoRA adapters applied at run time.

OpenVINO GenAI's ``LLMPipeline`` applies LoRA adapters to a compressed base while it generates
(``openvino_genai.Adapter``: a safetensors file with peft's names, ``base_model.model.<module>.lora_A /
lora_B.weight``; ``GenerationConfig.adapters`` picks one per ``generate`` call). The alpha GenAI takes is
the final scale of ``B A`` and the file's own alpha is ignored, while a sub-adapter's per-layer ranks
make peft's ``lora_alpha / r`` differ per layer; so :func:`genai_adapter_tensors` folds each layer's
scale into its ``lora_B`` and the adapter is applied with alpha 1.

:func:`export_genai_adapters` writes the base IR once (dense, sparse or an INT4 base's exact codes,
INT8/INT4 weights), each adapter into ``adapters/<name>.safetensors``, and ``genai_adapters.json``
(the manifest: base, adapters, checks). Every adapter is checked on the way: GenAI with it on the base
gives the same greedy tokens as an IR with that adapter in its graph, and the greedy sequence's
log-probability per token (GenAI's ``logprobs``) within :data:`LOGPROB_TOLERANCE`. Only plain LoRA
adapters (Shears, SQFT's INT4 base + adapter) can be applied at run time: a SparsePEFT or QA-SparsePEFT
update must be masked or re-quantized (merge it), and a LoNAS sub-network with sliced widths must be
extracted; both are refused with the reason.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters import check_adapter_fits
from ..config import ModelConfig
from ..elastic.lora import AdapterKind
from ..elastic.supernet import check_base_record
from ..formats import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from ..merge import check_not_channel_sliced, peft_scaling, read_sub_adapter_record
from ..models import meta_model
from ..outputs import OutputExistsError, atomic_directory, write_json
from ..provenance import model_fingerprint
from .export import export_openvino
from .parity import F32

log = logging.getLogger(__name__)

MANIFEST = "genai_adapters.json"
FORMAT, FORMAT_VERSION = "nncf-elastic-lora-genai-adapters", 1
ADAPTERS_DIR = "adapters"
# |Δ log p| per generated token between GenAI + runtime adapter and the IR with the adapter in its graph:
# both run the same compressed base weights and a float adapter, so only the order of the sums differs.
LOGPROB_TOLERANCE = 1e-3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GenAIAdapterError(ValueError):
    """An adapter that cannot be applied at run time, or does not belong to the base IR."""


def _checked_lora(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The adapter's peft config and our record ({} for a plain peft folder), after refusing what GenAI
    cannot apply as it was trained."""
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter folder {adapter_dir.resolve()} does not exist")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{adapter_dir.resolve()} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    record = read_sub_adapter_record(adapter_dir) or {}
    kind = AdapterKind.parse(record.get("adapter_kind", "lora"))
    if kind is not AdapterKind.LORA:
        raise GenAIAdapterError(
            f"{adapter_dir} is a {kind.value} sub-adapter: its update is {'masked by the base zeros' if kind is AdapterKind.SPARSEPEFT else 'quantized with the INT4 base'}"
            ", which a runtime LoRA adapter cannot reproduce; merge it into the base (`merge`) and export that"
        )
    try:
        check_not_channel_sliced(adapter_dir)
    except ValueError as exc:
        raise GenAIAdapterError(f"{exc} (a runtime adapter cannot slice the base either)") from None
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise GenAIAdapterError(f"{adapter_dir}: a {config.get('peft_type')} adapter, not LoRA")
    return config, record


def genai_adapter_tensors(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """peft's tensors of ``adapter_dir`` with each layer's ``lora_alpha / r`` folded into its ``lora_B``."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config, record = _checked_lora(adapter_dir)
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    out = {}
    for key, value in tensors.items():
        m = re.match(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])\.weight$", key)
        if m is None:
            raise GenAIAdapterError(f"{adapter_dir}: tensor {key!r} is not a LoRA A or B weight")
        name = f"base_model.model.{m['module']}.lora_{m['which']}.weight"
        if m["which"] == "B":
            # as `merge` applies it: our record's scaling, else peft's alpha / r of this layer
            scale = float(record["scaling"]) if record else peft_scaling(config, m["module"], value.shape[1])
            value = value.float() * scale
        out[name] = value.float().contiguous()
    return out


def write_genai_adapter(
    adapter_dir: str | Path, path: str | Path, base_fingerprint: str | None = None
) -> dict[str, Any]:
    """Write ``adapter_dir`` as one GenAI adapter file (scales folded in; apply it with alpha 1)."""
    from safetensors.torch import save_file

    tensors = genai_adapter_tensors(adapter_dir)
    ranks = [t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")]
    meta = {"format": FORMAT, "alpha": "1.0", "source": str(Path(adapter_dir).resolve()),
            "base_fingerprint": base_fingerprint or ""}  # fmt: skip
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return {"file": str(path), "source": meta["source"], "modules": len(ranks), "ranks": sorted(set(ranks)),
            "bytes": path.stat().st_size, "alpha": 1.0}  # fmt: skip


def adapter_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a GenAI adapter file ({} for one written by another tool)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path.resolve()} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors' own error types for a cut or foreign file
        raise GenAIAdapterError(f"{path.resolve()} is not a readable safetensors adapter ({exc})") from None


def check_adapter_for_ir(ir_dir: str | Path, adapter_file: str | Path) -> None:
    """Refuse an adapter file made for another base than the IR in ``ir_dir`` (as its manifest records)."""
    meta = adapter_metadata(adapter_file)
    manifest_path = Path(ir_dir) / MANIFEST
    if not manifest_path.is_file() or meta.get("format") != FORMAT:
        return  # nothing to compare: GenAI itself refuses shapes that do not fit
    try:
        base = json.loads(manifest_path.read_text())["base"].get("fingerprint")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GenAIAdapterError(
            f"{manifest_path.resolve()} is not a valid {MANIFEST} ({type(exc).__name__}: {exc}); re-run `export-genai`"
        ) from None
    if base and meta.get("base_fingerprint") and meta["base_fingerprint"] != base:
        raise GenAIAdapterError(
            f"adapter {adapter_file} was exported for another base (fingerprint {meta['base_fingerprint']}) than "
            f"the IR in {ir_dir} ({base}); export it with that base (`export-genai`)"
        )


def genai_pipeline(ir_dir: str | Path, adapter_files: list[str | Path], device: str = "CPU", **properties: Any):
    """``(LLMPipeline, {file: Adapter})`` with every adapter registered (dynamic mode: switchable per call)."""
    import openvino_genai

    adapters = {}
    for file in adapter_files:
        check_adapter_for_ir(ir_dir, file)
        adapters[str(file)] = openvino_genai.Adapter(str(file))
    config = openvino_genai.AdapterConfig(openvino_genai.AdapterConfig.Mode.MODE_DYNAMIC)
    for adapter in adapters.values():
        config.add(adapter, 1.0)
    return openvino_genai.LLMPipeline(str(ir_dir), device, adapters=config, **properties), adapters


def greedy(pipe: Any, ids: np.ndarray, new_tokens: int, adapter: Any | None = None, select: bool = True):
    """GenAI's greedy tokens and their log-probability (``logprobs``) for ``ids`` ([1, n]), with ``adapter``.

    ``select``: set ``GenerationConfig.adapters`` (a pipeline built with adapters needs it, None: none active).
    """
    import openvino as ov
    import openvino_genai

    config = openvino_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                             ignore_eos=True, do_sample=False, logprobs=1)  # fmt: skip
    if select:
        config.adapters = openvino_genai.AdapterConfig(adapter, 1.0) if adapter else openvino_genai.AdapterConfig()
    result = pipe.generate(openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config)
    return list(result.tokens[0]), float(result.scores[0])


class GenAIGenerator:
    """Greedy generation through a GenAI pipeline with one runtime adapter active (None: the bare base).

    The generation side of :class:`~nncf_elastic_lora.evaluation.CausalLM`, enough for exact-match tasks:
    prompts are tokenized by the IR's Hugging Face tokenizer (no special tokens, as ``CausalLM`` does),
    one at a time, and decoding stops at the model's end of sequence. GenAI's ``LLMPipeline`` gives no
    logits of a given text, so it cannot score choices (``scores_choices`` is False).
    """

    scores_choices = False

    def __init__(self, pipe: Any, tokenizer: Any, adapter: Any | None = None):
        self.pipe, self.tokenizer, self.adapter = pipe, tokenizer, adapter

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        import openvino as ov
        import openvino_genai

        config = self.pipe.get_generation_config()  # the model's own (eos ids), greedy
        config.max_new_tokens, config.do_sample = max_new_tokens, False
        active = openvino_genai.AdapterConfig(self.adapter, 1.0) if self.adapter else openvino_genai.AdapterConfig()
        config.adapters = active
        texts = []
        for prompt in prompts:
            ids = np.array([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]], dtype=np.int64)
            inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
            result = self.pipe.generate(inputs, config)
            texts.append(self.tokenizer.decode(list(result.tokens[0]), skip_special_tokens=True))
        return texts


def _check_ids(ir_dir: Path, prompts: list[str]) -> list[np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ir_dir)
    return [np.array([tokenizer(p)["input_ids"]], dtype=np.int64) for p in prompts]


def check_runtime_adapter(
    base_dir: Path, adapter_file: Path, graph_dir: Path, prompts: list[str], new_tokens: int, device: str = "CPU"
) -> dict[str, Any]:
    """GenAI + ``adapter_file`` on ``base_dir`` against the IR with the adapter in its graph (``graph_dir``).

    Both run in float32 (:data:`~.parity.F32`): on a CPU with BF16 the runtime's default precision is
    bf16, whose rounding differs between the runtime adapter's branch and the in-graph one (measured on
    the tiny model: 2.6e-2 per token and other greedy tokens in bf16, within 1e-3 and the same tokens in f32).
    """
    import openvino_genai

    pipe, adapters = genai_pipeline(base_dir, [adapter_file], device, **F32)
    graph = openvino_genai.LLMPipeline(str(graph_dir), device, **F32)
    rows = []
    for ids in _check_ids(base_dir, prompts):
        ours, ours_lp = greedy(pipe, ids, new_tokens, adapters[str(adapter_file)])
        ref, ref_lp = greedy(graph, ids, new_tokens, select=False)
        rows.append({"identical": ours == ref, "logprob_diff_per_token": abs(ours_lp - ref_lp) / new_tokens})
    worst = max(r["logprob_diff_per_token"] for r in rows)
    return {"prompts": len(rows), "greedy_identical": sum(r["identical"] for r in rows), "new_tokens": new_tokens,
            "max_logprob_diff_per_token": worst, "tolerance": LOGPROB_TOLERANCE,
            "passed": all(r["identical"] for r in rows) and worst <= LOGPROB_TOLERANCE}  # fmt: skip


def _check_inputs(model_config: ModelConfig, adapters: Mapping[str, str | Path]) -> str:
    """Refuse bad adapter names and adapters that do not fit the base, before anything is written."""
    if not adapters:
        raise ValueError("export-genai needs at least one adapter (NAME=FOLDER)")
    meta = meta_model(model_config)
    fingerprint = model_fingerprint(model_config)
    for name, folder in adapters.items():
        if not _NAME.match(name):
            raise ValueError(f"adapter name {name!r}: use letters, digits, '.', '_' or '-' (it names the file)")
        _checked_lora(Path(folder))
        check_adapter_fits(meta, folder)
        check_base_record(Path(folder).resolve(), (read_sub_adapter_record(folder) or {}).get("base_fingerprint"),
                          fingerprint)  # fmt: skip
    return fingerprint


def export_genai_adapters(
    model: str | Path | ModelConfig,
    output: str | Path,
    adapters: Mapping[str, str | Path],
    *,
    weight_format: str = "int8",
    check_prompts: list[str] | None = None,
    check_tokens: int = 16,
    device: str = "CPU",
    overwrite: bool = False,
    **export_options: Any,
) -> dict[str, Any]:
    """Export ``model`` once as the base IR and each of ``adapters`` (``{name: peft folder}``) as a GenAI adapter.

    ``output`` becomes an IR directory ``LLMPipeline`` loads as it is, plus ``adapters/<name>.safetensors``
    and :data:`MANIFEST`. With ``check_prompts``, every adapter is checked against an IR with that adapter
    in its graph (greedy tokens identical, log-probability per token within :data:`LOGPROB_TOLERANCE`; a
    failed check is recorded and logged as a WARNING). ``export_options`` go to
    :func:`~nncf_elastic_lora.deploy.export.export_openvino` for the base (group size, ratio, ...).
    The directory is written atomically; returns the manifest.
    """
    model_config = model if isinstance(model, ModelConfig) else ModelConfig(name_or_path=str(model))
    output = Path(output)
    fingerprint = _check_inputs(model_config, adapters)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output.resolve()} exists; pass overwrite=True (--overwrite) to replace it")
    with atomic_directory(output, verb="export") as tmp, tempfile.TemporaryDirectory(dir=output.parent) as work:
        base = export_openvino(model_config, Path(work) / "base", weight_format=weight_format,
                               genai_device=device, compare_prompts=check_prompts, compare_tokens=check_tokens,
                               **export_options)  # fmt: skip
        for item in (Path(work) / "base").iterdir():
            shutil.move(str(item), tmp / item.name)
        (tmp / ADAPTERS_DIR).mkdir()
        entries = []
        for name, folder in adapters.items():
            entry = {"name": name, **write_genai_adapter(folder, tmp / ADAPTERS_DIR / f"{name}.safetensors",
                                                         fingerprint)}  # fmt: skip
            entry["file"] = f"{ADAPTERS_DIR}/{name}.safetensors"
            if check_prompts:
                graph = Path(work) / f"graph_{name}"
                export_openvino(model_config, graph, adapter=folder, weight_format=weight_format, genai_device=None,
                                **export_options)  # fmt: skip
                entry["check"] = check_runtime_adapter(tmp, tmp / entry["file"], graph, check_prompts, check_tokens,
                                                       device)  # fmt: skip
                if not entry["check"]["passed"]:
                    log.warning("GenAI adapter %s differs from the IR with it in the graph: %s", name, entry["check"])
            entries.append(entry)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "mode": "MODE_DYNAMIC",
                    "base": {"path": ".", "model": str(model_config.name_or_path), "fingerprint": fingerprint,
                             "weight_format": base.get("weight_format", weight_format),
                             "size_bytes": base.get("size_bytes")},
                    "adapters": entries}  # fmt: skip
        write_json(tmp / MANIFEST, manifest)
    log.info("exported %s with %d GenAI adapter(s) to %s", model_config.name_or_path, len(entries), output)
    return manifest
