"""The methods: which stages a config selects, in which order, and the rules that span stages.

:func:`method_stages` gives the list ``run`` executes::

    Shears        eval_dense sparsify eval_sparse train eval_subnets [search eval_searched] export eval_ir
                  (search with select 'cheapest_above_plain' first trains or reuses the plain reference)
    LoNAS         eval_dense reorder train eval_subnets [[latency_model] search eval_searched] extract
                  eval_merged export ...
    + QA-SparsePEFT or FQ-LoRA  eval_dense reorder quantize_base eval_int4 train ... extract (INT4 codes sliced) ...
    SQFT          ... sparsify eval_sparse quantize_base eval_int4 train ... export (INT4 base + adapter)
    + SparsePEFT  ... train eval_subnets [search ...] merge eval_merged export (the merged model) ...
    + QA-SparsePEFT   the same on the INT4 base; merge writes INT4 codes, export ships them
    every export  ... eval_ir reference_<fmt> eval_reference_<fmt> plain_reference benchmark

:func:`check_method` refuses, before any stage runs, a config whose stages cannot work together.
A new method adds its stages to a family module and its branch here.
"""

from __future__ import annotations

from ..config import ConfigError, PipelineConfig, int4_base_export_conflicts
from ..elastic.lora import AdapterKind, run_trains_on_float_weights
from ..formats import is_quantized_base
from ..models import model_placement
from .bases import QuantizeBase, Sparsify
from .engine import Stage
from .evaluate import EvaluateBase, EvaluateMerged
from .lonas import Extract, FitLatency, Reorder
from .nls import EvaluateSubnets, Train
from .plain import PlainReference, plain_cache_problem
from .search import EvaluateSearched, Search
from .ship import Benchmark, EvaluateIR, Export, ExportReference, Merge


def _base_stages(config: PipelineConfig) -> list[Stage]:
    """Evaluate dense, then each new base (ordered, sparse, INT4) and its evaluation."""
    bnas, baseline = config.bootstrapNAS, config.evaluation.baseline
    stages: list[Stage] = [EvaluateBase("eval_dense", "evaluate dense")] if baseline else []
    channels, heads = bnas.elasticity.channel_spec(), bnas.elasticity.head_spec()  # LoNAS (Mode B)
    ordered = channels is not None and (
        channels.order == "importance" or (heads and heads.order == "importance")
    )
    if bnas.enabled and ordered:
        stages.append(Reorder())  # before any INT4 quantization: its groups then follow the order
    if config.sparsity.method != "none":
        stages.append(Sparsify())
        if baseline:
            stages.append(EvaluateBase("eval_sparse", "evaluate sparse"))
    if config.quantization.weight_format == "int4":
        stages.append(QuantizeBase())
        if baseline:
            stages.append(EvaluateBase("eval_int4", "evaluate INT4 base"))
    return stages


def _adapter_stages(config: PipelineConfig) -> list[Stage]:
    """NLS training and the chosen sub-adapter: searched, then merged (SQFT) or extracted (LoNAS)."""
    bnas = config.bootstrapNAS
    if not bnas.enabled:
        return []
    stages: list[Stage] = [Train(), EvaluateSubnets()]
    if bnas.search.algorithm != "heuristic":
        if bnas.search.cost == "latency":
            stages.append(FitLatency())
        stages += [Search(bnas.search.algorithm), EvaluateSearched()]
    if bnas.elasticity.channel_spec() is not None:
        stages += [Extract(), EvaluateMerged()]
    elif bnas.training.adapter_kind != "lora":
        stages += [Merge(), EvaluateMerged()]
    return stages


def _shipping_stages(config: PipelineConfig) -> list[Stage]:
    """The IR that ships, its evaluation, and the dense references it is benchmarked against."""
    if not config.export.enabled:
        return []
    stages: list[Stage] = [Export(), EvaluateIR("eval_ir", "evaluate IR")]
    if config.benchmark.enabled:
        for fmt in config.benchmark.references:
            stages += [
                ExportReference(fmt),
                EvaluateIR(f"eval_reference_{fmt}", f"evaluate dense {fmt} IR", fmt),
            ]
    if config.plain.enabled:
        stages.append(PlainReference())
    if config.benchmark.enabled:
        stages.append(Benchmark())
    return stages


def method_stages(config: PipelineConfig) -> list[Stage]:
    """The stages ``config`` selects, in order."""
    return [*_base_stages(config), *_adapter_stages(config), *_shipping_stages(config)]


def _lonas_problems(config: PipelineConfig, given_int4: bool, int4_base: bool) -> list[str]:
    """Mode B (LoNAS) with an adapter kind, a sparse base or an INT4 base it cannot extract from."""
    kind, elasticity = config.bootstrapNAS.training.adapter_kind, config.bootstrapNAS.elasticity
    if elasticity.mode != "rank_and_channels":
        return []
    problems = []
    if kind not in ("lora", "qa_sparsepeft", "fq_lora"):
        problems.append(
            f"bootstrapNAS.training.adapter_kind: {kind!r} with mode 'rank_and_channels' (LoNAS): `run` extracts "
            "the sub-network by merging a plain LoRA into a dense base, or a 'qa_sparsepeft' or 'fq_lora' "
            "adapter into an INT4 base (a LoNAS base is dense: no zeros for a mask to keep); set adapter_kind to "
            "one of those"
        )
    if config.sparsity.method != "none":
        problems.append(
            f"sparsity.method: {config.sparsity.method!r} with mode 'rank_and_channels' (LoNAS): the extracted "
            "sub-network merges a dense LoRA, which would fill the sparse base's zeros; set sparsity.method to "
            "'none' (LoNAS shrinks the model by its widths)"
        )
    if int4_base and not AdapterKind(kind).int4_trained:
        problems.append(
            f"quantization.weight_format: an INT4 base with mode 'rank_and_channels' (LoNAS) and adapter_kind "
            f"{kind!r}: the extracted sub-network could not merge into the INT4 codes; use adapter_kind "
            "'fq_lora' or 'qa_sparsepeft', or keep the base in full precision and set export.weight_format to 'int4'"
        )
    if given_int4 and elasticity.channel_spec().order == "importance":
        problems.append(
            f"model.name_or_path: {config.model.name_or_path} is already INT4, but LoNAS orders the MLP channels "
            "before quantizing (so that every width keeps whole INT4 groups): start from the full-precision "
            "model with quantization.weight_format 'int4'"
        )
    return problems


def _adapter_kind_problems(config: PipelineConfig, int4_base: bool) -> list[str]:
    """QA-SparsePEFT without an INT4 base or in reduced precision; SparsePEFT on an INT4 base."""
    t = config.bootstrapNAS.training
    if not config.bootstrapNAS.enabled:
        return []
    problems, kind = [], t.adapter_kind
    int4_trained = AdapterKind(kind).int4_trained
    if int4_trained and not int4_base:
        problems.append(
            f"bootstrapNAS.training.adapter_kind: {kind!r} trains through an INT4 base's scales: "
            "set quantization.weight_format to 'int4'"
        )
    if int4_trained and t.lora_dropout > 0:
        problems.append(
            f"bootstrapNAS.training.lora_dropout: {t.lora_dropout}; {kind!r} quantizes the update together "
            "with the base weight, so there is no separate branch to drop out: set it to 0"
        )
    where = model_placement(config.model)
    if int4_trained and where.dtype_name != "float32":
        resolved = f" ({where.dtype_name} on {where.device})" if config.model.dtype == "auto" else ""
        problems.append(
            f"model.dtype: {config.model.dtype!r}{resolved}; {kind!r} must train in float32 so that the "
            "merge (in float32) rounds every code as training did: set model.dtype to 'float32'"
        )
    if kind != "qa_sparsepeft" and t.qa_base_weight != "dequantized":
        problems.append(
            f"bootstrapNAS.training.qa_base_weight: {t.qa_base_weight!r} applies to adapter_kind 'qa_sparsepeft' "
            f"only (fq_lora and fq_sparsepeft always train on the float weights), but adapter_kind is {kind!r}; remove it"
        )
    on_float = run_trains_on_float_weights(kind, t.qa_base_weight)
    if on_float and int4_base and config.quantization.awq:
        problems.append(
            f"quantization.awq: {kind!r} trains on the float weights the INT4 base is quantized from, but AWQ "
            "rescales the weights it quantizes (and folds the inverse into the layer before), so those float "
            "weights are not what the codes came from: set quantization.awq to false (scale_estimation is fine)"
            + (", or qa_base_weight to 'dequantized'" if kind == "qa_sparsepeft" else "")
        )
    default_ratio = type(t).model_fields["quantizer_lr_ratio"].default  # a dumped config carries the default
    if not AdapterKind(kind).trains_ranges and t.quantizer_lr_ratio != default_ratio:
        problems.append(
            f"bootstrapNAS.training.quantizer_lr_ratio: only 'fq_lora' and 'fq_sparsepeft' train their quantisers' "
            f"ranges, but adapter_kind is {kind!r}; remove it or set adapter_kind to one of those"
        )
    return problems


def _int4_export_problems(config: PipelineConfig, given_int4: bool, int4_base: bool) -> list[str]:
    """Export options that would re-quantize an INT4 base, and a benchmark with no dense reference."""
    ex, kind = config.export, config.bootstrapNAS.training.adapter_kind
    trains, problems = config.bootstrapNAS.enabled, []
    if int4_base and ex.enabled:
        used = int4_base_export_conflicts(
            awq=ex.awq, scale_estimation=ex.scale_estimation, data_aware=ex.data_aware, ratio=ex.ratio
        )
        if used:
            problems.append(
                f"export.{used[0]}: the base is INT4 and the IR ships its own codes; export "
                "compression options do not apply (use quantization.awq / quantization.scale_estimation)"
            )
    if given_int4 and ex.enabled and config.benchmark.enabled:
        problems.append(
            "benchmark.enabled: the original model is already INT4, so there is no dense model to export as "
            "the reference; start from the full-precision model or set benchmark.enabled to false"
        )
    cache_problem = plain_cache_problem(config) if ex.enabled and config.plain.enabled else None
    if cache_problem:
        problems.append(cache_problem)
    if given_int4 and ex.enabled and config.plain.enabled:
        problems.append(
            "plain.enabled: the original model is already INT4, so there is no dense model to train the plain "
            "LoRA alternative on; start from the full-precision model or set plain.enabled to false"
        )
    if trains and kind == "sparsepeft" and int4_base:
        problems.append(
            "bootstrapNAS.training.adapter_kind: 'sparsepeft' merges into full precision, which would undo "
            "the INT4 base (quantization.weight_format 'int4'): use 'fq_sparsepeft' or 'qa_sparsepeft' (they merge "
            "into INT4 and keep the zeros), or 'lora' to ship the adapter unmerged"
        )
    if int4_base and ex.enabled and ex.weight_format != "int4":
        problems.append(
            f"export.weight_format: {ex.weight_format!r} but the base is INT4 (quantization.weight_format "
            "'int4'): the IR ships the base's own INT4 codes; set export.weight_format to 'int4'"
        )
    if int4_base and ex.enabled and trains and kind == "lora" and ex.merge_adapter:
        problems.append(
            "export.merge_adapter: with an INT4 base it would merge a dense update into INT4 weights; "
            "use adapter_kind 'fq_lora', 'fq_sparsepeft' or 'qa_sparsepeft' (they merge into INT4 exactly) or ship "
            "the adapter unmerged"
        )
    return problems


def _search_problems(config: PipelineConfig, given_int4: bool) -> list[str]:
    """A search floor of the plain alternative that the run cannot measure."""
    bnas = config.bootstrapNAS
    if not bnas.enabled or bnas.search.select != "cheapest_above_plain":
        return []
    if not config.plain.enabled:
        return ["bootstrapNAS.search.select: 'cheapest_above_plain' measures the plain alternative (LoRA on the "
                "dense model, merged) as the search's floor: set plain.enabled to true, or choose another select"]
    if given_int4:
        return [f"bootstrapNAS.search.select: 'cheapest_above_plain' needs the dense model for the plain "
                f"alternative, but {config.model.name_or_path} is already INT4; choose another select"]
    return []


def check_method(config: PipelineConfig) -> None:
    """Refuse a `run` whose stages cannot work together (base precision, adapter kind, export).

    Only `run` chains these stages; a single verb (``quantize``, ``train`` on an INT4 checkpoint)
    is checked where it runs. Raises :class:`~nncf_elastic_lora.config.ConfigError` naming the keys.
    """
    given_int4 = is_quantized_base(config.model.name_or_path)  # --model is already an INT4 checkpoint
    int4_base = config.quantization.weight_format == "int4" or given_int4
    problems = []
    if given_int4 and config.quantization.weight_format == "int4":
        problems.append(
            f"quantization.weight_format: {config.model.name_or_path} is already an INT4 checkpoint; set it to "
            "'none' to train on it as it is"
        )
    if given_int4 and config.sparsity.method != "none":
        problems.append(
            f"sparsity.method: {config.model.name_or_path} is already an INT4 checkpoint, and pruning it would "
            f"write a float checkpoint whose zeros its INT4 codes do not have; set it to 'none' (SQFT prunes the "
            "float model first, then quantizes)"
        )
    problems += _lonas_problems(config, given_int4, int4_base)
    problems += _adapter_kind_problems(config, int4_base)
    problems += _int4_export_problems(config, given_int4, int4_base)
    problems += _search_problems(config, given_int4)
    if problems:
        raise ConfigError("(these stages do not work together)", problems)
