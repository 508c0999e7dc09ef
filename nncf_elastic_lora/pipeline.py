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

import torch

from . import distributed
from .config import BootstrapNASConfig, ChannelElasticityConfig, ModelConfig, PipelineConfig, check_method
from .data import TaskData, eval_only_sizes, load_examples, load_task, split_examples
from .elastic import ElasticLoraSuperNet
from .evaluation import CausalLM, TaskResult, evaluate_task, results_table
from .models import load_model, resolve_model_dir
from .outputs import atomic_directory, write_json, write_text
from .provenance import model_fingerprint
from .report.tables import markdown_table, print_table
from .sparsity import calibration_batches, sparsify_model
from .stages import RunState, cached_stage, execute, method_stages
from .training import train_super_adapter

_stage = cached_stage  # the name earlier code and tests use

log = logging.getLogger(__name__)


def eval_splits(config: PipelineConfig) -> dict[str, TaskData]:
    """The data each evaluated task is scored on; the training task keeps its own splits."""
    out = {}
    for task in config.evaluation.tasks or [config.data.task]:
        if task == config.data.task:
            out[task] = load_task(config.data)
        else:
            examples = load_examples(config.data, task)
            # Never more than splits.test: the rows after those may be another run's calibration or training rows.
            n = min(
                config.evaluation.limit or config.data.splits.test, config.data.splits.test, len(examples)
            )
            out[task] = split_examples(examples, eval_only_sizes(n, len(examples)), config.data.seed, task)
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
        task = load_task(config.data, cal.task)
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
    with atomic_directory(output, verb="sparsify") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "report.json", result)
    log.info(
        "sparsified %s: %.2f%% of targeted weights zeroed", config.model.name_or_path, 100 * report.sparsity
    )
    return result


def reorder(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """LoNAS: permute every MLP's channels (and, with elastic heads, every attention's KV groups) most
    important first; write the (function-identical) checkpoint.

    Scored on ``bootstrapNAS.elasticity.channels.calibration`` windows of the train split. The MLPs are
    ordered unless ``channels.order`` is 'original' while the heads are ordered; the heads when
    ``bootstrapNAS.elasticity.heads.order`` is 'importance'. The report gives the importance each width
    (each KV-group count) keeps, ordered and in the checkpoint's order, and the largest logit change the
    permutation caused on a calibration window (float rounding only).
    """
    from .elastic.channels import order_mlp_channels
    from .elastic.heads import attentions, order_kv_groups

    spec = config.bootstrapNAS.elasticity.channels or ChannelElasticityConfig()
    heads = config.bootstrapNAS.elasticity.heads
    order_heads = heads is not None and heads.order == "importance"
    order_mlps = spec.order == "importance" or not order_heads
    cal = spec.calibration
    start = time.perf_counter()
    task = load_task(config.data, cal.task)
    model, tokenizer = load_model(config.model)
    batches = calibration_batches(task.train, tokenizer, cal.num_samples, cal.seq_len, cal.seed)
    with torch.no_grad():
        before = model(input_ids=batches[0]).logits
    ordering = (
        order_mlp_channels(model, batches, tuple(spec.fractions_below_full(model))) if order_mlps else None
    )
    head_ordering = None
    if order_heads:
        kv_heads = attentions(model)[0].num_kv_heads
        kept = sorted((c for c in heads.counts_for(kv_heads) if c < kv_heads), reverse=True)
        head_ordering = order_kv_groups(model, batches, tuple(kept or [1]))
    with torch.no_grad():
        change = float((model(input_ids=batches[0]).logits - before).abs().max())
    result = {
        "model": config.model.name_or_path,
        "ordering": ordering.to_dict() if ordering else None,
        "head_ordering": head_ordering.to_dict() if head_ordering else None,
        "max_logit_change": change,
        "calibration": {**cal.model_dump(), "task": task.name, "split": "train"},
        "time_s": time.perf_counter() - start,
    }
    with atomic_directory(output, verb="reorder") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "report.json", result)
    log.info(
        "ordered the %s of %s (max logit change %.2e)",
        " and ".join(w for w, on in (("MLP channels", order_mlps), ("KV groups", order_heads)) if on),
        config.model.name_or_path,
        change,
    )
    return result


def extract(
    config: PipelineConfig, output: str | Path, super_adapter: str | Path, subnet: str | Path = "heuristic"
) -> dict[str, Any]:
    """LoNAS: the sub-network ``subnet`` of a super-adapter as a smaller checkpoint (merged, MLPs sliced).

    ``subnet``: ``heuristic``, ``maximal``, ``minimal``, or a ``subnet_config.json`` (or the folder
    holding one: ``search``'s ``sub_adapter/``). ``config.model`` is the base it was trained on.
    """
    from .elastic.lora import AdapterKind
    from .extract import extract_int4_subnet, extract_subnet
    from .int4 import check_codes_match_weights, save_quantized_weights

    start = time.perf_counter()
    # Merged in float32 as `merge` does: the update is not rounded into a bf16/fp16 base.
    supernet, tokenizer = load_supernet(config.model.model_copy(update={"dtype": "float32"}), super_adapter)
    chosen = subnet_config(supernet, subnet)
    adapter_ids = {id(p) for p in supernet.trainable_parameters()}
    dense_params = sum(p.numel() for p in supernet.model.parameters() if id(p) not in adapter_ids)
    seq_len = config.bootstrapNAS.search.seq_len
    macs = {
        "subnet": supernet.get_macs_for_active_config(chosen, seq_len=seq_len, include_base=True),
        "maximal": supernet.get_macs_for_active_config(
            supernet.get_maximal_config(), seq_len=seq_len, include_base=True
        ),
    }
    widths = list(supernet.mlp_widths(chosen).values())
    kv_groups, kv_heads = supernet.kv_groups(chosen), supernet.kv_heads()  # before extraction spends it
    quantized = None
    if supernet.kind is AdapterKind.QA_SPARSEPEFT:  # INT4 base: the merged codes, sliced with the MLPs
        model, quantized = extract_int4_subnet(supernet, chosen)
        check_codes_match_weights(model, quantized)
    else:
        model = extract_subnet(supernet, chosen)
    params = sum(p.numel() for p in model.parameters())
    result = {
        "base_model": config.model.name_or_path,
        "super_adapter": str(super_adapter),
        "subnet": str(subnet),
        "config": chosen,
        "mlp_widths": widths,
        "kv_groups": kv_groups,  # with elastic heads: KV groups kept per layer (else None)
        "kv_heads": kv_heads,
        "params": params,
        "params_before": dense_params,
        "macs": {**macs, "seq_len": seq_len},  # adapted linears and every MLP projection, base included
        "precision": "int4" if quantized is not None else "float",
        "time_s": time.perf_counter() - start,
    }
    with atomic_directory(output, verb="extract") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if quantized is not None:
            save_quantized_weights(
                tmp, quantized, {"extracted_from": str(super_adapter), "subnet": str(subnet)}
            )
        write_json(tmp / "extract_report.json", result)
    log.info(
        "extracted %s: %d parameters (%.1f%% of %d)",
        subnet,
        params,
        100 * params / dense_params,
        dense_params,
    )
    return result


def fit_latency(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """LoNAS: measure sub-networks of ``config.model`` on this machine and fit the latency model.

    The sub-networks take the configured channel widths (the same in every layer: the fit points;
    ``bootstrapNAS.search.latency.holdout`` random mixes: the reported prediction error) and, with
    elastic heads, the configured KV-group counts, exported at
    ``search.latency.weight_format`` (default ``export.weight_format``). Writes ``latency_model.json``
    and ``latency_model.png`` under ``output`` (atomically); search takes the JSON for cost 'latency'.
    """
    from .latency import FILE, attention_layout, fit_latency_model, mlp_layout, plot_latency_model

    spec = config.bootstrapNAS.elasticity.channel_spec()
    if spec is None:
        raise ValueError(
            "the latency model predicts from the MLP widths: set bootstrapNAS.elasticity.mode to "
            "'rank_and_channels' (LoNAS)"
        )
    from .formats import is_quantized_base
    from .int4 import read_quantization_info
    from .models import meta_model

    lat, ex = config.bootstrapNAS.search.latency, config.export
    meta = meta_model(config.model)
    _, sizes, _ = mlp_layout(meta)
    widths = [spec.widths_for(size) for size in sizes]
    heads = config.bootstrapNAS.elasticity.head_spec()
    kv_groups = heads.counts_for(attention_layout(meta)[0]) if heads else None
    fmt, group_size, sym = lat.weight_format or ex.weight_format, ex.group_size, ex.sym
    base_dir = Path(resolve_model_dir(config.model))
    if is_quantized_base(base_dir):  # the IR will ship the base's INT4 codes: measure INT4 of that layout
        info = read_quantization_info(base_dir)
        fmt, group_size, sym = "int4", info["group_size"], info["sym"]
    start = time.perf_counter()
    fitted = fit_latency_model(
        config.model,
        widths=widths,
        kv_groups=kv_groups,
        holdout=lat.holdout,
        batch_size=lat.batch_size,
        weight_format=fmt,
        group_size=group_size,
        sym=sym,
        ratio=ex.ratio,
        group_size_fallback=ex.group_size_fallback,
        device=ex.device,
        properties=ex.runtime_properties,
        work_dir=Path(output).resolve().parent,
        prompt_tokens=lat.prompt_tokens,
        new_tokens=lat.new_tokens,
        repeats=lat.repeats,
        seed=lat.seed,
        progress=progress,
    )
    with atomic_directory(output, verb="latency") as tmp:
        fitted.save(tmp / FILE)
        plot_latency_model(fitted, tmp / "latency_model.png")
    return {**fitted.to_dict(), "model": config.model.name_or_path, "time_s": time.perf_counter() - start}


def subnet_config(supernet: ElasticLoraSuperNet, subnet: str | Path) -> dict[str, int]:
    """A named sub-network (``heuristic``, ``maximal``, ``minimal``) or one read from a subnet_config.json."""
    if str(subnet) in ("heuristic", "maximal", "minimal"):
        return getattr(supernet, f"get_{subnet}_config")()
    path = Path(subnet)
    if path.is_dir():
        path = path / "subnet_config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"--subnet {subnet}: not 'heuristic', 'maximal' or 'minimal', and {path} does not exist "
            "(give a subnet_config.json or a sub-adapter folder written by train or search)"
        )
    try:
        return supernet.config_from_json(path.read_text())
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path} is not a sub-network of this super-adapter ({exc})") from None


def quantize(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """INT4 base (SQFT): quantize ``config.model``'s target linears with NNCF, write an INT4 checkpoint.

    The checkpoint holds the dequantized weights (any Hugging Face tool loads it; its function is
    the INT4 model's) plus the codes, scales and zero points (``quantized_weights.safetensors``) that
    QA-SparsePEFT trains through and export ships. Every zero of a sparse base stays zero.
    """
    from .int4 import quantize_base, save_quantized_weights
    from .sparsity import linear_sparsity

    q = config.quantization
    start = time.perf_counter()
    model, tokenizer = load_model(config.model.model_copy(update={"dtype": "float32"}))
    zeros_before = {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    texts = None
    if q.awq or q.scale_estimation:
        texts = train_texts(config, q.calibration.task, q.calibration.num_samples)
    qweights = quantize_base(
        model,
        target_modules=q.target_modules,
        group_size=q.group_size,
        sym=q.sym,
        group_size_fallback=q.group_size_fallback,
        calibration=texts,
        tokenizer=tokenizer,
        awq=q.awq,
        scale_estimation=q.scale_estimation,
        progress=progress,
    )
    # quantize_base checks that every zero stayed zero; small weights may also have rounded to zero.
    new_zeros = sum(int(((model.get_submodule(n).weight == 0) & ~zeros_before[n]).sum()) for n in qweights)
    report = {
        "model": config.model.name_or_path,
        "bits": 4,
        "group_size": q.group_size,
        "group_sizes": sorted({w.group_size for w in qweights.values()}),
        "sym": q.sym,
        "awq": q.awq,
        "scale_estimation": q.scale_estimation,
        "calibration_samples": len(texts or []),
        "modules": sorted(qweights),
        "zeros_kept": True,
        "new_zeros": new_zeros,
        "sparsity": linear_sparsity(model),
        "time_s": time.perf_counter() - start,
    }
    with atomic_directory(output, verb="quantize") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_quantized_weights(tmp, qweights, {"source": config.model.name_or_path})
        write_json(tmp / "report.json", report)
    log.info(
        "quantized %d linears of %s to INT4 (group %d)",
        len(qweights),
        config.model.name_or_path,
        q.group_size,
    )
    return report


def base_quantized_weights(model_config: ModelConfig) -> dict[str, Any] | None:
    """The INT4 codes, scales and zero points beside a quantized base checkpoint (None otherwise)."""
    from .formats import is_quantized_base
    from .int4 import load_quantized_weights

    base = Path(resolve_model_dir(model_config))
    return load_quantized_weights(base) if is_quantized_base(base) else None


def check_trainable_base(config: PipelineConfig) -> None:
    """QA-SparsePEFT trains through the INT4 codes beside its base: refuse a base without them."""
    if config.bootstrapNAS.training.adapter_kind != "qa_sparsepeft":
        return
    from .formats import is_quantized_base

    base = resolve_model_dir(config.model)
    if not is_quantized_base(base):
        raise ValueError(
            "bootstrapNAS.training.adapter_kind 'qa_sparsepeft' trains through an INT4 base's frozen scales, but "
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
        quantized=quantized if t.adapter_kind == "qa_sparsepeft" else None,
        channels=bnas.elasticity.channel_spec(),
        heads=bnas.elasticity.head_spec(),
    )


def merge(
    config: PipelineConfig, output: str | Path, adapter: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Merge a SparsePEFT / QA-SparsePEFT sub-adapter into its base (``config.model``), keeping its zeros.

    SparsePEFT gives a standard Hugging Face checkpoint whose zeros are the base's; QA-SparsePEFT an
    INT4 checkpoint (dequantized weights + codes) whose codes are those the trained forward computed,
    which ``export`` ships as an INT4 IR. Refused, writing nothing: an adapter trained on another base
    or through other scales. Writes ``merge_report.json``; returns it.
    """
    from .int4 import save_quantized_weights
    from .merge import merge_to_directory, read_sub_adapter_record
    from .sparsity import linear_sparsity

    start = time.perf_counter()
    model, tokenizer = load_model(config.model.model_copy(update={"dtype": "float32"}))
    quantized = base_quantized_weights(config.model)
    base_sparsity = linear_sparsity(model)
    # A peft folder without our record: its kind comes from the config.
    kind = None if read_sub_adapter_record(adapter) else config.bootstrapNAS.training.adapter_kind
    result = merge_to_directory(
        model=model,
        adapter_dir=adapter,
        output=output,
        adapter_kind=kind,
        quantized=quantized,
        base_fingerprint=model_fingerprint(config.model),
        tokenizer=tokenizer,
        write_quantized=lambda folder, q: save_quantized_weights(folder, q, {"merged_adapter": str(adapter)}),
        describe=lambda r: {
            "base": config.model.name_or_path,
            "precision": "int4" if r.quantized is not None else "fp32",
            "sparsity": linear_sparsity(r.model),
            "base_sparsity": base_sparsity,
            "zeros_kept": True,  # merge_to_directory refuses a merge that loses one of the base's zeros
            "time_s": time.perf_counter() - start,
        },
    )
    return result.report


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
    supernet = build_supernet(model, config.bootstrapNAS, base_quantized_weights(config.model))
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


def load_supernet(model_config: ModelConfig, super_adapter: str | Path) -> tuple[ElasticLoraSuperNet, Any]:
    """The base model with a saved super-adapter attached, and its tokenizer."""
    model, tokenizer = load_model(model_config)
    supernet = ElasticLoraSuperNet.load_super_adapter(
        model,
        super_adapter,
        quantized=base_quantized_weights(model_config),
        base_fingerprint=model_fingerprint(model_config),  # refuse a base it was not trained on
    )
    return supernet, tokenizer


def evaluate_subnets(
    supernet: ElasticLoraSuperNet,
    tokenizer: Any,
    config: PipelineConfig,
    subnets: list[str] | dict[str, dict[str, int]],
    tasks,
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


def latency_predictor(config: PipelineConfig, latency_model: str | Path | None) -> Any:
    """The :class:`~nncf_elastic_lora.latency.LatencyModel` the configured search needs (None unless cost
    'latency'), loaded and checked against ``config.model``'s MLPs (no weights read)."""
    from .latency import LatencyModel, attention_layout, mlp_layout
    from .models import meta_model

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


def search(
    config: PipelineConfig,
    output: str | Path,
    super_adapter: str | Path,
    progress: bool = True,
    latency_model: str | Path | None = None,
) -> dict[str, Any]:
    """Search a sub-adapter of a trained super-adapter on the validation split (``bootstrapNAS.search``).

    ``config.model`` is the base the super-adapter was trained on. Writes the search outputs and the
    chosen sub-adapter (``sub_adapter/``) under ``output``; an existing ``evaluations.jsonl`` there is
    reused, so a killed search continues where it stopped. Cost 'latency' needs ``latency_model``
    (a ``latency_model.json`` written by :func:`fit_latency`, or its folder).
    """
    from .search import SubnetObjectives, search_subadapter

    s = config.bootstrapNAS.search
    predictor = latency_predictor(config, latency_model)
    supernet, tokenizer = load_supernet(config.model, super_adapter)
    data = load_task(config.data)
    objectives = SubnetObjectives(
        supernet,
        tokenizer,
        data.validation[: s.subset_size],
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
        progress=progress,
    )
    return {**result.to_dict(), "data": data.record}


def train_texts(config: PipelineConfig, task_name: str | None, num_samples: int) -> list[str]:
    """Train-split texts (prompt + answer) of a task, seeded and shuffled: calibration data."""
    import random

    task = load_task(config.data, task_name)
    texts = [e.text for e in task.train]
    random.Random(config.data.seed).shuffle(texts)
    return texts[:num_samples]


def calibration_texts(config: PipelineConfig) -> list[str]:
    """Calibration texts for data-aware weight compression of the export (``export.calibration``)."""
    return train_texts(config, config.export.calibration.task, config.export.calibration.num_samples)


def export(
    config: PipelineConfig,
    output: str | Path,
    adapter: str | Path | None = None,
    save_merged: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``config.model`` (plus ``adapter``) to OpenVINO IR as ``config.export`` says.

    Calibration texts come from ``export.calibration`` (train split), the parity prompts from the
    first test prompts of ``data.task``; the IR directory gets ``export_report.json`` and ``parity.json``.
    """
    from .deploy.export import export_openvino

    ex = config.export
    data_aware = ex.data_aware or ex.awq or ex.scale_estimation
    prompts = None
    if ex.parity.num_prompts:
        prompts = [e.prompt for e in load_task(config.data).test[: ex.parity.num_prompts]]
    report = export_openvino(
        config.model,
        output,
        adapter=adapter,
        merge_adapter=ex.merge_adapter,
        weight_format=ex.weight_format,
        group_size=ex.group_size,
        ratio=ex.ratio,
        sym=ex.sym,
        awq=ex.awq,
        scale_estimation=ex.scale_estimation,
        calibration=calibration_texts(config) if data_aware else None,
        group_size_fallback=ex.group_size_fallback,
        save_merged=save_merged,
        genai_device=ex.device,
        compare_prompts=prompts,
        compare_tokens=ex.parity.max_new_tokens,
        overwrite=overwrite,
    )
    return report


def evaluate_ir(
    config: PipelineConfig,
    ir_dir: str | Path,
    tasks: dict[str, TaskData] | None = None,
    progress: bool = True,
) -> list[TaskResult]:
    """Score an exported OpenVINO directory with ``export.device`` and ``export.runtime_properties``."""
    from .models import load_openvino_model

    model, tokenizer = load_openvino_model(ir_dir, config.export.device, config.export.runtime_properties)
    return evaluate_model(model, tokenizer, config, tasks, progress)


def write_eval(
    output: Path, label: str, results: list[TaskResult], extra: dict[str, Any] | None = None
) -> None:
    headers, rows = results_table({label: results})
    write_json(output / "eval.json", {**(extra or {}), "results": [r.to_dict() for r in results]})
    write_text(output / "eval.md", markdown_table(headers, rows))
    lines = [json.dumps({"task": r.task, **p}) for r in results for p in r.predictions]
    write_text(output / "predictions.jsonl", "".join(line + "\n" for line in lines))


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
    report = run_report(run, [s.name for s in stages])
    if report.get("benchmark"):
        plot = plot_accuracy_vs_speed(report["benchmark"]["rows"], output / "accuracy_vs_speed.png")
        report["artifacts"]["plot"] = str(plot) if plot else None
    write_json(output / "report.json", report)
    write_text(output / "report.md", summary_markdown(report))
    return report


def _pick(result: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if result is None else {k: result.get(k) for k in keys}


def primary_score(results: list[dict[str, Any]], task: str) -> tuple[str, float] | None:
    """``(metric, value)`` of ``task``: accuracy for multiple choice, exact match for generation."""
    for r in results:
        if r["task"] == task:
            for metric in ("acc", "exact_match", "acc_norm"):
                if metric in r["metrics"]:
                    return metric, r["metrics"][metric]
    return None


def benchmark_rows(run: RunState) -> list[dict[str, Any]]:
    """Every benchmarked IR with its size, accuracy and decode speed against the first reference."""
    rows = []
    results = run.results["benchmark"]["results"]
    data_task = run.config.data.task  # scored on the training task if evaluated, else the first evaluated one
    task = data_task if data_task in run.tasks else next(iter(run.tasks))
    reference = results[1]  # [shipped, *references]: the first reference is the peer of every ratio
    ref_speed = {b["batch_size"]: b["decode_tokens_per_s"] for b in reference["batches"]}
    for r in results:
        score = primary_score(run.evaluation.get(r["label"], []), task)
        speed = {b["batch_size"]: b["decode_tokens_per_s"] for b in r["batches"]}
        rows.append(
            {
                "label": r["label"],
                "path": r["model"],
                "shipped": r is results[0],
                "weights_bytes": r["weights_bytes"],
                "task": task,
                "split": run.config.evaluation.split,
                "metric": score[0] if score else None,
                "score": score[1] if score else None,
                "decode_tokens_per_s": speed,
                "speedup": {b: speed[b] / ref_speed[b] for b in speed if ref_speed.get(b)},
            }
        )
    return rows


def run_report(run: RunState, stage_names: list[str]) -> dict[str, Any]:
    """``report.json``: the evaluations, each stage's key figures, the artifacts and the time per stage."""
    res = run.results
    train_report = res.get("train")
    report = {
        "config": run.config.model_dump(mode="json"),
        "stages": stage_names,
        "data": {name: t.record for name, t in run.tasks.items()},
        "evaluation": run.evaluation,
        "sparsity": _pick(
            res.get("sparsify"), ("method", "ratio", "pattern", "sparsity", "model_sparsity", "time_s")
        ),
        "quantization": _pick(
            res.get("quantize_base"), ("bits", "group_size", "sym", "modules", "zeros_kept", "time_s")
        ),
        "training": None
        if train_report is None
        else {
            **_pick(
                train_report,
                (
                    "algorithm",
                    "steps",
                    "train_loss",
                    "step_time_median_s",
                    "time_s",
                    "trainable_params",
                    "adapter_params",
                    "search_space",
                ),
            ),
            "adapter_kind": run.config.bootstrapNAS.training.adapter_kind,
        },
        "search": _pick(
            res.get("search"),
            (
                "algorithm",
                "chosen_quality",
                "chosen_cost",
                "evaluations_used",
                "new_evaluations",
                "wall_s",
                "reference",
            ),
        ),
        "merge": res.get("merge"),
        "extract": _pick(
            res.get("extract"),
            (
                "subnet",
                "config",
                "mlp_widths",
                "kv_groups",
                "kv_heads",
                "params",
                "params_before",
                "macs",
                "precision",
            ),
        ),
        "export": _pick(
            res.get("export"), ("weight_format", "adapter", "ir_sparsity", "size_bytes", "parity", "export_s")
        ),
        "benchmark": None
        if "benchmark" not in res
        else {"machine": res["benchmark"]["machine"], "rows": benchmark_rows(run)},
        "artifacts": dict(run.artifacts),
        "stage_time_s": run.times,
    }
    return report


def plot_accuracy_vs_speed(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against batch-1 decode tokens/s, one point per benchmarked IR (PNG)."""
    points = [r for r in rows if r["score"] is not None and 1 in r["decode_tokens_per_s"]]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        x, y = r["decode_tokens_per_s"][1], r["score"]
        ax.scatter([x], [y], s=60, marker="*" if r["shipped"] else "o", zorder=3)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("GenAI decode tokens/s, batch 1 (higher is faster)")
    ax.set_ylabel(f"{points[0]['metric']} ({points[0]['task']}, {points[0]['split']} split)")
    ax.margins(x=0.35, y=0.15)
    ax.set_title("What this run made: accuracy against decode speed")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    results = {label: [TaskResult(**r) for r in rs] for label, rs in report["evaluation"].items()}
    return results_table(results)


def _extract_section(report: dict[str, Any]) -> str:
    """report.md's LoNAS section: the extracted checkpoint's size and widths ('' without one)."""
    x = report.get("extract")
    if not x:
        return ""
    widths = ", ".join(str(w) for w in x["mlp_widths"]) or "unchanged"
    share = f"{x['params'] / x['params_before']:.1%} of {x['params_before']:,}"
    where = report["artifacts"].get("extracted_model")
    heads = f"; KV groups per attention: {x['kv_groups']} of {x['kv_heads']}" if x.get("kv_groups") else ""
    return (
        f"\n## Extracted sub-network (LoNAS)\n\n{where}: {x['params']:,} parameters ({share}); MLP widths per "
        f"layer: {widths}{heads}\n"
    )


def summary_markdown(report: dict[str, Any]) -> str:
    headers, rows = summary_rows(report)
    text = "# nncf-elastic-lora run\n\n## Accuracy\n\n" + markdown_table(headers, rows)
    if report.get("sparsity"):
        s = report["sparsity"]
        text += (
            f"\n## Sparsity\n\n{s['method']} {s['pattern']} at ratio {s['ratio']}: "
            f"{100 * s['sparsity']:.2f}% of targeted weights, {100 * s['model_sparsity']:.2f}% of all parameters\n"
        )
    if report.get("quantization"):
        q = report["quantization"]
        text += (
            f"\n## INT4 base\n\nNNCF {'symmetric' if q['sym'] else 'asymmetric'} INT4, group size {q['group_size']}, "
            f"{len(q['modules'])} linear layers; every zero of the base kept: {q['zeros_kept']}\n"
        )
    if report.get("training"):
        t = report["training"]
        text += (
            f"\n## Training\n\n{t['algorithm']}: {t['steps']} steps, final loss {t['train_loss']:.4f}, "
            f"median step {t['step_time_median_s']:.2f} s; trainable parameters {t['trainable_params']:,}; "
            f"adapter parameters maximal / heuristic / minimal: {t['adapter_params']['maximal']:,} / "
            f"{t['adapter_params']['heuristic']:,} / {t['adapter_params']['minimal']:,}; "
            f"search space: {t['search_space']['groups']} groups, {t['search_space']['size']:.3g} sub-adapters\n"
        )
    text += _extract_section(report)
    if report.get("export"):
        e = report["export"]
        text += f"\n## OpenVINO IR\n\n{report['artifacts']['openvino']}: {e['weight_format']} weights, "
        text += f"{e['size_bytes']['model_bin'] / 2**20:.1f} MiB of weights"
        if e.get("ir_sparsity") is not None:
            text += f", {100 * e['ir_sparsity']:.2f}% zeros in the decoder's MatMul weights"
        if e.get("parity"):
            p = e["parity"]
            text += (
                f"; against torch on {p['prompts']} prompts: max |logit diff| {p['logits_max_abs_diff']:.2e} "
                f"(f32 hint), identical greedy tokens {p['greedy_identical_optimum']}/{p['prompts']} (optimum-intel)"
            )
            if "greedy_identical_genai" in p:
                text += f", {p['greedy_identical_genai']}/{p['prompts']} (GenAI)"
        text += "\n"
    if report.get("merge"):
        m = report["merge"]
        text += (
            f"\n## Merged model\n\n{report['artifacts']['merged_model']}: {m['adapter_kind']} sub-adapter merged "
            f"into {m['precision']} weights; zeros in the linear layers: {100 * m['sparsity']:.2f}% (base: "
            f"{100 * m['base_sparsity']:.2f}%); every zero of the base kept: {m['zeros_kept']}, "
            f"{m['new_zeros']:,} new zeros where the update cancelled a weight\n"
        )
    if report.get("benchmark"):
        text += benchmark_markdown(report["benchmark"])
    text += "\n## Time per stage\n\n" + markdown_table(
        ["stage", "seconds"], [[k, v] for k, v in report["stage_time_s"].items()]
    )
    text += "\n## Data splits\n\n" + markdown_table(
        ["task", "seed", "available", "train", "validation", "test"],
        [[n, r["seed"], r["available"], *r["sizes"].values()] for n, r in report["data"].items()],
    )
    return text


def benchmark_markdown(bench: dict[str, Any]) -> str:
    """The shipped IR against the dense references: size, accuracy, decode speed and its ratio."""
    rows = bench["rows"]
    sizes = sorted({b for r in rows for b in r["decode_tokens_per_s"]})
    ref = rows[1]["label"] if len(rows) > 1 else rows[0]["label"]
    headers = ["IR", "weights (MiB)", rows[0]["metric"] or "score"]
    headers += [h for b in sizes for h in (f"decode tok/s b{b}", f"x {ref} b{b}")]
    table = [
        [
            ("**shipped** " if r["shipped"] else "") + r["label"],
            r["weights_bytes"] / 2**20,
            r["score"],
            *(v for b in sizes for v in (r["decode_tokens_per_s"].get(b), r["speedup"].get(b))),
        ]
        for r in rows
    ]
    m = bench["machine"]
    cpu = f"{m.get('cpu')}, {m.get('logical_cores')} logical cores, AVX-512 {m.get('avx512')}, AMX {m.get('amx')}"
    shipped = rows[0]
    verdict = ""
    if 1 in shipped["speedup"]:
        faster = [
            r["label"]
            for r in rows[1:]
            if r["decode_tokens_per_s"].get(1, 0) > shipped["decode_tokens_per_s"][1]
        ]
        verdict = f"\nAt batch 1 the shipped IR decodes at {shipped['speedup'][1]:.2f}x the {ref}."
        if faster:
            verdict += f" Faster than the shipped IR: {', '.join(faster)}."
    return (
        "\n## Speed: the shipped IR against dense exports of the original model\n\n"
        + markdown_table(headers, table)
        + verdict
        + f"\n\nOpenVINO GenAI LLMPipeline, medians, measured in this run on {cpu} "
        f"(OpenVINO {m.get('openvino')}). Compare speeds only within one run. "
        "Plot: accuracy_vs_speed.png\n"
    )


def export_facts(export_report: dict[str, Any]) -> list[list[str]]:
    """Rows ``[what, value]`` about an exported IR: weights, zeros, agreement with torch."""
    e = export_report
    facts = [["OpenVINO IR weights", f"{e['weight_format']}, {e['size_bytes']['model_bin'] / 2**20:.1f} MiB"]]
    if e.get("ir_sparsity") is not None:
        facts.append(["zeros in the IR's MatMul weights", f"{100 * e['ir_sparsity']:.2f}%"])
    if e.get("parity"):
        p = e["parity"]
        facts += [
            ["max |logit diff| vs torch (f32)", f"{p['logits_max_abs_diff']:.3g}"],
            ["identical greedy: optimum-intel", f"{p['greedy_identical_optimum']}/{p['prompts']}"],
            ["identical greedy: GenAI", f"{p.get('greedy_identical_genai', '-')}/{p['prompts']}"],
        ]
    return facts


def print_summary(report: dict[str, Any]) -> None:
    headers, rows = summary_rows(report)
    print_table("accuracy", headers, rows)
    facts = []
    if report.get("sparsity"):
        facts.append(["sparsity (targeted weights)", f"{100 * report['sparsity']['sparsity']:.2f}%"])
    if report.get("training"):
        t = report["training"]
        facts += [
            ["trainable parameters", f"{t['trainable_params']:,}"],
            ["heuristic sub-adapter parameters", f"{t['adapter_params']['heuristic']:,}"],
            ["training steps / median step (s)", f"{t['steps']} / {t['step_time_median_s']:.2f}"],
        ]
    if report.get("extract"):
        x = report["extract"]
        facts += [
            [
                "extracted parameters",
                f"{x['params']:,} ({x['params'] / x['params_before']:.1%} of {x['params_before']:,})",
            ],
            ["extracted MLP widths", ", ".join(str(w) for w in x["mlp_widths"]) or "unchanged"],
        ]
        if x.get("kv_groups"):
            facts.append(["extracted KV groups per attention", f"{x['kv_groups']} of {x['kv_heads']}"])
    if report.get("export"):
        facts += export_facts(report["export"])
    if facts:
        print_table("model", ["", "value"], facts)
    if report.get("benchmark"):
        rows = report["benchmark"]["rows"]
        sizes = sorted({b for r in rows for b in r["decode_tokens_per_s"]})
        print_table(
            f"speed against {rows[1]['label'] if len(rows) > 1 else 'itself'} (GenAI, this machine)",
            ["IR", "MiB", "score", *(f"tok/s b{b} (x)" for b in sizes)],
            [
                [
                    r["label"],
                    r["weights_bytes"] / 2**20,
                    r["score"],
                    *(
                        f"{r['decode_tokens_per_s'][b]:.1f} ({r['speedup'].get(b, 0):.2f}x)"
                        if b in r["decode_tokens_per_s"]
                        else "-"
                        for b in sizes
                    ),
                ]
                for r in rows
            ],
        )
    print_table(
        "time per stage (s)", ["stage", "seconds"], [[k, v] for k, v in report["stage_time_s"].items()]
    )
