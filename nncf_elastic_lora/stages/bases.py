"""Base stages: turn the model adapters train on into a sparse (Wanda, magnitude) or INT4 (NNCF) base.

Each writes a Hugging Face checkpoint with ``report.json`` (the INT4 base adds its codes), so any
later stage, or the user's own tool, can start from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..config import PipelineConfig
from ..data import load_task, train_texts
from ..formats import QUANTIZATION_JSON, QUANTIZED_WEIGHTS, is_quantized_base
from ..int4 import quantize_base, save_quantized_weights
from ..models import load_model, model_placement, resolve_model_dir
from ..outputs import fingerprint_path, save_checkpoint
from ..provenance import model_fingerprint
from ..sparsity import calibration_batches, linear_sparsity, sparsify_model
from .engine import RunState, Stage, completed_or, pick

log = logging.getLogger(__name__)

# Why each verb that rewrites weights cannot take an INT4 checkpoint (its codes, scales and zero points).
_INT4_REWRITES = {
    "sparsify": "pruning its dequantized weights would write a float checkpoint whose zeros its INT4 codes do "
    "not have (SQFT prunes first, then quantizes)",
    "quantize": "quantizing it again would round its already-rounded weights with new scales and replace the "
    "codes and scales an adapter may have been trained through",
    "reorder": "permuting its MLP channels would move down_proj's input columns across its INT4 quantization "
    "groups, so its codes could not be kept",
}


def refuse_int4_rewrite(config: PipelineConfig, verb: str) -> None:
    """Refuse to run ``verb`` on an INT4 checkpoint (an INT4 base or a merged exact-codes one)."""
    base = resolve_model_dir(config.model)
    if not is_quantized_base(base):
        return
    raise ValueError(
        f"{base} is an INT4 checkpoint (it holds {QUANTIZATION_JSON} / {QUANTIZED_WEIGHTS}): `{verb}` cannot "
        f"keep its codes: {_INT4_REWRITES[verb]}; run `{verb}` on the float model it was made from"
        + (" (to change the group size, quantize that model with --group-size)" if verb == "quantize" else "")
    )


def sparsify(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """Load the configured model, sparsify it, and write an HF checkpoint with ``report.json``."""
    sp = config.sparsity
    refuse_int4_rewrite(config, "sparsify")
    # Wanda moves one decoder block at a time to the device; magnitude pruning runs where the model is.
    on_device = sp.method != "wanda"
    model, tokenizer = load_model(config.model, on_device=on_device)
    calibration = None
    calib_record: dict[str, Any] = {}
    if sp.method == "wanda":
        cal = sp.calibration
        task = load_task(config.data, cal.task)
        calibration = calibration_batches(task.train, tokenizer, cal.num_samples, cal.seq_len, cal.seed)
        calib_record = {**cal.model_dump(), "task": task.name, "split": "train", "split_record": task.record}
    report = sparsify_model(
        model,
        method=sp.method,
        ratio=sp.ratio,
        pattern=sp.pattern,
        target_modules=sp.target_modules,
        calibration=calibration,
        progress=progress,
        device=model_placement(config.model).device,
    )
    model.to("cpu")  # saved from CPU memory, in the model's dtype
    result = {
        "model": config.model.name_or_path,
        **report.to_dict(),
        "calibration": {**report.calibration, **calib_record},
    }
    save_checkpoint(output, model, tokenizer, verb="sparsify", reports={"report.json": result})
    log.info(
        "sparsified %s: %.2f%% of targeted weights zeroed", config.model.name_or_path, 100 * report.sparsity
    )
    return result


def quantize(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """INT4 base (SQFT): quantize ``config.model``'s target linears with NNCF, write an INT4 checkpoint.

    The checkpoint holds the dequantized weights (any Hugging Face tool loads it; its function is
    the INT4 model's) plus the codes, scales and zero points (``quantized_weights.safetensors``) that
    QA-SparsePEFT trains through and export ships. Every zero of a sparse base stays zero.
    """
    q = config.quantization
    refuse_int4_rewrite(config, "quantize")
    start = time.perf_counter()
    model, tokenizer = load_model(config.model.model_copy(update={"dtype": "float32"}))
    # Counts, not masks (a mask per weight would cost a quarter of a float32 model): every zero stays zero.
    zeros_before = {n: int((m.weight == 0).sum()) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    texts = None
    if q.awq or q.scale_estimation:
        texts = train_texts(config.data, q.calibration.task, q.calibration.num_samples)
    qweights = quantize_base(
        model,
        target_modules=q.target_modules,
        group_size=q.group_size,
        sym=q.sym,
        group_size_fallback=q.group_size_fallback,
        calibration=texts,
        tokenizer=tokenizer,
        awq=q.awq,
        scale_estimation=q.scale_estimation,
        progress=progress,
    )
    # quantize_base checks that every zero stayed zero; small weights may also have rounded to zero.
    new_zeros = sum(int((model.get_submodule(n).weight == 0).sum()) - zeros_before[n] for n in qweights)
    report = {
        "model": config.model.name_or_path,
        "bits": 4,
        "group_size": q.group_size,
        "group_sizes": sorted({w.group_size for w in qweights.values()}),
        "sym": q.sym,
        "awq": q.awq,
        "scale_estimation": q.scale_estimation,
        "calibration_samples": len(texts or []),
        "modules": sorted(qweights),
        "zeros_kept": True,
        "new_zeros": new_zeros,
        "sparsity": linear_sparsity(model),
        "time_s": time.perf_counter() - start,
    }
    save_checkpoint(
        output,
        model,
        tokenizer,
        verb="quantize",
        reports={"report.json": report},
        extra=lambda tmp: save_quantized_weights(
            tmp, qweights, {"source": config.model.name_or_path, "source_model": config.model.model_dump(mode="json"),
                            "source_fingerprint": model_fingerprint(config.model)},  # fq_lora reloads the float weights
        ),
    )
    log.info(
        "quantized %d linears of %s to INT4 (group %d)", len(qweights), config.model.name_or_path, q.group_size
    )
    return report


class NewBase(Stage):
    """A stage that turns the current base into a new one in ``directory`` (sparse, INT4, ordered)."""

    directory: str

    def make(self, config: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
        raise NotImplementedError

    def label(self, run: RunState) -> str:
        raise NotImplementedError

    def compute(self, run: RunState) -> Any:
        out = run.output / self.directory
        return completed_or(
            out / "report.json", run.resume, lambda: self.make(run.with_model(run.base), out, run.progress)
        )

    def apply(self, run: RunState, result: Any) -> None:
        out = run.output / self.directory
        run.base, run.base_inputs, run.base_label = (
            run.model_at(out),
            {"base": fingerprint_path(out)},
            self.label(run),
        )
        run.artifacts[self.directory] = str(out)


class Sparsify(NewBase):
    name, title, directory, section = "sparsify", "sparsify", "sparse_model", "sparsity"

    def make(self, config: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
        return sparsify(config, out, progress)

    def label(self, run: RunState) -> str:
        return "sparse"

    def summary(self, run: RunState, result: Any) -> Any:
        return pick(result, ("method", "ratio", "pattern", "sparsity", "model_sparsity", "time_s"))


class QuantizeBase(NewBase):
    name, title, directory, section = "quantize_base", "quantize base to INT4", "int4_model", "quantization"

    def make(self, config: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
        return quantize(config, out, progress)

    def label(self, run: RunState) -> str:
        return "sparse INT4" if run.base_label == "sparse" else "INT4"

    def summary(self, run: RunState, result: Any) -> Any:
        return pick(result, ("bits", "group_size", "sym", "modules", "zeros_kept", "time_s"))
