"""The public one-call API: every stage as a function, and the whole pipeline.

Every stage reads and writes a directory, so it can be resumed or replaced by the user's own tool:
``sparsify`` writes a normal Hugging Face checkpoint (plus ``report.json``), ``evaluate`` writes
``eval.json`` and ``eval.md``, ``run`` chains them under one output directory and writes
``report.json`` and ``report.md``. The functions live with their stages in
:mod:`nncf_elastic_lora.stages`; this module keeps the import path users and the CLI rely on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import PipelineConfig
from .outputs import write_json, write_text
from .provenance import model_fingerprint
from .report.plot import plot_accuracy_vs_speed
from .report.render import export_facts, print_summary, to_markdown
from .stages import RunState, check_method, execute, method_stages, run_report
from .stages.bases import quantize, sparsify
from .stages.evaluate import (
    eval_splits,
    evaluate_genai,
    evaluate_harness,
    evaluate_ir,
    evaluate_model,
    evaluation_examples,
    load_for_eval,
    write_eval,
)
from .stages.lonas import extract, fit_latency, reorder, subnet_config
from .stages.nls import (
    base_quantized_weights,
    build_supernet,
    check_trainable_base,
    evaluate_subnets,
    latency_predictor,
    load_supernet,
    train,
)
from .stages.plain import plain_reference, plain_validation_quality
from .stages.search import search
from .stages.ship import calibration_texts, export, export_genai, merge

__all__ = [
    "base_quantized_weights",
    "build_supernet",
    "calibration_texts",
    "check_method",
    "check_trainable_base",
    "eval_splits",
    "evaluate_genai",
    "evaluate_harness",
    "evaluation_examples",
    "evaluate_ir",
    "evaluate_model",
    "load_for_eval",
    "evaluate_subnets",
    "export",
    "export_genai",
    "export_facts",
    "extract",
    "fit_latency",
    "latency_predictor",
    "load_supernet",
    "merge",
    "plain_reference",
    "plain_validation_quality",
    "print_summary",
    "quantize",
    "reorder",
    "run_pipeline",
    "search",
    "sparsify",
    "subnet_config",
    "train",
    "write_eval",
]


def run_pipeline(
    config: PipelineConfig, output: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the stages the config selects (:func:`~nncf_elastic_lora.stages.method_stages`) and report.

    Completed stages are reused with ``resume`` (each writes its result atomically); an
    interrupted training continues from its last checkpoint. Writes ``report.json``, ``report.md``
    and, when IRs were benchmarked, ``accuracy_vs_speed.png``.
    """
    check_method(config)
    output = Path(output)
    stages = method_stages(config)
    run = RunState(
        config=config,
        output=output,
        resume=resume,
        progress=progress,
        tasks=eval_splits(config),
        base=config.model,
        base_inputs={"model": model_fingerprint(config.model)},
    )
    execute(stages, run)
    report = run_report(run, stages)
    if report.get("benchmark"):
        verdict = ((report.get("plain") or {}).get("verdict") or {}).get("line")
        plot = plot_accuracy_vs_speed(report["benchmark"]["rows"], output / "accuracy_vs_speed.png", verdict)
        report["artifacts"]["plot"] = str(plot) if plot else None
    write_json(output / "report.json", report)
    write_text(output / "report.md", to_markdown(report))
    return report
