"""Checks of a config against the model it will run on, before any work starts.

The model is built on the meta device from its configuration alone (no weights read, a fraction of
a second), so module patterns that match nothing, groups wider than ``lora_r`` or a module claimed
by two groups fail at config load instead of after the dense evaluation and the sparsification.
"""

from __future__ import annotations

from typing import Any

from .config import ConfigError, PipelineConfig
from .data import load_examples, load_task
from .elastic.channels import gated_mlps, intermediate_size
from .elastic.heads import attentions, check_config_rebuilds, uniform_attentions
from .elastic.lora import AdapterKind
from .elastic.search_space import build_groups
from .int4.quantize import plan_group_sizes
from .models import meta_model
from .patterns import find_linears


def check_config_against_model(
    config: PipelineConfig,
    *,
    sparsify: bool = False,
    train: bool = False,
    quantize: bool = False,
    model: Any = None,
) -> None:
    """Resolve the module patterns of the stages that will run against the model's module names.

    ``sparsify``/``quantize``/``train`` say which stages' patterns to check (``sparsity.target_modules``,
    ``quantization.target_modules``; ``bootstrapNAS.training.target_modules`` and the elasticity
    groups). Raises :class:`ConfigError` naming every bad key.
    """
    sparsify = sparsify and config.sparsity.method != "none"
    quantize = quantize and config.quantization.weight_format != "none"
    train = train and config.bootstrapNAS.enabled
    if not (sparsify or quantize or train):
        return
    if model is None:
        model = meta_model(config.model)
    problems: list[str] = []
    for on, key, patterns in (
        (sparsify, "sparsity.target_modules", config.sparsity.target_modules),
        (quantize, "quantization.target_modules", config.quantization.target_modules),
    ):
        if on:
            try:
                found = find_linears(model, patterns)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
                continue
            q = config.quantization
            if key.startswith("quantization") and q.group_size_fallback == "error":
                odd = [n for n, m in found.items() if m.in_features % q.group_size]
                if odd:
                    problems.append(
                        f"quantization.group_size: {q.group_size} does not divide the input width of {odd[0]} "
                        f"({found[odd[0]].in_features}) and {len(odd) - 1} other layers; choose a divisor or set "
                        "quantization.group_size_fallback to 'adjust' or 'ignore'"
                    )
    if train:
        t, width = config.bootstrapNAS.training, config.bootstrapNAS.elasticity.width
        try:
            adapted = list(find_linears(model, t.target_modules))
        except ValueError as exc:
            problems.append(f"bootstrapNAS.training.target_modules: {exc}")
        else:
            if AdapterKind(t.adapter_kind).int4_trained and config.quantization.weight_format == "int4":
                problems += _qa_targets_quantized(model, config, adapted)
                problems += _elastic_slices_keep_int4_groups(model, config)
            problems += _kv_groups_fit(model, config)
            default = width.default_widths or [t.lora_r]
            if max(default) > t.lora_r:
                problems.append(
                    f"bootstrapNAS.elasticity.width.default_widths: {default} exceed lora_r={t.lora_r}"
                )
            try:
                build_groups(
                    adapted, width.overwrite_groups, width.overwrite_groups_widths, default, t.lora_r
                )
            except ValueError as exc:
                problems.append(f"bootstrapNAS.elasticity.width: {exc}")
    if problems:
        raise ConfigError(f"for model {config.model.name_or_path!r}", problems)


def check_data(
    config: PipelineConfig,
    *,
    train: bool = False,
    sparsify: bool = False,
    evaluate: bool = False,
    export: bool = False,
    quantize: bool = False,
) -> None:
    """Load every task the selected stages will read, so a missing or malformed dataset (or split
    sizes it cannot give) fails before the first stage instead of after the stages before it."""
    tasks: set[str | None] = set()
    if train:
        load_task(config.data)  # also checks that the splits fit
    if sparsify and config.sparsity.method == "wanda":
        tasks.add(config.sparsity.calibration.task)
    if evaluate:
        tasks.update(config.evaluation.tasks or [config.data.task])
    if (
        export
        and config.export.enabled
        and (config.export.data_aware or config.export.awq or config.export.scale_estimation)
    ):
        tasks.add(config.export.calibration.task)
    q = config.quantization
    if quantize and q.weight_format == "int4" and (q.awq or q.scale_estimation):
        tasks.add(q.calibration.task)
    for task in tasks:
        if (task or config.data.task) == config.data.task:
            load_task(config.data)
        else:
            load_examples(config.data, task)


def _elastic_slices_keep_int4_groups(model: Any, config: PipelineConfig) -> list[str]:
    """LoNAS on an INT4 base slices down_proj's input by MLP widths and o_proj's by KV groups: every slice
    must keep whole quantization groups."""
    spec, heads = config.bootstrapNAS.elasticity.channel_spec(), config.bootstrapNAS.elasticity.head_spec()
    if spec is None:
        return []
    q = config.quantization
    try:
        plan = plan_group_sizes(find_linears(model, q.target_modules), q.group_size, q.group_size_fallback)
        slices = [(m.down, spec.widths_for(intermediate_size(model, m)), 1) for m in gated_mlps(model)]
        if heads is not None:
            slices += [(a.o, heads.kv_groups, a.channels_per_group) for a in attentions(model)]
    except ValueError as exc:
        return [str(exc)] if "bootstrapNAS" in str(exc) else []  # the rest is reported elsewhere
    for module, widths, step in slices:
        key = "channels" if step == 1 else "heads.kv_groups"
        group = plan.get(module)
        if group is None:
            return [
                f"quantization.target_modules: LoNAS with 'qa_sparsepeft' slices INT4 layers, but {module} is left "
                "in full precision: quantize every MLP (and, with elastic heads, attention) projection"
            ]
        off = [w for w in widths if (w * step) % group]
        if off:
            cut = (
                f"widths {off}"
                if step == 1
                else f"{off} KV groups ({[w * step for w in off]} input channels)"
            )
            return [
                f"bootstrapNAS.elasticity.{key}: {cut} of {module} are not multiples of its INT4 group size {group}, "
                "so slicing would cut through quantization groups; choose widths that keep whole groups or a "
                "smaller quantization.group_size"
            ]
    return []


def _kv_groups_fit(model: Any, config: PipelineConfig) -> list[str]:
    """Elastic heads: the attentions hold only their projections, share one layout, have at least the
    configured KV groups, and the architecture rebuilds the sliced attention from its config."""
    heads = config.bootstrapNAS.elasticity.head_spec()
    if heads is None:
        return []
    try:
        atts = uniform_attentions(model)
        heads.counts_for(atts[0].num_kv_heads)
        check_config_rebuilds(model, min(heads.kv_groups))
    except ValueError as exc:
        return [f"bootstrapNAS.elasticity.heads: {exc}" if "bootstrapNAS" not in str(exc) else str(exc)]
    return []


def _qa_targets_quantized(model: Any, config: PipelineConfig, adapted: list[str]) -> list[str]:
    """QA-SparsePEFT trains through INT4 scales: every adapted layer must be one the base quantizes."""
    q = config.quantization
    try:
        plan = plan_group_sizes(find_linears(model, q.target_modules), q.group_size, q.group_size_fallback)
    except ValueError:
        return []  # reported under quantization.* already
    left = [name for name in adapted if plan.get(name) is None]
    if not left:
        return []
    return [
        f"bootstrapNAS.training.target_modules: 'qa_sparsepeft' adapts {left[0]} (and {len(left) - 1} more), which "
        "the INT4 base leaves in full precision (not in quantization.target_modules, or no valid group size): "
        "widen quantization.target_modules or narrow the adapters"
    ]
