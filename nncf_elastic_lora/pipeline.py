"""One-call entry points for each stage, and the whole pipeline.

Every stage reads and writes a directory, so it can be resumed or replaced by the user's own tool:
``sparsify`` writes a normal Hugging Face checkpoint (plus ``report.json``), ``evaluate`` writes
``eval.json`` and ``eval.md``, ``run`` chains them under one output directory and writes
``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .config import ModelConfig, PipelineConfig
from .data import TaskData, eval_only_sizes, load_examples, load_task, split_examples
from .evaluation import CausalLM, TaskResult, evaluate_task, results_table
from .models import load_model
from .reports import atomic_directory, markdown_table, print_table, write_json, write_text
from .sparsity import calibration_batches, sparsify_model

log = logging.getLogger(__name__)


def eval_splits(config: PipelineConfig) -> dict[str, TaskData]:
    """The data each evaluated task is scored on; the training task keeps its own splits."""
    out = {}
    for task in config.evaluation.tasks or [config.data.task]:
        if task == config.data.task:
            out[task] = load_task(config.data)
        else:
            examples = load_examples(config.data, task)
            n_test = min(config.evaluation.limit or config.data.splits.test, len(examples))
            out[task] = split_examples(examples, eval_only_sizes(n_test), config.data.seed, task)
    return out


def evaluate_model(
    model: Any,
    tokenizer: Any,
    config: PipelineConfig,
    tasks: dict[str, TaskData] | None = None,
    progress: bool = True,
) -> list[TaskResult]:
    """Score a model on every configured task's evaluation split."""
    ev = config.evaluation
    tasks = tasks if tasks is not None else eval_splits(config)
    lm = CausalLM(model, tokenizer)
    results = []
    for name, data in tasks.items():
        examples = data.split(ev.split)[: ev.limit] if ev.limit else data.split(ev.split)
        if not examples:
            raise ValueError(f"task {name!r} has an empty {ev.split} split; raise data.splits.{ev.split}")
        results.append(
            evaluate_task(
                lm,
                name,
                examples,
                split=ev.split,
                batch_size=ev.batch_size,
                max_new_tokens=ev.max_new_tokens,
                with_perplexity=ev.perplexity,
                progress=progress,
            )
        )
    return results


def sparsify(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """Load the configured model, sparsify it, and write an HF checkpoint with ``report.json``."""
    sp = config.sparsity
    model, tokenizer = load_model(config.model)
    calibration = None
    calib_record: dict[str, Any] = {}
    if sp.method == "wanda":
        cal = sp.calibration
        task = load_task(config.data, cal.task) if cal.task else load_task(config.data)
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
    )
    result = {
        "model": config.model.name_or_path,
        **report.to_dict(),
        "calibration": {**report.calibration, **calib_record},
    }
    with atomic_directory(output) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "report.json", result)
    log.info(
        "sparsified %s: %.2f%% of targeted weights zeroed", config.model.name_or_path, 100 * report.sparsity
    )
    return result


def write_eval(
    output: Path, label: str, results: list[TaskResult], extra: dict[str, Any] | None = None
) -> None:
    headers, rows = results_table({label: results})
    write_json(output / "eval.json", {**(extra or {}), "results": [r.to_dict() for r in results]})
    write_text(output / "eval.md", markdown_table(headers, rows))
    with open(output / "predictions.jsonl.tmp", "w") as f:
        for r in results:
            for p in r.predictions:
                f.write(json.dumps({"task": r.task, **p}) + "\n")
    (output / "predictions.jsonl.tmp").replace(output / "predictions.jsonl")


def _stage(output: Path, name: str, fn, resume: bool) -> tuple[Any, float, bool]:
    """Run a stage whose result is cached as ``stages/<name>.json``; reuse it when resuming."""
    path = output / "stages" / f"{name}.json"
    if resume and path.is_file():
        cached = json.loads(path.read_text())
        log.info("stage %s: reusing %s", name, path)
        return cached["result"], cached["time_s"], True
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    write_json(path, {"result": result, "time_s": elapsed})
    return result, elapsed, False


def run_pipeline(
    config: PipelineConfig, output: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """sparsify -> evaluate (dense and sparse) -> report. Completed stages are reused with ``resume``."""
    output = Path(output)
    tasks = eval_splits(config)
    stages: dict[str, float] = {}
    evals: dict[str, list[dict[str, Any]]] = {}

    def eval_of(model_config: ModelConfig):
        model, tokenizer = load_model(model_config)
        return [r.to_dict() for r in evaluate_model(model, tokenizer, config, tasks, progress)]

    evals["dense"], stages["evaluate dense"], _ = _stage(
        output, "eval_dense", lambda: eval_of(config.model), resume
    )
    sparsity_report = None
    if config.sparsity.method != "none":
        sparse_dir = output / "sparse_model"

        def do_sparsify():
            if resume and (sparse_dir / "report.json").is_file():
                return json.loads((sparse_dir / "report.json").read_text())
            return sparsify(config, sparse_dir, progress)

        sparsity_report, stages["sparsify"], _ = _stage(output, "sparsify", do_sparsify, resume)
        sparse_model = config.model.model_copy(update={"name_or_path": str(sparse_dir)})
        evals["sparse"], stages["evaluate sparse"], _ = _stage(
            output, "eval_sparse", lambda: eval_of(sparse_model), resume
        )
    report = {
        "config": config.model_dump(mode="json"),
        "data": {name: t.record for name, t in tasks.items()},
        "evaluation": evals,
        "sparsity": None
        if sparsity_report is None
        else {
            k: sparsity_report[k]
            for k in ("method", "ratio", "pattern", "sparsity", "model_sparsity", "time_s")
        },
        "stage_time_s": stages,
    }
    write_json(output / "report.json", report)
    write_text(output / "report.md", summary_markdown(report))
    return report


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    results = {label: [TaskResult(**r) for r in rs] for label, rs in report["evaluation"].items()}
    return results_table(results)


def summary_markdown(report: dict[str, Any]) -> str:
    headers, rows = summary_rows(report)
    text = "# nncf-elastic-lora run\n\n## Accuracy\n\n" + markdown_table(headers, rows)
    if report.get("sparsity"):
        s = report["sparsity"]
        text += (
            f"\n## Sparsity\n\n{s['method']} {s['pattern']} at ratio {s['ratio']}: "
            f"{100 * s['sparsity']:.2f}% of targeted weights, {100 * s['model_sparsity']:.2f}% of all parameters\n"
        )
    text += "\n## Time per stage\n\n" + markdown_table(
        ["stage", "seconds"], [[k, v] for k, v in report["stage_time_s"].items()]
    )
    text += "\n## Data splits\n\n" + markdown_table(
        ["task", "seed", "available", "train", "validation", "test"],
        [[n, r["seed"], r["available"], *r["sizes"].values()] for n, r in report["data"].items()],
    )
    return text


def print_summary(report: dict[str, Any]) -> None:
    headers, rows = summary_rows(report)
    print_table("accuracy", headers, rows)
    print_table(
        "time per stage (s)", ["stage", "seconds"], [[k, v] for k, v in report["stage_time_s"].items()]
    )
