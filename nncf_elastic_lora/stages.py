"""A run is a list of named stages; a method is the list its config selects.

Each stage reads what earlier stages left in the :class:`RunState` (the current base, the chosen
sub-adapter, the IR), does one job (usually writing one directory atomically), and returns a
JSON-able result. :func:`execute` caches that result in ``stages/<name>.json`` with fingerprints of
what the stage read, so ``run --resume`` reuses a finished stage whose inputs have not changed, and
``apply`` replays its effect on the state either way. The lists, from :func:`method_stages`::

    Shears        eval_dense sparsify eval_sparse train eval_subnets [search eval_searched] export eval_ir
    LoNAS         eval_dense reorder train eval_subnets [[latency_model] search eval_searched] extract
                  eval_merged export ...
    + QA-SparsePEFT   eval_dense reorder quantize_base eval_int4 train ... extract (INT4 codes sliced) ...
    SQFT          ... sparsify eval_sparse quantize_base eval_int4 train ... export (INT4 base + adapter)
    + SparsePEFT  ... train eval_subnets [search ...] merge eval_merged export (the merged model) ...
    + QA-SparsePEFT   the same on the INT4 base; merge writes INT4 codes, export ships them
    every export  ... eval_ir reference_<fmt> eval_reference_<fmt> benchmark

Adding a method adds stages here, not branches in :func:`nncf_elastic_lora.pipeline.run_pipeline`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelConfig, PipelineConfig
from .data import TaskData
from .outputs import OutputExistsError, changed_inputs, fingerprint_path, write_json
from .provenance import model_fingerprint

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the stages of one run hand to each other."""

    config: PipelineConfig
    output: Path
    resume: bool
    progress: bool
    tasks: dict[str, TaskData]
    base: ModelConfig  # the model adapters train on and export ships: dense, sparse, then INT4
    base_inputs: dict[str, str | None]  # fingerprints of ``base``
    base_label: str = "dense"
    super_adapter: Path | None = None
    adapter: Path | None = None  # the chosen sub-adapter
    adapter_label: str | None = None  # 'heuristic' or the search algorithm
    merged: Path | None = None  # base + sub-adapter merged (SparsePEFT, QA-SparsePEFT), or extracted (LoNAS)
    merged_label: str = "merged"  # 'extracted' for LoNAS
    latency_model: Path | None = None  # LoNAS search cost 'latency'
    ir: Path | None = None
    references: dict[str, Path] = field(default_factory=dict)  # dense IRs by weight format
    evaluation: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # stage name -> its result
    times: dict[str, float] = field(default_factory=dict)  # stage title -> seconds
    artifacts: dict[str, str] = field(default_factory=dict)

    def model_at(self, path: Path) -> ModelConfig:
        return self.config.model.model_copy(update={"name_or_path": str(path)})

    def with_model(self, model: ModelConfig) -> PipelineConfig:
        return self.config.model_copy(update={"model": model})

    @property
    def method_label(self) -> str:
        """'sparse+NLS', 'sparse INT4+QA-SparsePEFT', ...: what trained the adapter, on what."""
        t = self.config.bootstrapNAS.training
        kind = {"lora": "", "sparsepeft": " SparsePEFT", "qa_sparsepeft": " QA-SparsePEFT"}[t.adapter_kind]
        algo = "NLS" if t.algorithm == "nls" else "LoRA"
        return f"{self.base_label}+{algo}{kind}" if self.base_label != "dense" else f"{algo}{kind}"


class Stage:
    """One step of a run. Subclasses set ``name`` (cache key) and ``title`` (time table row)."""

    name: str
    title: str

    def inputs(self, run: RunState) -> dict[str, str | None]:
        """Fingerprints of what the stage reads; a cached result of other inputs is refused."""
        return dict(run.base_inputs)

    def compute(self, run: RunState) -> Any:
        raise NotImplementedError

    def apply(self, run: RunState, result: Any) -> None:
        """The stage's effect on the run, for a fresh and for a cached result alike."""


def cached_stage(
    output: Path, name: str, fn, resume: bool, inputs: dict[str, str | None] | None = None
) -> tuple[Any, float, bool]:
    """Run ``fn`` with its result cached as ``stages/<name>.json``; reuse it when resuming.

    ``inputs`` are fingerprints of what the stage reads; a cached result of other inputs is refused.
    Returns ``(result, seconds, reused)``.
    """
    path = output / "stages" / f"{name}.json"
    inputs = inputs or {}
    if resume and path.is_file():
        cached = json.loads(path.read_text())
        changed = changed_inputs(cached.get("inputs", {}), inputs)
        if changed:
            raise OutputExistsError(
                f"cannot resume stage {name!r} in {output}: its inputs changed since it ran "
                f"({', '.join(changed)}); use a new --output or --overwrite"
            )
        log.info("stage %s: reusing %s", name, path)
        return cached["result"], cached["time_s"], True
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    write_json(path, {"result": result, "time_s": elapsed, "inputs": inputs})
    return result, elapsed, False


def completed_or(report: Path, resume: bool, make) -> Any:
    """A directory stage: on resume, the report of a directory already written (atomically), else make it."""
    if resume and report.is_file():
        return json.loads(report.read_text())
    return make()


def execute(stages: list[Stage], run: RunState) -> RunState:
    """Run ``stages`` in order (reusing cached ones on resume) and apply each result to ``run``."""
    for stage in stages:
        log.info("stage %s: %s", stage.name, stage.title)
        result, seconds, _ = cached_stage(
            run.output, stage.name, lambda s=stage: s.compute(run), run.resume, stage.inputs(run)
        )
        run.results[stage.name] = result
        run.times[stage.title] = seconds
        stage.apply(run, result)
    return run


# ---------------------------------------------------------------------------------------- stages


def _evaluate_torch(run: RunState, model_config: ModelConfig) -> list[dict[str, Any]]:
    from .models import load_model
    from .pipeline import evaluate_model

    model, tokenizer = load_model(model_config)
    return [r.to_dict() for r in evaluate_model(model, tokenizer, run.config, run.tasks, run.progress)]


class EvaluateBase(Stage):
    """Score the current base (dense, sparse, INT4) on the evaluation tasks."""

    def __init__(self, name: str, title: str):
        self.name, self.title = name, title

    def compute(self, run: RunState) -> Any:
        return _evaluate_torch(run, run.base)

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation[run.base_label] = result


class NewBase(Stage):
    """A stage that turns the current base into a new one in ``directory`` (sparse, then INT4)."""

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
    name, title, directory = "sparsify", "sparsify", "sparse_model"

    def make(self, config: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
        from .pipeline import sparsify

        return sparsify(config, out, progress)

    def label(self, run: RunState) -> str:
        return "sparse"


class QuantizeBase(NewBase):
    name, title, directory = "quantize_base", "quantize base to INT4", "int4_model"

    def make(self, config: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
        from .pipeline import quantize

        return quantize(config, out, progress)

    def label(self, run: RunState) -> str:
        return "sparse INT4" if run.base_label == "sparse" else "INT4"


class Reorder(NewBase):
    """LoNAS: the base with every MLP's channels (and KV groups) ordered most important first (the same function)."""

    name, title, directory = "reorder", "order MLP channels", "ordered_model"

    def make(self, config: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
        from .pipeline import reorder

        return reorder(config, out, progress)

    def label(self, run: RunState) -> str:
        return run.base_label  # the function is the base's: its scores are the base's


class Train(Stage):
    name, title = "train", "train"

    def compute(self, run: RunState) -> Any:
        from .pipeline import train

        return train(run.with_model(run.base), run.output / "nls", resume=run.resume, progress=run.progress)

    def apply(self, run: RunState, result: Any) -> None:
        run.super_adapter = run.output / "nls" / "super_adapter"
        run.adapter, run.adapter_label = run.output / "nls" / "sub_adapter_heuristic", "heuristic"
        run.artifacts.update(super_adapter=str(run.super_adapter), sub_adapter=str(run.adapter))


def _adapter_inputs(run: RunState) -> dict[str, str | None]:
    return {**run.base_inputs, "super_adapter": fingerprint_path(run.super_adapter)}


class EvaluateSubnets(Stage):
    name, title = "eval_subnets", "evaluate sub-adapters"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return _adapter_inputs(run)

    def compute(self, run: RunState) -> Any:
        from .pipeline import evaluate_subnets, load_supernet

        supernet, tokenizer = load_supernet(run.base, run.super_adapter)
        return evaluate_subnets(
            supernet, tokenizer, run.config, run.config.evaluation.subnets, run.tasks, run.progress
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation.update({f"{run.method_label} ({name})": r for name, r in result.items()})


class FitLatency(Stage):
    """LoNAS, search cost 'latency': sub-networks of the base measured on this machine, a line fitted."""

    name, title, directory = "latency_model", "fit latency model", "latency_model"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return dict(run.base_inputs)

    def compute(self, run: RunState) -> Any:
        from .pipeline import fit_latency

        out = run.output / self.directory
        return completed_or(
            out / "latency_model.json",
            run.resume,
            lambda: fit_latency(run.with_model(run.base), out, run.progress),
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.latency_model = run.output / self.directory / "latency_model.json"
        run.artifacts["latency_model"] = str(run.latency_model)


class Search(Stage):
    name = "search"

    def __init__(self, algorithm: str):
        self.title = f"search ({algorithm})"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        latency = fingerprint_path(run.latency_model) if run.latency_model else None
        return {**_adapter_inputs(run), "latency_model": latency}

    def compute(self, run: RunState) -> Any:
        from .pipeline import search

        return search(
            run.with_model(run.base),
            run.output / "search",
            run.super_adapter,
            run.progress,
            run.latency_model,
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.adapter, run.adapter_label = run.output / "search" / "sub_adapter", result["algorithm"]
        run.artifacts["searched_sub_adapter"] = str(run.adapter)


class EvaluateSearched(Stage):
    name, title = "eval_searched", "evaluate searched"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return _adapter_inputs(run)

    def compute(self, run: RunState) -> Any:
        from .pipeline import evaluate_subnets, load_supernet

        supernet, tokenizer = load_supernet(run.base, run.super_adapter)
        chosen = {run.adapter_label: run.results["search"]["chosen"]}
        return evaluate_subnets(supernet, tokenizer, run.config, chosen, run.tasks, run.progress)[
            run.adapter_label
        ]

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation[f"{run.method_label} ({run.adapter_label})"] = result


class Merge(Stage):
    """SparsePEFT / QA-SparsePEFT: the chosen sub-adapter merged into the base, zeros (and INT4) kept."""

    name, title = "merge", "merge sub-adapter"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {**run.base_inputs, "adapter": fingerprint_path(run.adapter)}

    def compute(self, run: RunState) -> Any:
        from .pipeline import merge

        out = run.output / "merged_model"
        return completed_or(
            out / "merge_report.json",
            run.resume,
            lambda: merge(run.with_model(run.base), out, run.adapter, progress=run.progress),
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.merged = run.output / "merged_model"
        run.artifacts["merged_model"] = str(run.merged)


class Extract(Stage):
    """LoNAS: the chosen sub-network merged and sliced into a physically smaller checkpoint."""

    name, title = "extract", "extract sub-network"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {**_adapter_inputs(run), "adapter": fingerprint_path(run.adapter)}

    def compute(self, run: RunState) -> Any:
        from .pipeline import extract

        out = run.output / "extracted_model"
        return completed_or(
            out / "extract_report.json",
            run.resume,
            lambda: extract(run.with_model(run.base), out, run.super_adapter, str(run.adapter)),
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.merged, run.merged_label = run.output / "extracted_model", "extracted"
        run.artifacts["extracted_model"] = str(run.merged)


class EvaluateMerged(Stage):
    name, title = "eval_merged", "evaluate merged"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {"merged": fingerprint_path(run.merged)}

    def compute(self, run: RunState) -> Any:
        return _evaluate_torch(run, run.model_at(run.merged))

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation[f"{run.method_label} ({run.adapter_label}, {run.merged_label})"] = result


class Export(Stage):
    """The artifact that ships: the merged model, or the base with the sub-adapter as a branch."""

    name, title = "export", "export to OpenVINO"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        if run.merged is not None:
            return {"merged": fingerprint_path(run.merged)}
        return {**run.base_inputs, "adapter": fingerprint_path(run.adapter) if run.adapter else None}

    def compute(self, run: RunState) -> Any:
        from .pipeline import export

        out = run.output / "openvino"
        model, adapter = (run.model_at(run.merged), None) if run.merged else (run.base, run.adapter)
        return completed_or(
            out / "export_report.json", run.resume, lambda: export(run.with_model(model), out, adapter)
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.ir = run.output / "openvino"
        run.artifacts["openvino"] = str(run.ir)


def shipped_label(run: RunState) -> str:
    """The row label of the IR that ships, e.g. 'OpenVINO IR (int8, heuristic sub-adapter)'."""
    fmt = run.results["export"]["weight_format"]
    if run.merged is not None:
        return f"OpenVINO IR ({fmt}, {run.adapter_label} sub-adapter {run.merged_label})"
    if run.adapter is not None:
        return f"OpenVINO IR ({fmt}, {run.adapter_label} sub-adapter)"
    return f"OpenVINO IR ({fmt})"


class EvaluateIR(Stage):
    def __init__(self, name: str, title: str, reference: str | None = None):
        self.name, self.title, self.reference = name, title, reference

    def _dir(self, run: RunState) -> Path:
        return run.references[self.reference] if self.reference else run.ir

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {"ir": fingerprint_path(self._dir(run))}

    def compute(self, run: RunState) -> Any:
        from .pipeline import evaluate_ir

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
        from .pipeline import export

        ex = run.config.export.model_copy(
            update={
                "weight_format": self.weight_format,
                "merge_adapter": False,
                "awq": False,
                "scale_estimation": False,
                "data_aware": False,
                "ratio": 1.0,
            }
        )
        config = run.config.model_copy(update={"export": ex})
        out = self._dir(run)
        return completed_or(out / "export_report.json", run.resume, lambda: export(config, out, None))

    def apply(self, run: RunState, result: Any) -> None:
        run.references[self.weight_format] = self._dir(run)
        run.artifacts[f"reference_{self.weight_format}"] = str(self._dir(run))


class Benchmark(Stage):
    """GenAI decode speed of the shipped IR and the dense references, in one process each, same run."""

    name, title = "benchmark", "benchmark IRs"

    def _models(self, run: RunState) -> list[tuple[str, Path]]:
        return [(shipped_label(run), run.ir)] + [
            (f"dense OpenVINO IR ({fmt})", path) for fmt, path in run.references.items()
        ]

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {label: fingerprint_path(path) for label, path in self._models(run)}

    def compute(self, run: RunState) -> Any:
        from .deploy.benchmark import benchmark_models
        from .runtime import machine_info

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
        )
        return {"machine": machine_info(), "results": results}


def method_stages(config: PipelineConfig) -> list[Stage]:
    """The stages ``config`` selects, in order."""
    bnas, ev, ex = config.bootstrapNAS, config.evaluation, config.export
    stages: list[Stage] = []
    if ev.baseline:
        stages.append(EvaluateBase("eval_dense", "evaluate dense"))
    channels, heads = bnas.elasticity.channel_spec(), bnas.elasticity.head_spec()  # LoNAS (Mode B)
    ordered = channels is not None and (
        channels.order == "importance" or (heads and heads.order == "importance")
    )
    if bnas.enabled and ordered:
        stages.append(Reorder())  # before any INT4 quantization: its groups then follow the order
    if config.sparsity.method != "none":
        stages.append(Sparsify())
        if ev.baseline:
            stages.append(EvaluateBase("eval_sparse", "evaluate sparse"))
    if config.quantization.weight_format == "int4":
        stages.append(QuantizeBase())
        if ev.baseline:
            stages.append(EvaluateBase("eval_int4", "evaluate INT4 base"))
    if bnas.enabled:
        stages += [Train(), EvaluateSubnets()]
        if bnas.search.algorithm != "heuristic":
            if bnas.search.cost == "latency":
                stages.append(FitLatency())
            stages += [Search(bnas.search.algorithm), EvaluateSearched()]
        if channels is not None:
            stages += [Extract(), EvaluateMerged()]
        elif bnas.training.adapter_kind != "lora":
            stages += [Merge(), EvaluateMerged()]
    if ex.enabled:
        stages += [Export(), EvaluateIR("eval_ir", "evaluate IR")]
        if config.benchmark.enabled:
            for fmt in config.benchmark.references:
                stages += [
                    ExportReference(fmt),
                    EvaluateIR(f"eval_reference_{fmt}", f"evaluate dense {fmt} IR", fmt),
                ]
            stages.append(Benchmark())
    return stages
