"""NLS stages: train the elastic super-adapter and evaluate its sub-adapters (the search: :mod:`.search`).

The one-call functions (:func:`train`, :func:`evaluate_subnets`, ...) each read a
base and write a directory; the stages chain them in a run. Shears, SQFT and LoNAS all train
here; what differs (adapter kind, Mode B widths, the INT4 base) comes from the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import distributed
from ..config import BootstrapNASConfig, ModelConfig, PipelineConfig
from ..data import TaskData, load_task
from ..elastic import ElasticLoraSuperNet
from ..elastic.lora import AdapterKind, run_trains_on_float_weights, trains_on_float_weights
from ..elastic.supernet import SEARCH_SPACE_FILE
from ..formats import is_quantized_base
from ..latency import LatencyModel, attention_layout, mlp_layout
from ..models import load_model, meta_model, resolve_model_dir
from ..outputs import fingerprint_path, write_json
from ..provenance import model_fingerprint
from ..training import train_super_adapter
from .engine import RunState, Stage, pick
from .evaluate import base_quantized_weights, evaluate_model


def check_trainable_base(config: PipelineConfig) -> None:
    """QA-SparsePEFT trains through the INT4 codes beside its base: refuse a base without them."""
    kind = config.bootstrapNAS.training.adapter_kind
    if not AdapterKind(kind).int4_trained:
        return
    base = resolve_model_dir(config.model)
    if not is_quantized_base(base):
        raise ValueError(
            f"bootstrapNAS.training.adapter_kind {kind!r} trains through an INT4 base's scales, but "
            f"{base} holds no quantized_weights.safetensors: give --model an INT4 checkpoint written by "
            "`nncf-elastic-lora quantize` (or let `run` make one with quantization.weight_format 'int4')"
        )


def build_supernet(
    model: Any, bnas: BootstrapNASConfig, quantized: dict[str, Any] | None = None
) -> ElasticLoraSuperNet:
    """Attach the configured elastic adapters to ``model`` (``quantized``: the INT4 base, for QA-SparsePEFT)."""
    t, width = bnas.training, bnas.elasticity.width
    return ElasticLoraSuperNet.attach(
        model,
        target_modules=t.target_modules,
        max_rank=t.lora_r,
        alpha=t.lora_alpha,
        dropout=t.lora_dropout,
        overwrite_groups=width.overwrite_groups,
        overwrite_groups_widths=width.overwrite_groups_widths,
        default_widths=width.default_widths or [t.lora_r],
        seed=t.seed,
        adapter_kind=t.adapter_kind,
        quantized=quantized if AdapterKind(t.adapter_kind).int4_trained else None,
        channels=bnas.elasticity.channel_spec(),
        heads=bnas.elasticity.head_spec(),
    )


def train(
    config: PipelineConfig, output: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the super-adapter on ``model.name_or_path`` (the sparse base); write it and the heuristic sub-adapter.

    Output: ``super_adapter/`` (peft folder at maximal rank + ``elastic_lora.json``),
    ``sub_adapter_heuristic/`` (a stock peft folder), ``checkpoints/`` and ``train_report.json``.
    """
    output = Path(output)
    check_trainable_base(config)
    model, tokenizer = load_model(config.model)
    t = config.bootstrapNAS.training
    float_source = run_trains_on_float_weights(t.adapter_kind, t.qa_base_weight)
    supernet = build_supernet(model, config.bootstrapNAS, base_quantized_weights(config.model, float_source=float_source))
    data = load_task(config.data)
    result, _ = train_super_adapter(
        supernet,
        tokenizer,
        data.train,
        config.bootstrapNAS.training,
        output / "checkpoints",
        max_length=config.data.max_length,
        resume=resume,
        progress=progress,
    )
    if not distributed.is_main_process():  # under a launcher the main process writes the one set of outputs
        return result.to_dict()
    base, base_fp = resolve_model_dir(config.model), model_fingerprint(config.model)
    heuristic = supernet.get_heuristic_config()
    supernet.save_super_adapter(output / "super_adapter", base_model=base, base_fingerprint=base_fp)
    supernet.save_sub_adapter(
        output / "sub_adapter_heuristic", heuristic, base_model=base, base_fingerprint=base_fp
    )
    report = {
        **result.to_dict(),
        "base_model": base,
        "data": data.record,
        "search_space": {"groups": len(supernet.groups), "size": supernet.space_size()},
        "adapter_params": {
            "maximal": supernet.get_active_params(supernet.get_maximal_config()),
            "heuristic": supernet.get_active_params(heuristic),
            "minimal": supernet.get_active_params(supernet.get_minimal_config()),
        },
    }
    write_json(output / "train_report.json", report)
    return report


def _spec_of(super_adapter: str | Path) -> dict[str, Any]:
    """What a super-adapter folder records (adapter kind, base weight; empty where unreadable: loading it says
    why)."""
    try:
        spec = json.loads((Path(super_adapter) / SEARCH_SPACE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


def load_supernet(model_config: ModelConfig, super_adapter: str | Path) -> tuple[ElasticLoraSuperNet, Any]:
    """The base model with a saved super-adapter attached, and its tokenizer."""
    model, tokenizer = load_model(model_config)
    spec = _spec_of(super_adapter)
    supernet = ElasticLoraSuperNet.load_super_adapter(
        model,
        super_adapter,
        quantized=base_quantized_weights(model_config, float_source=trains_on_float_weights(spec.get("adapter_kind"), spec)),
        base_fingerprint=model_fingerprint(model_config),  # refuse a base it was not trained on
    )
    return supernet, tokenizer


def evaluate_subnets(
    supernet: ElasticLoraSuperNet,
    tokenizer: Any,
    config: PipelineConfig,
    subnets: list[str] | dict[str, dict[str, int]],
    tasks: dict[str, TaskData] | None,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Evaluate sub-adapters: names ('maximal', 'heuristic', 'minimal') or ``{label: configuration}``."""
    if not isinstance(subnets, dict):
        subnets = {name: getattr(supernet, f"get_{name}_config")() for name in subnets}
    out = {}
    for name, subnet in subnets.items():
        supernet.activate_config(subnet)
        out[name] = [r.to_dict() for r in evaluate_model(supernet.model, tokenizer, config, tasks, progress)]
    supernet.activate_maximal_subnet()
    return out


def latency_predictor(config: PipelineConfig, latency_model: str | Path | None) -> LatencyModel | None:
    """The :class:`~nncf_elastic_lora.latency.LatencyModel` the configured search needs (None unless cost
    'latency'), loaded and checked against ``config.model``'s MLPs (no weights read)."""
    cost = config.bootstrapNAS.search.cost
    if cost == "latency" and latency_model is None:
        raise ValueError(
            "bootstrapNAS.search.cost 'latency' needs a latency model: fit one with `nncf-elastic-lora latency` "
            "and pass it with --latency-model (`run` fits it itself)"
        )
    if cost != "latency" and latency_model is not None:
        raise ValueError(
            f"--latency-model is given but bootstrapNAS.search.cost is {cost!r}; set it to 'latency' "
            "(--set bootstrapNAS.search.cost=latency) or drop --latency-model"
        )
    if latency_model is None:
        return None
    predictor = LatencyModel.load(latency_model)
    meta = meta_model(config.model)
    names, sizes, _ = mlp_layout(meta)
    kv_heads = attention_layout(meta)[0] if config.bootstrapNAS.elasticity.head_spec() else None
    predictor.check_fits(dict(zip(names, sizes, strict=True)), kv_heads)
    return predictor


def adapter_inputs(run: RunState) -> dict[str, str | None]:
    """Fingerprints of a stage that reads the base and the super-adapter."""
    return {**run.base_inputs, "super_adapter": fingerprint_path(run.super_adapter)}


class Train(Stage):
    name, title, section = "train", "train", "training"

    def compute(self, run: RunState) -> Any:
        return train(run.with_model(run.base), run.output / "nls", resume=run.resume, progress=run.progress)

    def apply(self, run: RunState, result: Any) -> None:
        run.super_adapter = run.output / "nls" / "super_adapter"
        run.adapter, run.adapter_label = run.output / "nls" / "sub_adapter_heuristic", "heuristic"
        run.artifacts.update(super_adapter=str(run.super_adapter), sub_adapter=str(run.adapter))

    def summary(self, run: RunState, result: Any) -> Any:
        keys = ("algorithm", "steps", "train_loss", "step_time_median_s", "time_s", "trainable_params")
        return {
            **pick(result, (*keys, "adapter_params", "search_space")),
            "adapter_kind": run.config.bootstrapNAS.training.adapter_kind,
        }


class EvaluateSubnets(Stage):
    name, title = "eval_subnets", "evaluate sub-adapters"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return adapter_inputs(run)

    def compute(self, run: RunState) -> Any:
        supernet, tokenizer = load_supernet(run.base, run.super_adapter)
        return evaluate_subnets(
            supernet, tokenizer, run.config, run.config.evaluation.subnets, run.tasks, run.progress
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation.update({f"{run.method_label} ({name})": r for name, r in result.items()})
