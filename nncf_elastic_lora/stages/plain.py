"""The plain alternative: LoRA on the dense model, merged, exported as ``optimum-cli`` would, measured.

A user who does not use this package fine-tunes LoRA on the dense model, merges it and runs
``optimum-cli export openvino --weight-format int8`` (or ``int4``). :func:`plain_reference` does
exactly that with the run's own data, steps, learning rate, batch, seed and maximal rank (the same
training loop with the maximal adapter fixed: peft's LoRA maths, a stock peft adapter folder, merged
by peft), exports it with the run's export settings minus everything data-aware, and scores it on the
run's evaluation split. The result is kept in a cache folder named by the fingerprint of every
input (model, data, training, export, evaluation, library versions), so it costs once, not every run.

:class:`PlainReference` puts it in a run; :func:`plain_verdict` states the one-line comparison of
the shipped IR with it: decode speed ratio and accuracy difference with its paired standard error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..config import BootstrapNASConfig, ElasticityConfig, PipelineConfig, WidthElasticityConfig
from ..data import Example, TaskData
from ..deploy.benchmark import decode_speed_stderr, paired_ratio
from ..deploy.export import attach_adapter
from ..evaluation import CausalLM, paired_difference
from ..int4 import quantize_base
from ..models import cache_dir, load_model, model_placement
from ..outputs import location_problem, output_lock, write_json
from ..provenance import data_fingerprint, model_fingerprint
from ..runtime import machine_class, scoring_class
from ..search import validation_quality
from .engine import RunState, Stage, read_reused
from .evaluate import eval_splits, evaluate_ir, load_for_eval
from .nls import train
from .ship import benchmark_rows, export, plain_label, primary_score, shipped_label

log = logging.getLogger(__name__)

RECIPE = 1  # bump when what plain_reference computes changes: older cached references are then not reused
REPORT = "plain_report.json"
LIBRARIES = ("nncf-elastic-lora", "torch", "transformers", "peft", "nncf", "openvino", "optimum-intel")


def plain_formats(config: PipelineConfig) -> list[str]:
    """``plain.weight_formats``, else the shipped IR's format, plus int8 and int4 when it is neither."""
    if config.plain.weight_formats:
        return list(config.plain.weight_formats)
    fmt = config.export.weight_format
    return [fmt] if fmt in ("int8", "int4") else [fmt, "int8", "int4"]


# What the plain alternative trains as, whatever the run's method (distillation is switched off too).
_PLAIN_TRAINING = {"algorithm": "lora", "adapter_kind": "lora", "qa_base_weight": "dequantized"}


def plain_config(config: PipelineConfig) -> PipelineConfig:
    """The run's config as the plain alternative: LoRA at the maximal rank on the original dense model."""
    t = config.bootstrapNAS.training
    t = t.model_copy(update={**_PLAIN_TRAINING, "distillation": t.distillation.model_copy(update={"enabled": False})})
    bnas = BootstrapNASConfig(
        training=t, elasticity=ElasticityConfig(width=WidthElasticityConfig(default_widths=[t.lora_r]))
    )
    return config.model_copy(update={"bootstrapNAS": bnas})


def _export_config(config: PipelineConfig, fmt: str) -> PipelineConfig:
    """Merged and compressed data-free, as ``optimum-cli export openvino --weight-format fmt`` does."""
    plain = {"merge_adapter": True, "awq": False, "scale_estimation": False, "data_aware": False, "ratio": 1.0,
             "activations": "none",
             "backup_precision": "int8_asym"}  # optimum-cli's defaults
    return config.model_copy(update={"export": config.export.model_copy(update={"weight_format": fmt, **plain})})


def _versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


# Settings the plain reference does not train with, out of its cache key: those plain_config sets (LoRA at the
# maximal rank on the dense model: no NLS, no distillation, no INT4 base) and those that change no number.
_NOT_PLAIN_TRAINING = {*_PLAIN_TRAINING, "distillation", "quantizer_lr_ratio", "logging_steps", "save_steps"}


def plain_inputs(config: PipelineConfig) -> dict[str, Any]:
    """Everything the plain reference's numbers depend on (its cache key is their digest)."""
    t = config.bootstrapNAS.training
    ex = config.export
    return {
        "recipe": RECIPE,
        "model": model_fingerprint(config.model),
        "dtype": model_placement(config.model).dtype_name,
        "data": data_fingerprint(config.data),
        "training": t.model_dump(mode="json", exclude=_NOT_PLAIN_TRAINING),
        "formats": plain_formats(config),
        "export": ex.model_dump(mode="json", include={"group_size", "group_size_fallback", "sym", "device",
                                                      "runtime_properties", "parity"}),
        "evaluation": config.evaluation.model_dump(mode="json", exclude={"baseline", "subnets"}),
        "libraries": _versions(),
    }


def plain_cache_root(config: PipelineConfig) -> Path:
    """``plain.cache_dir``, else ``$NNCF_ELASTIC_LORA_PLAIN_CACHE``, else ``<model cache>/plain_reference``."""
    if config.plain.cache_dir:
        return Path(config.plain.cache_dir).expanduser()
    env = os.environ.get("NNCF_ELASTIC_LORA_PLAIN_CACHE")
    return Path(env).expanduser() if env else cache_dir(config.model) / "plain_reference"


def plain_cache_problem(config: PipelineConfig) -> str | None:
    """Why the plain reference's cache folder cannot be used (a file on its path, not writable), or None."""
    root = plain_cache_root(config).absolute()
    key = "plain.cache_dir" if config.plain.cache_dir else "the plain reference cache"
    problem = location_problem(root)
    if problem is None:
        return None
    parent, why = problem
    if why == "file":
        return f"{key}: {root} {'is' if parent == root else 'lies below'} a file ({parent}); give a directory"
    return f"{key}: {parent} is not writable; give plain.cache_dir a writable directory"


def plain_key(config: PipelineConfig) -> str:
    return hashlib.sha256(json.dumps(plain_inputs(config), sort_keys=True).encode()).hexdigest()[:16]


def _compute(
    config: PipelineConfig, work: Path, tasks: dict[str, TaskData], progress: bool, here: str
) -> dict[str, Any]:
    """Train, merge, export and score (on machine class ``here``) the plain reference in ``work`` (resumable:
    each step once)."""
    start = time.perf_counter()
    plain = plain_config(config)
    trained = work / "train"
    report_path = trained / "train_report.json"
    trained_report = read_reused(report_path) if report_path.is_file() else train(
        plain, trained, resume=True, progress=progress
    )
    adapter = trained / "sub_adapter_heuristic"  # one width, the maximal rank: the plain LoRA adapter
    irs = {}
    for fmt in plain_formats(config):
        ir = work / f"openvino_{fmt}"
        exported = read_reused(ir / "export_report.json") if (ir / "export_report.json").is_file() else export(
            _export_config(plain, fmt), ir, adapter
        )
        scores = [r.to_dict() for r in evaluate_ir(plain, ir, tasks, progress)]
        irs[fmt] = {"export": {k: exported.get(k) for k in ("weight_format", "size_bytes", "parity")},
                    "evaluation": scores, "scores": {here: scores}}
    shutil.rmtree(trained / "checkpoints", ignore_errors=True)  # the adapter is kept, its resume points are not
    steps = trained_report.get("steps")
    return {"train": {"steps": steps, "train_loss": trained_report.get("train_loss"),
                      "time_s": trained_report.get("time_s")},
            "irs": irs, "time_s": time.perf_counter() - start}


def plain_reference(
    config: PipelineConfig, *, tasks: dict[str, TaskData] | None = None, progress: bool = True, score: bool = True
) -> dict[str, Any]:
    """The plain alternative for ``config``: LoRA on ``config.model`` (dense), merged, exported, scored.

    Returns ``{"key", "directory", "reused", "rescored", "scored_on", "inputs", "train", "irs": {fmt: {"path",
    "export", "evaluation", "scores"}}}``. Reuses ``<cache>/<key>/`` when a reference of the same inputs
    was finished there (by any run); otherwise computes it under a lock (another process computing the same
    key is waited for), in ``<key>.work/`` so an interrupted one resumes, then renames it into place.

    The IRs are the same on every machine, their scores are not (:func:`~nncf_elastic_lora.runtime.scoring_class`):
    each IR's ``scores`` are kept per machine class, ``evaluation`` is this class's (``scored_on``), and a reused
    reference not yet scored on it (a cache on shared storage, or copied) is scored here first, so that the
    verdict pairs two IRs run alike; ``rescored`` names those formats. ``score=False`` (a caller that needs the
    trained adapter or the IRs only) skips that: ``evaluation`` is then whichever class's the cache holds.
    """
    tasks = tasks if tasks is not None else eval_splits(config)
    root, key, here = plain_cache_root(config), plain_key(config), scoring_class(config.export.device)
    final, work = root / key, root / f"{key}.work"
    with output_lock(final, wait=True):
        reused = (final / REPORT).is_file()
        if reused:
            log.info("plain reference: reusing %s (same inputs)", final)
            report = read_reused(final / REPORT)
            rescored = _score_here(config, final, report, tasks, progress, here) if score else []
        else:
            rescored = []
            work.mkdir(parents=True, exist_ok=True)
            report = {"key": key, "inputs": plain_inputs(config), **_compute(config, work, tasks, progress, here)}
            write_json(work / REPORT, report)
            if final.exists():
                shutil.rmtree(final)
            os.rename(work, final)
    for fmt, ir in report["irs"].items():
        ir["path"] = str(final / f"openvino_{fmt}")
    return {**report, "directory": str(final), "reused": reused, "rescored": rescored, "scored_on": here}


def _score_here(
    config: PipelineConfig, final: Path, report: dict[str, Any], tasks: dict[str, TaskData], progress: bool, here: str
) -> list[str]:
    """Point each IR's ``evaluation`` at its scores on machine class ``here``, scoring it first where it has none
    (a reference cached before scores were kept per class counts as scored nowhere); returns those formats."""
    rescored = []
    for fmt, ir in report["irs"].items():
        scores = ir.setdefault("scores", {})
        if here not in scores:
            log.info("plain reference: its %s IR was scored on %s, not on %s: scoring it here (each machine "
                     "class runs an IR at its own default precision)", fmt, ", ".join(scores) or "an unrecorded "
                     "machine", here)  # fmt: skip
            ir_dir = final / f"openvino_{fmt}"
            scores[here] = [r.to_dict() for r in evaluate_ir(plain_config(config), ir_dir, tasks, progress)]
            rescored.append(fmt)
        ir["evaluation"] = scores[here]
    if rescored:
        write_json(final / REPORT, report)
    return rescored


def plain_validation_quality(
    config: PipelineConfig,
    examples: list[Example],
    metric: str,
    *,
    tasks: dict[str, TaskData] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The plain alternative's search quality on ``examples`` (``metric`` as the search scores it).

    The plain LoRA adapter of :func:`plain_reference` (trained, or reused from its cache) on the original
    dense model, scored in torch as the sub-adapters are, at their precision (:func:`floor_precision`): the
    floor of select ``cheapest_above_plain``. Returns ``{"quality", "metric", "examples", "precision",
    "directory", "reused"}``.
    """
    reference = plain_reference(config, tasks=tasks, progress=progress, score=False)  # its adapter, in torch
    adapter = Path(reference["directory"]) / "train" / "sub_adapter_heuristic"
    precision = floor_precision(config)
    if precision == "int4":
        model, tokenizer = merged_on_int4_grid(config, adapter)
    else:
        model, tokenizer, _ = load_for_eval(plain_config(config), adapter)
    quality = validation_quality(CausalLM(model, tokenizer), examples, metric, config.evaluation.batch_size)
    log.info("plain reference (%s): validation %s %.4f on %d examples (the search's floor)",
             precision, metric, quality, len(examples))  # fmt: skip
    return {"quality": quality, "metric": metric, "examples": len(examples), "precision": precision,
            "directory": reference["directory"], "reused": reference["reused"]}  # fmt: skip


def floor_precision(config: PipelineConfig) -> str:
    """The precision of the plain floor (``bootstrapNAS.search.floor_precision``): with 'auto', the candidates'
    own, ``"int4"`` on a base the run quantizes (``quantization.weight_format`` 'int4': every candidate carries
    the INT4 rounding), else ``"float"``. A float floor against INT4 candidates weighs the rounding, not the
    adapters: in the bench (docs/benchmarks.md) no INT4 candidate reached it, even where the shipped IR tied
    plain INT8 on test."""
    if config.bootstrapNAS.search.floor_precision == "float":
        return "float"
    return "int4" if config.quantization.weight_format == "int4" else "float"


def merged_on_int4_grid(config: PipelineConfig, adapter: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the plain LoRA ``adapter`` merged into ``config.model``, whose linears are then
    rounded to INT4 with the run's base settings (``quantization``: targets, group size, symmetry, fallback),
    data-free whatever the base used (a plain export's default), embeddings and head left as the candidates
    have them. The same scheme as the candidates', not the same groups where LoNAS reordered the base's
    channels first."""
    q = config.quantization
    model, tokenizer = load_model(config.model.model_copy(update={"dtype": "float32"}))  # NNCF rounds in float32
    model, _ = attach_adapter(model, adapter, merge=True, base_fingerprint=model_fingerprint(config.model))
    quantize_base(model, target_modules=q.target_modules, group_size=q.group_size, sym=q.sym,
                  group_size_fallback=q.group_size_fallback, progress=False)  # fmt: skip
    return model.to(model_placement(config.model).dtype), tokenizer


class PlainReference(Stage):
    """The plain alternative, from the cache when its inputs were seen before; its IRs join the benchmark."""

    name, title, section = "plain_reference", "plain alternative (LoRA, merge, export)", "plain"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {"plain": plain_key(run.config)}

    def compute(self, run: RunState) -> Any:
        return plain_reference(run.config, tasks=run.tasks, progress=run.progress)

    def apply(self, run: RunState, result: Any) -> None:
        for fmt, ir in result["irs"].items():
            run.plain[fmt] = Path(ir["path"])
            run.evaluation[plain_label(fmt)] = ir["evaluation"]
        run.artifacts["plain_reference"] = result["directory"]

    def summary(self, run: RunState, result: Any) -> Any:
        irs = {fmt: {"path": ir["path"], "weight_format": fmt, "size_bytes": ir["export"].get("size_bytes")}
               for fmt, ir in result["irs"].items()}
        return {"directory": result["directory"], "reused": result["reused"], "rescored": result.get("rescored", []),
                "scored_on": result.get("scored_on"), "train": result["train"], "irs": irs,
                "verdict": plain_verdict(run), "other_verdicts": other_verdicts(run)}


def _paired(shipped: list[dict[str, Any]], plain: list[dict[str, Any]], task: str) -> tuple[float, float] | None:
    a = next((r for r in shipped if r["task"] == task), {})
    b = next((r for r in plain if r["task"] == task), {})
    same = a.get("examples_sha256") and a.get("examples_sha256") == b.get("examples_sha256")
    # One bit per example of the primary metric: results written before outcomes() kept to it hold the
    # choice bits first, then the exact-match bits, so the first n are the primary metric's either way.
    oa, ob = (r.get("outcomes", "")[: r.get("n")] for r in (a, b))
    if not same or not oa or len(oa) != len(ob):
        return None
    return paired_difference(oa, ob)


def other_verdicts(run: RunState) -> dict[str, dict[str, Any]]:
    """The shipped IR against each plain export of another format (an INT4 artifact against plain INT8 too:
    the plain alternative a user picks is whichever format is faster on their machine)."""
    main = (plain_verdict(run) or {}).get("plain")
    out = {fmt: plain_verdict(run, fmt) for fmt in run.plain if plain_label(fmt) != main}
    return {fmt: v for fmt, v in out.items() if v is not None}


def plain_verdict(run: RunState, fmt: str | None = None) -> dict[str, Any] | None:
    """The shipped IR against the plain export in ``fmt`` (default: its own format, else the first plain one)."""
    if not run.plain or run.ir is None:
        return None
    if fmt is None:
        fmt = run.config.export.weight_format
        fmt = fmt if fmt in run.plain else next(iter(run.plain))
    ours, theirs = shipped_label(run), plain_label(fmt)
    data_task = run.config.data.task
    task = data_task if data_task in run.tasks else next(iter(run.tasks))
    a, b = primary_score(run.evaluation.get(ours, []), task), primary_score(run.evaluation.get(theirs, []), task)
    if a is None or b is None:
        return None
    paired = _paired(run.evaluation[ours], run.evaluation[theirs], task)
    diff, stderr = paired if paired else (a[1] - b[1], None)
    speedup = speed_se = control = paired_rounds = paired_skipped = None
    bench = run.results.get("benchmark")
    if bench:
        rows = {r["label"]: r for r in benchmark_rows(run, bench["results"])}
        speedup = _speed_ratio(rows[ours], rows.get(theirs, {}))
        speed_se = speedup_stderr(bench["results"], ours, theirs, speedup)
        control = same_shape_control(rows, f"dense OpenVINO IR ({fmt})", theirs)
        speeds = (bench.get("paired") or {}).get("tokens_per_s") or {}
        if ours in speeds and theirs in speeds:  # batch 1 round by round: what the verdict reads
            speedup[1], speed_se[1] = paired_ratio(speeds[ours], speeds[theirs])
            dense = speeds.get(f"dense OpenVINO IR ({fmt})")
            control = {**(control or {}), 1: paired_ratio(dense, speeds[theirs])[0]} if dense else control
            paired_rounds = len(speeds[ours])
        paired_skipped = (bench.get("paired") or {}).get("skipped")
    verdict = {"shipped": ours, "plain": theirs, "task": task, "metric": a[0], "shipped_score": a[1],
               "plain_score": b[1], "difference": diff, "stderr": stderr, "speedup": speedup,
               "speedup_stderr": speed_se, "speedup_control": control, "paired_rounds": paired_rounds,
               "paired_skipped": paired_skipped,
               "machine": machine_class(bench["machine"]) if bench and bench.get("machine") else None}
    return {**verdict, "line": verdict_line(verdict)}


def same_shape_control(rows: dict[str, dict[str, Any]], dense: str, plain: str) -> dict[int, float] | None:
    """Per batch size, the dense reference IR's decode speed over the plain IR's of the same format, where the
    run has both: two IRs of one shape and format, so any distance from 1 is this run's measurement spread
    (on a shared VM it exceeds the repeated runs' standard error: 0.87-1.26x in the bench's runs)."""
    if dense not in rows or plain not in rows:
        return None
    return _speed_ratio(rows[dense], rows[plain]) or None


def _speed_ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[int, float]:
    """Per batch size measured in both benchmark rows, ``a``'s decode speed over ``b``'s."""
    sa, sb = a["decode_tokens_per_s"], b.get("decode_tokens_per_s", {})
    return {batch: sa[batch] / sb[batch] for batch in sa if sb.get(batch)}


def speedup_stderr(
    results: list[dict[str, Any]], ours: str, theirs: str, speedup: dict[int, float]
) -> dict[int, float]:
    """Per batch size, the standard error of the speed ratio, from both IRs' run-to-run spread."""
    by_label = {r["label"]: r for r in results}
    out = {}
    for batch, ratio in speedup.items():
        errors = [
            decode_speed_stderr(next(f for f in by_label[label]["batches"] if f["batch_size"] == batch),
                                by_label[label]["new_tokens"])
            for label in (ours, theirs)
        ]  # fmt: skip
        if None not in errors:
            out[batch] = ratio * (errors[0] ** 2 + errors[1] ** 2) ** 0.5
    return out


def verdict_line(v: dict[str, Any]) -> str:
    """One sentence: speed ratio at batch 1, accuracy difference ± its standard error, who wins."""
    se = v["stderr"]
    acc = f"{v['metric']} {100 * v['difference']:+.1f} points" + (
        f" ± {100 * se:.1f} (paired standard error)" if se is not None else " (no paired outcomes: no standard error)"
    )
    not_below = v["difference"] >= -(se or 0.0)
    above = v["difference"] > (se or 0.0)  # more accurate beyond one standard error
    b1 = (v["speedup"] or {}).get(1)
    # A ratio within the run's spread of 1 is a tie, not a win: the spread is one standard error of both IRs'
    # repeated runs, or, where wider, how far this run's same-shape control strayed from 1.
    b1_se = (v.get("speedup_stderr") or {}).get(1, 0.0)
    control = (v.get("speedup_control") or {}).get(1)
    if b1 is None:
        speed, faster = "speed not measured", None
    else:
        speed = f"{b1:.2f}x its batch-1 decode speed" + (f" ± {b1_se:.2f}" if b1_se else "")
        speed += f" (paired over {v['paired_rounds']} rounds)" if v.get("paired_rounds") else ""
        speed += f" (pooled medians: the paired pass was skipped, {v['paired_skipped']})" if v.get("paired_skipped") else ""
        # a ratio holds on its machine class only (INT4 against INT8 turns over between AVX2 and AVX-512)
        speed += f" on {v['machine']}" if v.get("machine") else ""
        if control is not None and abs(control - 1) > b1_se:
            b1_se = abs(control - 1)
            speed += (f" (this run's same-shape control, the dense IR against the plain one, read {control:.2f}x: "
                      f"taken as a spread of ± {b1_se:.2f})")  # fmt: skip
        faster = b1 - b1_se > 1.0
    if faster is None:
        who = "more accurate" if above else "accuracy not below it" if not_below else "less accurate"
    elif faster and not_below:
        who = "the shipped IR wins: faster, accuracy not below the plain alternative's (within one standard error)"
    elif faster:
        who = "a trade: the shipped IR is faster but less accurate"
    elif b1 + b1_se >= 1.0 and above:
        who = "the shipped IR wins: as fast within the run-to-run spread and more accurate"
    elif b1 + b1_se >= 1.0 and not_below:
        who = "a tie: as fast within the run-to-run spread, accuracy not below it; the plain alternative is as good"
    elif above:
        who = "a trade: the plain alternative is faster, the shipped IR more accurate"
    elif not_below:
        who = "the plain alternative wins: faster at the same accuracy"
    elif b1 + b1_se >= 1.0:
        who = "the plain alternative wins: as fast within the run-to-run spread and more accurate"
    else:
        who = "the plain alternative wins: faster and more accurate"
    return f"Shipped vs {v['plain']} on {v['task']}: {speed}, {acc}; {who}."
