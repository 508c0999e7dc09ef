"""Choose a sub-adapter of a trained super-adapter: heuristic, hill-climbing or (R-)NSGA-II.

Every configuration is measured once (quality on a fixed validation subset, and cost) and logged as
it is measured (:class:`~.log.EvaluationLog`), so an interrupted search resumes without repeating
work. Outputs under the search directory: ``evaluations.jsonl`` (the log), ``evaluations.csv``,
``pareto.json``, ``search.png`` (quality against cost, heuristic level marked), ``search_report.json``
and ``sub_adapter/`` (the chosen configuration as a standard peft LoRA folder).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import distributed
from ..config import SearchConfig
from ..elastic import ElasticLoraSuperNet
from ..outputs import write_json
from .hill_climbing import hill_climb
from .log import Evaluation, EvaluationLog, config_key
from .nsga import nsga_search, pareto_front
from .objectives import SubnetObjectives

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    algorithm: str
    chosen: dict[str, int]
    chosen_quality: float
    chosen_cost: float
    evaluations_used: int
    new_evaluations: int
    wall_s: float
    not_reused: int = 0  # logged evaluations of other inputs (base, super-adapter, objective)
    reference: dict[str, dict[str, Any]] = field(default_factory=dict)
    front: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COST_LABELS = {
    "params": "parameters (adapter; in Mode B plus the base weights at the widths)",
    "macs": "MACs (adapted linears, base included)",
    "latency": "predicted decode ms per token (latency model)",
}


def _write_outputs(out: Path, log: EvaluationLog, result: SearchResult, metric: str, cost_kind: str) -> None:
    entries = list(log.entries.values())
    tmp = out / ".evaluations.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "quality", "cost", "seconds", "source"])
        for e in entries:
            writer.writerow([e.key, e.quality, e.cost, e.seconds, e.source])
    tmp.replace(out / "evaluations.csv")
    write_json(out / "pareto.json", {"metric": metric, "cost": cost_kind, "front": result.front})
    write_json(out / "search_report.json", result.to_dict())
    plot_search(out / "search.png", entries, result, metric, cost_kind)


def plot_search(
    path: Path, entries: list[Evaluation], result: SearchResult, metric: str, cost_kind: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([e.cost for e in entries], [e.quality for e in entries], s=14, c="#9aa5b1", label="evaluated")
    front = sorted(result.front, key=lambda e: e["cost"])
    ax.plot(
        [e["cost"] for e in front],
        [e["quality"] for e in front],
        "-o",
        c="#1f6feb",
        ms=4,
        label="Pareto front",
    )
    heuristic = result.reference.get("heuristic")
    if heuristic:
        ax.axhline(heuristic["quality"], ls="--", c="#d29922", label="heuristic level")
    for name, marker in (("maximal", "^"), ("minimal", "v"), ("heuristic", "s")):
        ref = result.reference.get(name)
        if ref:
            ax.scatter([ref["cost"]], [ref["quality"]], marker=marker, s=60, c="black", zorder=3)
            ax.annotate(
                name, (ref["cost"], ref["quality"]), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    ax.scatter(
        [result.chosen_cost],
        [result.chosen_quality],
        marker="*",
        s=180,
        c="#cf222e",
        zorder=4,
        label=f"chosen ({result.algorithm})",
    )
    ax.set_xlabel(COST_LABELS[cost_kind])
    ax.set_ylabel("validation accuracy" if metric == "acc" else "validation log-likelihood per token")
    ax.set_title(f"sub-adapter search: {result.algorithm}, {len(entries)} configurations evaluated")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fingerprint(
    supernet: ElasticLoraSuperNet, objectives: SubnetObjectives, base_model: str | None
) -> dict[str, Any]:
    """What a logged measurement depends on: the base, the super-adapter's weights and space, the objective."""
    weights = hashlib.sha256()
    for name, tensor in sorted(supernet.adapter_state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.numpy().tobytes())
    fingerprint = {
        "base_model": base_model,
        "super_adapter_sha256": weights.hexdigest(),
        "search_space": supernet.get_search_space(),
        "metric": objectives.metric,
        "cost": objectives.cost_kind,
        "seq_len": objectives.seq_len,
        "validation_ids": [e.id for e in objectives.examples],
    }
    if objectives.latency_model is not None:  # only then: logs of other costs keep their fingerprint
        lm = objectives.latency_model
        fingerprint["latency_model"] = [lm.intercept_ms, lm.ms_per_mparam]
    return fingerprint


def _open_log(out: Path, current: dict[str, Any], writer: bool = True) -> EvaluationLog:
    """The log's entries measured with ``current``; say so when others are in the file and not reused.

    ``writer``: this process appends to the log (under a launcher only the main process does; the
    others read it and keep their measurements, identical to the main's, in memory)."""
    context = hashlib.sha256(json.dumps(current, sort_keys=True, default=str).encode()).hexdigest()[:20]
    log = EvaluationLog(out / "evaluations.jsonl", context=context, read_only=not writer)
    if not writer:
        return log
    if log.other_context:
        meta_path = out / "search_meta.json"
        previous = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        changed = sorted(k for k in current if previous.get(k) != current[k]) or ["inputs"]
        logger.warning(
            "%s: %d logged evaluations were measured with a different %s; they are not reused "
            "(%d of this search's are)",
            out / "evaluations.jsonl",
            log.other_context,
            ", ".join(changed),
            len(log),
        )
    write_json(out / "search_meta.json", {**current, "context": context})
    return log


def _run_algorithm(
    cfg: SearchConfig,
    choices: list[list[int]],
    references: dict[str, tuple[int, ...]],
    measure: Callable[[tuple[int, ...], str], Evaluation],
) -> tuple[tuple[int, ...] | None, int, dict[str, Any]]:
    """Run ``cfg.algorithm``: ``(chosen point, evaluations used, details)``; NSGA-II chooses later (None)."""
    heuristic = references["heuristic"]
    if cfg.algorithm == "heuristic":
        return heuristic, 1, {}
    if cfg.algorithm == "hill_climbing":
        # The budget covers every configuration this search measures, the maximal and minimal references included.
        budget = max(1, cfg.num_evals - len({references["maximal"], references["minimal"]} - {heuristic}))
        hc = hill_climb(
            choices, heuristic, lambda p: measure(p, "hill_climbing").quality, budget, cfg.patience
        )
        return hc.best, hc.evaluations, {"path": [config_key(p) for p in hc.path], "stopped": hc.stopped}
    population = min(cfg.population, cfg.num_evals)
    generations = cfg.generations or max(1, cfg.num_evals // population)

    def score(p: tuple[int, ...]) -> tuple[float, float]:
        e = measure(p, cfg.algorithm)
        return e.quality, e.cost

    res = nsga_search(
        choices,
        score,
        population=population,
        generations=generations,
        seed=cfg.seed,
        ref_points=cfg.ref_points if cfg.algorithm == "RNSGA2" else None,
        initial=list(dict.fromkeys(references.values())),
    )
    details = {
        "generations": res.generations,
        "population": population,
        "algorithm_front": [config_key(p) for p in res.front],
    }
    return None, res.evaluations, details


def _pareto_points(log: EvaluationLog, names: list[str]) -> list[tuple[int, ...]]:
    """The Pareto front (quality against cost) of every configuration in the log."""
    entries = list(log.entries.values())
    return pareto_front(
        [tuple(e.config[n] for n in names) for e in entries],
        [e.quality for e in entries],
        [e.cost for e in entries],
    )


def _choose_on_front(
    select: str, log: EvaluationLog, front: list[tuple[int, ...]], floor: float | None
) -> tuple[Evaluation, bool | None]:
    """NSGA-II's choice on the front and whether it reached ``floor``: the cheapest at ``floor`` or above
    (``cheapest_above_*``; the best when none reaches it), or the best (``best_quality``: None)."""
    on_front = [log.entries[config_key(p)] for p in front]
    best = max(on_front, key=lambda e: (e.quality, -e.cost))
    if select == "best_quality":
        return best, None
    above = [e for e in on_front if e.quality >= floor]
    return (min(above, key=lambda e: e.cost), True) if above else (best, False)


def _search_result(
    cfg: SearchConfig,
    objectives: SubnetObjectives,
    log: EvaluationLog,
    chosen: tuple[int, ...],
    used: int,
    details: dict[str, Any],
    reference: dict[str, dict[str, Any]],
    front: list[tuple[int, ...]],
    start: float,
) -> SearchResult:
    """The search's result: the chosen configuration's measurement, the references, the front."""
    chosen_entry = log.entries[config_key(chosen)]
    return SearchResult(
        algorithm=cfg.algorithm,
        chosen=dict(chosen_entry.config),
        chosen_quality=chosen_entry.quality,
        chosen_cost=chosen_entry.cost,
        evaluations_used=used,
        new_evaluations=log.new_evaluations,
        not_reused=log.other_context,
        wall_s=time.perf_counter() - start,
        reference=reference,
        front=[asdict(log.entries[config_key(p)]) for p in front],
        details={
            **details,
            "metric": objectives.metric,
            "cost": objectives.cost_kind,
            "validation_examples": len(objectives.examples),
        },
    )


def search_subadapter(
    supernet: ElasticLoraSuperNet,
    objectives: SubnetObjectives,
    cfg: SearchConfig,
    output_dir: str | Path,
    *,
    base_model: str | None = None,
    base_fingerprint: str | None = None,
    plain_quality: float | None = None,
    progress: bool = True,
) -> SearchResult:
    """Run the configured search, write its outputs and the chosen sub-adapter; return the result.

    ``base_fingerprint`` identifies the base model's weights: logged evaluations of another base
    (or super-adapter, or objective) are measured again, never reused. ``plain_quality``: the plain
    alternative's validation quality on the same examples and metric, the floor of ``select``
    ``cheapest_above_plain`` (the cheapest front point at or above it ships; the best when none is), and
    of ``select`` 'auto' when given.
    """
    select = cfg.resolved_select(plain_measured=plain_quality is not None)
    if select == "cheapest_above_plain" and plain_quality is None:
        raise ValueError(
            "bootstrapNAS.search.select 'cheapest_above_plain' needs the plain alternative's validation quality "
            "(plain_quality=...; `run` measures it with the plain reference): choose another select"
        )
    out = Path(output_dir)
    writer = distributed.is_main_process()  # under a launcher: every process searches, the main one writes
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = _open_log(out, _fingerprint(supernet, objectives, base_fingerprint or base_model), writer)
    groups = supernet.groups
    names = [g.name for g in groups]
    bar = tqdm(total=cfg.num_evals, desc=f"search ({cfg.algorithm})", disable=not progress, initial=len(log))

    def measure(point: tuple[int, ...], source: str) -> Evaluation:
        before = log.new_evaluations
        entry = log.get_or_evaluate(
            config_key(point), dict(zip(names, point, strict=True)), objectives, source
        )
        if log.new_evaluations > before:
            bar.update(1)
        return entry

    def point_of(config: dict[str, int]) -> tuple[int, ...]:
        return tuple(config[n] for n in names)

    references = {
        "heuristic": point_of(supernet.get_heuristic_config()),
        "maximal": point_of(supernet.get_maximal_config()),
        "minimal": point_of(supernet.get_minimal_config()),
    }
    reference = {name: asdict(measure(p, name)) for name, p in references.items()}
    chosen, used, details = _run_algorithm(cfg, [g.widths for g in groups], references, measure)
    bar.close()
    front = _pareto_points(log, names)
    if cfg.algorithm in ("NSGA2", "RNSGA2"):
        floor = plain_quality if select == "cheapest_above_plain" else reference["heuristic"]["quality"]
        entry, reached = _choose_on_front(select, log, front, floor)
        chosen = point_of(entry.config)
        details["select"] = select
        if reached is not None:
            details["floor"] = {"select": select, "quality": floor, "reached": reached}
            if not reached:
                logger.warning(
                    "search: no sub-adapter on the front reaches the %s's validation quality (%.4f); "
                    "shipping the best one (%.4f)", select.removeprefix("cheapest_above_"), floor, entry.quality
                )
    result = _search_result(cfg, objectives, log, chosen, used, details, reference, front, start)
    if writer:
        _write_outputs(out, log, result, objectives.metric, objectives.cost_kind)
        supernet.save_sub_adapter(
            out / "sub_adapter", result.chosen, base_model=base_model, base_fingerprint=base_fingerprint
        )
    supernet.activate_maximal_subnet()
    return result
