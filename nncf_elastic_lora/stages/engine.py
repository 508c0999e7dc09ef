"""The engine every method runs on: the run's state, the :class:`Stage` protocol, the cache, ``execute``.

Each stage reads what earlier stages left in the :class:`RunState` (the current base, the chosen
sub-adapter, the IR), does one job (usually writing one directory atomically), and returns a
JSON-able result. :func:`execute` caches that result in ``stages/<name>.json`` with fingerprints of
what the stage read, so ``run --resume`` reuses a finished stage whose inputs have not changed, and
``apply`` replays its effect on the state either way. A stage also contributes its own section of
``report.json`` (:meth:`Stage.summary`); :func:`run_report` assembles them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, PipelineConfig
from ..data import TaskData
from ..devices import ResourceMeter
from ..models import model_placement
from ..outputs import OutputExistsError, changed_inputs, disk_full_as_error, json_number, write_json

log = logging.getLogger(__name__)

# report.json's stage sections, in the order they have always had; a stage's section is None when it did not run.
REPORT_SECTIONS = (
    "sparsity", "quantization", "training", "search", "merge", "extract", "export", "benchmark", "plain"
)


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
    plain: dict[str, Path] = field(default_factory=dict)  # the plain alternative's IRs by weight format
    evaluation: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # stage name -> its result
    times: dict[str, float] = field(default_factory=dict)  # stage title -> seconds
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage title -> peak memory, disk written
    artifacts: dict[str, str] = field(default_factory=dict)

    def model_at(self, path: Path) -> ModelConfig:
        return self.config.model.model_copy(update={"name_or_path": str(path)})

    def with_model(self, model: ModelConfig) -> PipelineConfig:
        return self.config.model_copy(update={"model": model})

    @property
    def method_label(self) -> str:
        """'sparse+NLS', 'sparse INT4+QA-SparsePEFT', ...: what trained the adapter, on what."""
        t = self.config.bootstrapNAS.training
        kind = {
            "lora": "",
            "sparsepeft": " SparsePEFT",
            "qa_sparsepeft": " QA-SparsePEFT",
            "fq_lora": " FQ-LoRA",
            "fq_sparsepeft": " FQ-SparsePEFT",
        }[t.adapter_kind]
        algo = "NLS" if t.algorithm == "nls" else "LoRA"
        return f"{self.base_label}+{algo}{kind}" if self.base_label != "dense" else f"{algo}{kind}"


class Stage:
    """One step of a run. Subclasses set ``name`` (cache key) and ``title`` (time table row).

    ``section`` names the part of ``report.json`` the stage writes (None: none), filled by
    :meth:`summary` from the stage's result.
    """

    name: str
    title: str
    section: str | None = None

    def inputs(self, run: RunState) -> dict[str, str | None]:
        """Fingerprints of what the stage reads; a cached result of other inputs is refused."""
        return dict(run.base_inputs)

    def compute(self, run: RunState) -> Any:
        raise NotImplementedError

    def apply(self, run: RunState, result: Any) -> None:
        """The stage's effect on the run, for a fresh and for a cached result alike."""

    def summary(self, run: RunState, result: Any) -> Any:
        """The stage's section of ``report.json``: by default its whole result."""
        return result


def pick(result: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The ``keys`` of a stage result (None stays None): what a report section keeps of it."""
    return None if result is None else {k: result.get(k) for k in keys}


def cached_stage(
    output: Path, name: str, fn: Callable[[], Any], resume: bool, inputs: dict[str, str | None] | None = None
) -> tuple[Any, float, bool]:
    """Run ``fn`` with its result cached as ``stages/<name>.json``; reuse it when resuming.

    ``inputs`` are fingerprints of what the stage reads; a cached result of other inputs is refused.
    Returns ``(result, seconds, reused)``.
    """
    path = output / "stages" / f"{name}.json"
    inputs = inputs or {}
    if resume and path.is_file():
        cached = read_reused(path)
        try:
            json_number(cached["time_s"], "time_s", minimum=0)
            cached["result"]  # noqa: B018 - present, whatever the stage returned
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is damaged ({exc}); delete it to run stage {name!r} again") from None
        changed = changed_inputs(cached.get("inputs") or {}, inputs)
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


def completed_or(report: Path, resume: bool, make: Callable[[], Any]) -> Any:
    """A directory stage: on resume, the report of a directory already written (atomically), else make it."""
    if resume and report.is_file():
        return read_reused(report)
    return make()


def read_reused(path: Path) -> dict[str, Any]:
    """A JSON object this tool wrote earlier and a resume reuses; damage is a clear error naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); delete it (the stage runs again) or the output") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged (a {type(data).__name__}, not an object); delete it (the stage runs again)")
    bad = _first_non_finite(data)
    if bad is not None:  # no stage writes NaN or inf (they are refused where they arise)
        raise ValueError(f"{path} is damaged ({bad} is not a finite number); delete it (the stage runs again)")
    return data


def _first_non_finite(data: Any, where: str = "") -> str | None:
    """The key path of the first NaN or inf in ``data`` (JSON's ``NaN``/``Infinity``), or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else where or "the value"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _disk_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (what the run has written so far)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile (a temporary)
                pass
    return total


def _metered(run: RunState, stage: Stage) -> Any:
    """``stage.compute(run)`` with what it cost: wall time, peak RSS and accelerator memory, disk written."""
    disk_before = _disk_bytes(run.output)
    with ResourceMeter(model_placement(run.config.model).device) as meter:
        result = stage.compute(run)
    run.resources[stage.title] = {
        **meter.record(),
        "disk_written_mib": round(max(_disk_bytes(run.output) - disk_before, 0) / 2**20, 1),
    }
    return result


def execute(stages: list[Stage], run: RunState) -> RunState:
    """Run ``stages`` in order (reusing cached ones on resume) and apply each result to ``run``."""
    for stage in stages:
        log.info("stage %s: %s", stage.name, stage.title)
        with disk_full_as_error(stage.name, run.output):
            result, seconds, reused = cached_stage(
                run.output, stage.name, lambda s=stage: _metered(run, s), run.resume, stage.inputs(run)
            )
        if reused:
            run.resources[stage.title] = {"reused": True}
        run.results[stage.name] = result
        run.times[stage.title] = seconds
        stage.apply(run, result)
    return run


def run_report(run: RunState, stages: list[Stage]) -> dict[str, Any]:
    """``report.json``: the evaluations, each stage's section, the artifacts and the time per stage."""
    report: dict[str, Any] = {
        "config": run.config.model_dump(mode="json"),
        "stages": [s.name for s in stages],
        "data": {name: t.record for name, t in run.tasks.items()},
        "evaluation": run.evaluation,
        **dict.fromkeys(REPORT_SECTIONS),
    }
    for stage in stages:
        if stage.section is not None:
            report[stage.section] = stage.summary(run, run.results[stage.name])
    report["artifacts"] = dict(run.artifacts)
    report["stage_time_s"] = run.times
    report["stage_resources"] = run.resources
    return report
