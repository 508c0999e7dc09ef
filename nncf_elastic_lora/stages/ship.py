"""Shipping stages: merge the sub-adapter, export the IR, evaluate it, export references, benchmark.

:func:`merge` keeps a sparse base's zeros (SparsePEFT) or an INT4 base's grid (QA-SparsePEFT);
:func:`export` writes an OpenVINO IR through optimum-intel. In a run the shipped IR is evaluated on
the same test split as plain exports of the original dense model and benchmarked beside them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..data import load_task, train_texts
from ..deploy.benchmark import BenchmarkError, benchmark_models, paired_decode_speeds, weights_bytes
from ..deploy.export import export_openvino
from ..deploy.genai_adapters import export_genai_adapters
from ..formats import MERGE_REPORT
from ..int4 import save_quantized_weights
from ..merge import adapter_trains_on_float, merge_to_directory, read_sub_adapter_record
from ..models import load_model, model_placement
from ..outputs import fingerprint_path
from ..provenance import model_fingerprint
from ..runtime import machine_info
from ..sparsity import linear_sparsity
from .engine import RunState, Stage, completed_or, pick
from .evaluate import base_quantized_weights, evaluate_ir

log = logging.getLogger(__name__)


def merge(
    config: PipelineConfig, output: str | Path, adapter: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Merge a SparsePEFT / QA-SparsePEFT / FQ-LoRA / FQ-SparsePEFT sub-adapter into its base (``config.model``).

    SparsePEFT gives a standard Hugging Face checkpoint whose zeros are the base's; QA-SparsePEFT an
    INT4 checkpoint (dequantized weights + codes) whose codes are those the trained forward computed,
    which ``export`` ships as an INT4 IR; the FQ kinds an INT4 checkpoint under their trained scales (FQ-SparsePEFT
    keeping the sparse model's zeros). Refused, writing nothing: an adapter trained on another base
    or through other scales. Writes ``merge_report.json``; returns it.
    """
    start = time.perf_counter()
    dtype = model_placement(config.model).dtype  # the merge runs in float32, the checkpoint is in this dtype
    model, tokenizer = load_model(config.model.model_copy(update={"dtype": "float32"}))
    record = read_sub_adapter_record(adapter)
    # A peft folder without our record: its kind comes from the config.
    kind = None if record else config.bootstrapNAS.training.adapter_kind
    on_float = adapter_trains_on_float(adapter, record["adapter_kind"] if record else kind,
                                       config.bootstrapNAS.training.qa_base_weight)  # fmt: skip
    quantized = base_quantized_weights(config.model, float_source=on_float)
    base_sparsity = linear_sparsity(model)
    result = merge_to_directory(
        model=model,
        adapter_dir=adapter,
        output=output,
        adapter_kind=kind,
        quantized=quantized,
        base_fingerprint=model_fingerprint(config.model),
        tokenizer=tokenizer,
        write_quantized=lambda folder, q: save_quantized_weights(folder, q, {"merged_adapter": str(adapter)}),
        inplace=True,  # loaded here for the merge: one copy of the model, not two
        save_dtype=dtype,
        describe=lambda r: {
            "base": config.model.name_or_path,
            "precision": "int4" if r.quantized is not None else str(dtype).removeprefix("torch."),
            "sparsity": linear_sparsity(r.model),
            "base_sparsity": base_sparsity,
            # a masked merge refuses to lose a zero its mask keeps (on the float weights: the sparse model's);
            # zeros_lost counts the INT4 base's zeros it filled (fq_lora: no mask; QA and fq_sparsepeft on the float
            # weights: weights that had rounded to zero)
            "zeros_kept": r.report["zeros_lost"] == 0,
            "time_s": time.perf_counter() - start,
        },
    )
    return result.report


def calibration_texts(config: PipelineConfig) -> list[str]:
    """Calibration texts for data-aware weight compression of the export (``export.calibration``)."""
    return train_texts(config.data, config.export.calibration.task, config.export.calibration.num_samples)


def export(
    config: PipelineConfig,
    output: str | Path,
    adapter: str | Path | None = None,
    save_merged: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``config.model`` (plus ``adapter``) to OpenVINO IR as ``config.export`` says.

    Calibration texts come from ``export.calibration`` (train split), the parity prompts from the
    first test prompts of ``data.task``; the IR directory gets ``export_report.json`` and ``parity.json``.
    """
    ex = config.export
    data_aware = ex.data_aware or ex.awq or ex.scale_estimation or ex.activations == "int8"
    prompts = None
    if ex.parity.num_prompts:
        prompts = [e.prompt for e in load_task(config.data).test[: ex.parity.num_prompts]]
    return export_openvino(
        config.model,
        output,
        adapter=adapter,
        merge_adapter=ex.merge_adapter,
        weight_format=ex.weight_format,
        group_size=ex.group_size,
        ratio=ex.ratio,
        sym=ex.sym,
        awq=ex.awq,
        scale_estimation=ex.scale_estimation,
        calibration=calibration_texts(config) if data_aware else None,
        group_size_fallback=ex.group_size_fallback,
        backup_precision=ex.backup_precision,
        activations=ex.activations,
        save_merged=save_merged,
        genai_device=ex.device,
        compare_prompts=prompts,
        compare_tokens=ex.parity.max_new_tokens,
        overwrite=overwrite,
    )


def export_genai(
    config: PipelineConfig, output: str | Path, adapters: dict[str, str | Path], overwrite: bool = False
) -> dict[str, Any]:
    """Export ``config.model`` once as the base IR and each of ``adapters`` as an OpenVINO GenAI runtime adapter.

    The base is compressed as ``config.export`` says (an INT4 base ships its own codes); every adapter is
    checked against an IR with it in the graph on the first test prompts of ``data.task``
    (``export.parity``). Writes ``genai_adapters.json`` (the manifest) beside the IR; returns it.
    """
    ex = config.export
    prompts = [e.prompt for e in load_task(config.data).test[: ex.parity.num_prompts]] or None
    return export_genai_adapters(
        config.model, output, adapters, weight_format=ex.weight_format, check_prompts=prompts,
        check_tokens=ex.parity.max_new_tokens, device=ex.device, overwrite=overwrite, group_size=ex.group_size,
        ratio=ex.ratio, sym=ex.sym, group_size_fallback=ex.group_size_fallback, backup_precision=ex.backup_precision,
    )  # fmt: skip


class Merge(Stage):
    """SparsePEFT / QA-SparsePEFT / FQ kinds: the chosen sub-adapter merged into the base, zeros (and INT4) kept."""

    name, title, section = "merge", "merge sub-adapter", "merge"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {**run.base_inputs, "adapter": fingerprint_path(run.adapter)}

    def compute(self, run: RunState) -> Any:
        out = run.output / "merged_model"
        return completed_or(
            out / MERGE_REPORT,
            run.resume,
            lambda: merge(run.with_model(run.base), out, run.adapter, progress=run.progress),
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.merged = run.output / "merged_model"
        run.artifacts["merged_model"] = str(run.merged)


class Export(Stage):
    """The artifact that ships: the merged model, or the base with the sub-adapter as a branch."""

    name, title, section = "export", "export to OpenVINO", "export"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        if run.merged is not None:
            return {"merged": fingerprint_path(run.merged)}
        return {**run.base_inputs, "adapter": fingerprint_path(run.adapter) if run.adapter else None}

    def compute(self, run: RunState) -> Any:
        out = run.output / "openvino"
        model, adapter = (run.model_at(run.merged), None) if run.merged else (run.base, run.adapter)
        return completed_or(
            out / "export_report.json", run.resume, lambda: export(run.with_model(model), out, adapter)
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.ir = run.output / "openvino"
        run.artifacts["openvino"] = str(run.ir)

    def summary(self, run: RunState, result: Any) -> Any:
        return pick(result, ("weight_format", "adapter", "ir_sparsity", "runtime_options", "size_bytes", "parity",
                             "export_s"))


def shipped_label(run: RunState) -> str:
    """The row label of the IR that ships, e.g. 'OpenVINO IR (int8, heuristic sub-adapter)'."""
    fmt = run.results["export"]["weight_format"]
    if run.merged is not None:
        return f"OpenVINO IR ({fmt}, {run.adapter_label} sub-adapter {run.merged_label})"
    if run.adapter is not None:
        return f"OpenVINO IR ({fmt}, {run.adapter_label} sub-adapter)"
    return f"OpenVINO IR ({fmt})"


def plain_label(fmt: str) -> str:
    """The row label of the plain alternative's IR in ``fmt`` (:mod:`~nncf_elastic_lora.stages.plain`)."""
    return f"plain LoRA, merged, {fmt} IR"


class EvaluateIR(Stage):
    """Score the shipped IR (``reference`` None) or a dense reference IR on the run's tasks."""

    def __init__(self, name: str, title: str, reference: str | None = None):
        self.name, self.title, self.reference = name, title, reference

    def _dir(self, run: RunState) -> Path:
        return run.references[self.reference] if self.reference else run.ir

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {"ir": fingerprint_path(self._dir(run))}

    def compute(self, run: RunState) -> Any:
        return [r.to_dict() for r in evaluate_ir(run.config, self._dir(run), run.tasks, run.progress)]

    def apply(self, run: RunState, result: Any) -> None:
        label = f"dense OpenVINO IR ({self.reference})" if self.reference else shipped_label(run)
        run.evaluation[label] = result


class ExportReference(Stage):
    """A plain export of the original dense model: the peer every shipped IR is measured against."""

    def __init__(self, weight_format: str):
        self.weight_format = weight_format
        self.name, self.title = f"reference_{weight_format}", f"export dense {weight_format} IR"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {"model": model_fingerprint(run.config.model)}

    def _dir(self, run: RunState) -> Path:
        return run.output / "reference" / f"dense_{self.weight_format}"

    def compute(self, run: RunState) -> Any:
        plain = {"merge_adapter": False, "awq": False, "scale_estimation": False, "data_aware": False}
        ex = run.config.export.model_copy(update={"weight_format": self.weight_format, **plain, "ratio": 1.0})
        config = run.config.model_copy(update={"export": ex})
        out = self._dir(run)
        return completed_or(out / "export_report.json", run.resume, lambda: export(config, out, None))

    def apply(self, run: RunState, result: Any) -> None:
        run.references[self.weight_format] = self._dir(run)
        run.artifacts[f"reference_{self.weight_format}"] = str(self._dir(run))


def primary_score(results: list[dict[str, Any]], task: str) -> tuple[str, float] | None:
    """``(metric, value)`` of ``task``: accuracy for multiple choice, exact match for generation."""
    for r in results:
        if r["task"] == task:
            for metric in ("acc", "exact_match", "acc_norm"):
                if metric in r["metrics"]:
                    return metric, r["metrics"][metric]
    return None


def benchmark_rows(run: RunState, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every benchmarked IR with its size, accuracy and decode speed against the first reference."""
    rows = []
    data_task = run.config.data.task  # scored on the training task if evaluated, else the first evaluated one
    task = data_task if data_task in run.tasks else next(iter(run.tasks))
    reference = results[1]  # [shipped, *references]: the first reference is the peer of every ratio
    ref_speed = {b["batch_size"]: b["decode_tokens_per_s"] for b in reference["batches"]}
    plain = {plain_label(fmt) for fmt in run.plain}
    for r in results:
        score = primary_score(run.evaluation.get(r["label"], []), task)
        speed = {b["batch_size"]: b["decode_tokens_per_s"] for b in r["batches"]}
        rows.append(
            {
                "label": r["label"],
                "path": r["model"],
                "shipped": r is results[0],
                "plain": r["label"] in plain,
                "weights_bytes": r["weights_bytes"],
                "task": task,
                "split": run.config.evaluation.split,
                "metric": score[0] if score else None,
                "score": score[1] if score else None,
                "decode_tokens_per_s": speed,
                "speedup": {b: speed[b] / ref_speed[b] for b in speed if ref_speed.get(b)},
                "genai_tpot_ms": {b["batch_size"]: b["genai"]["tpot_ms"] for b in r["batches"] if "genai" in b},
                "genai_disagree": [f"{k} b{b['batch_size']}" for b in r["batches"] for k in b.get("genai", {}).get("disagree", [])],
            }
        )
    return rows


def _paired(run: RunState, models: list[tuple[str, Path]], machine: dict[str, Any]) -> dict[str, Any] | None:
    """The paired pass of ``benchmark.paired_rounds`` (:func:`paired_decode_speeds`), or why it was skipped; None
    when off."""
    b = run.config.benchmark
    if b.paired_rounds == 0:
        return None
    total = sum(weights_bytes(path) for _, path in models) / 2**30
    skipped = None
    if machine.get("memory_gib") and total > machine["memory_gib"] / 2:
        skipped = (f"the {len(models)} IRs' weights ({total:.1f} GiB) exceed half this machine's memory "
                   f"({machine['memory_gib']} GiB): they are not loaded together")  # fmt: skip
    else:
        try:
            return paired_decode_speeds(models, rounds=b.paired_rounds, prompt_tokens=b.prompt_tokens,
                                        new_tokens=b.new_tokens, device=run.config.export.device,
                                        properties=dict(run.config.export.runtime_properties))  # fmt: skip
        except BenchmarkError as exc:  # the pooled figures stand; the verdict says it read them instead
            skipped = f"it failed: {str(exc).splitlines()[0]}"
    log.warning("paired benchmark skipped: %s; the verdict reads the pooled medians (about ± 0.1 here)", skipped)
    return {"skipped": skipped}


class Benchmark(Stage):
    """GenAI decode speed of the shipped IR, the dense references and the plain alternative, one process each, then
    at batch 1 all in one process, paired round by round (``benchmark.paired_rounds``)."""

    name, title, section = "benchmark", "benchmark IRs", "benchmark"

    def _models(self, run: RunState) -> list[tuple[str, Path]]:
        return [
            (shipped_label(run), run.ir),
            *((f"dense OpenVINO IR ({fmt})", path) for fmt, path in run.references.items()),
            *((plain_label(fmt), path) for fmt, path in run.plain.items()),
        ]

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {label: fingerprint_path(path) for label, path in self._models(run)}

    def compute(self, run: RunState) -> Any:
        b = run.config.benchmark
        results = benchmark_models(
            [(label, path, "genai") for label, path in self._models(run)],
            device=run.config.export.device,
            properties=dict(run.config.export.runtime_properties),
            prompt_tokens=b.prompt_tokens,
            new_tokens=b.new_tokens,
            batch_sizes=list(b.batch_sizes),
            repeats=b.repeats,
            warmup=b.warmup,
            rounds=b.rounds,
        )
        machine = machine_info()
        return {"machine": machine, "results": results, "paired": _paired(run, self._models(run), machine)}

    def summary(self, run: RunState, result: Any) -> Any:
        return {"machine": result["machine"], "rows": benchmark_rows(run, result["results"]),
                "paired": result.get("paired")}
