"""The search stages: choose a sub-adapter of the trained super-adapter on the validation split.

:func:`search` is the one-call function (the ``search`` verb); :class:`Search` puts it in a run and,
for ``bootstrapNAS.search.select`` ``cheapest_above_plain``, first measures the plain alternative
(:func:`~nncf_elastic_lora.stages.plain.plain_validation_quality`) on the very examples and metric the
search scores sub-adapters with, so that "at least as good as what a user already has" is one number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import PipelineConfig
from ..data import Example, TaskData, load_task
from ..formats import is_quantized_base
from ..models import resolve_model_dir
from ..outputs import fingerprint_path
from ..provenance import model_fingerprint
from ..search import SubnetObjectives, search_subadapter
from .engine import RunState, Stage, pick
from .nls import adapter_inputs, evaluate_subnets, latency_predictor, load_supernet
from .plain import floor_precision, plain_key, plain_validation_quality


def search_examples(config: PipelineConfig, data: TaskData | None = None) -> list[Example]:
    """The fixed validation subset every configuration (and the plain floor) is scored on."""
    data = data if data is not None else load_task(config.data)
    return data.validation[: config.bootstrapNAS.search.subset_size]


def search(
    config: PipelineConfig,
    output: str | Path,
    super_adapter: str | Path,
    progress: bool = True,
    latency_model: str | Path | None = None,
    *,
    plain_quality: float | None = None,
) -> dict[str, Any]:
    """Search a sub-adapter of a trained super-adapter on the validation split (``bootstrapNAS.search``).

    ``config.model`` is the base the super-adapter was trained on. Writes the search outputs and the
    chosen sub-adapter (``sub_adapter/``) under ``output``; an existing ``evaluations.jsonl`` there is
    reused, so a killed search continues where it stopped. Cost 'latency' needs ``latency_model``
    (a ``latency_model.json`` written by :func:`~nncf_elastic_lora.stages.lonas.fit_latency`, or its folder).
    ``plain_quality``: the floor of select ``cheapest_above_plain`` (`run` measures it).
    """
    s = config.bootstrapNAS.search
    predictor = latency_predictor(config, latency_model)
    supernet, tokenizer = load_supernet(config.model, super_adapter)
    data = load_task(config.data)
    objectives = SubnetObjectives(
        supernet,
        tokenizer,
        search_examples(config, data),
        metric=s.metric,
        cost=s.cost,
        seq_len=s.seq_len,
        batch_size=config.evaluation.batch_size,
        latency_model=predictor,
    )
    result = search_subadapter(
        supernet,
        objectives,
        s,
        output,
        base_model=resolve_model_dir(config.model),
        base_fingerprint=model_fingerprint(config.model),
        plain_quality=plain_quality,
        progress=progress,
    )
    return {**result.to_dict(), "data": data.record}


def plain_floor(config: PipelineConfig) -> bool:
    """Whether `run`'s search takes the plain alternative's validation quality as its floor (select
    'cheapest_above_plain', or 'auto' with NSGA-II and plain.enabled on a full-precision model)."""
    measured = config.plain.enabled and not is_quantized_base(config.model.name_or_path)
    return config.bootstrapNAS.search.resolved_select(measured) == "cheapest_above_plain"


def floor_inputs(config: PipelineConfig) -> dict[str, str | None]:
    """What the plain floor depends on: the plain reference, and its precision where it is not float (None, as
    runs written before floors on INT4 grids recorded nothing, so those float runs still resume)."""
    if not plain_floor(config):
        return {"plain": None}
    precision = floor_precision(config)
    return {"plain": plain_key(config), "plain_precision": None if precision == "float" else precision}


class Search(Stage):
    name, section = "search", "search"

    def __init__(self, algorithm: str):
        self.title = f"search ({algorithm})"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        latency = fingerprint_path(run.latency_model) if run.latency_model else None
        return {**adapter_inputs(run), "latency_model": latency, **floor_inputs(run.config)}

    def compute(self, run: RunState) -> Any:
        s, floor = run.config.bootstrapNAS.search, None
        if plain_floor(run.config):  # the plain alternative on the original dense model
            floor = plain_validation_quality(
                run.config, search_examples(run.config), s.metric, tasks=run.tasks, progress=run.progress
            )
        result = search(
            run.with_model(run.base), run.output / "search", run.super_adapter, run.progress, run.latency_model,
            plain_quality=None if floor is None else floor["quality"],
        )  # fmt: skip
        return result if floor is None else {**result, "plain": floor}

    def apply(self, run: RunState, result: Any) -> None:
        run.adapter, run.adapter_label = run.output / "search" / "sub_adapter", result["algorithm"]
        run.artifacts["searched_sub_adapter"] = str(run.adapter)

    def summary(self, run: RunState, result: Any) -> Any:
        keys = ("algorithm", "chosen_quality", "chosen_cost", "evaluations_used", "new_evaluations")
        summary = pick(result, (*keys, "wall_s", "reference"))
        floor = result.get("details", {}).get("floor")
        if floor and "plain" in result:  # the precision the plain alternative was scored at
            floor = {**floor, "precision": result["plain"].get("precision", "float")}
        return {**summary, "floor": floor} if floor else summary


class EvaluateSearched(Stage):
    name, title = "eval_searched", "evaluate searched"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return adapter_inputs(run)

    def compute(self, run: RunState) -> Any:
        supernet, tokenizer = load_supernet(run.base, run.super_adapter)
        chosen = {run.adapter_label: run.results["search"]["chosen"]}
        evaluated = evaluate_subnets(supernet, tokenizer, run.config, chosen, run.tasks, run.progress)
        return evaluated[run.adapter_label]

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation[f"{run.method_label} ({run.adapter_label})"] = result
