"""LoNAS stages: order channels (and KV groups) by importance, fit a latency model, extract a sub-network.

:func:`reorder` writes a base with the same function whose prefixes are the most important channels;
:func:`fit_latency` measures sub-networks on this machine for search cost 'latency'; :func:`extract`
merges the chosen sub-adapter and slices the model into a physically smaller checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..blockwise import streamed_logits
from ..config import ChannelElasticityConfig, PipelineConfig
from ..data import load_task
from ..elastic import ElasticLoraSuperNet
from ..elastic.channels import gated_mlps, input_sq_sums, order_mlp_channels
from ..elastic.heads import attentions, order_kv_groups
from ..extract import extract_int4_subnet, extract_subnet
from ..formats import LATENCY_MODEL, is_quantized_base
from ..int4 import check_codes_match_weights, read_quantization_info, save_quantized_weights
from ..latency import attention_layout, fit_latency_model, mlp_layout, plot_latency_model
from ..models import load_model, meta_model, model_placement, resolve_model_dir
from ..outputs import atomic_directory, fingerprint_path, save_checkpoint
from ..sparsity import calibration_batches
from .bases import NewBase, refuse_int4_rewrite
from .engine import RunState, Stage, completed_or, pick
from .nls import adapter_inputs, load_supernet

log = logging.getLogger(__name__)


def reorder(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """LoNAS: permute every MLP's channels (and, with elastic heads, every attention's KV groups) most
    important first; write the (function-identical) checkpoint.

    Scored on ``bootstrapNAS.elasticity.channels.calibration`` windows of the train split. The MLPs are
    ordered unless ``channels.order`` is 'original' while the heads are ordered; the heads when
    ``bootstrapNAS.elasticity.heads.order`` is 'importance'. The report gives the importance each width
    (each KV-group count) keeps, ordered and in the checkpoint's order, and the largest logit change the
    permutation caused on a calibration window (float rounding only).
    """
    spec = config.bootstrapNAS.elasticity.channels or ChannelElasticityConfig()
    heads = config.bootstrapNAS.elasticity.heads
    order_heads = heads is not None and heads.order == "importance"
    order_mlps = spec.order == "importance" or not order_heads
    cal = spec.calibration
    refuse_int4_rewrite(config, "reorder")
    start = time.perf_counter()
    task = load_task(config.data, cal.task)
    # In CPU memory, one decoder block at a time on the device: the model may be larger than the device.
    model, tokenizer = load_model(config.model, on_device=False)
    device = model_placement(config.model).device
    batches = calibration_batches(task.train, tokenizer, cal.num_samples, cal.seq_len, cal.seed)
    before = streamed_logits(model, batches[0], device)
    # One calibration pass for both: permuting MLP channels leaves every attention's output unchanged.
    downs = [m.down for m in gated_mlps(model)] if order_mlps else []
    outs = [a.o for a in attentions(model)] if order_heads else []
    sums = input_sq_sums(model, downs + outs, batches, device)
    ordering = (
        order_mlp_channels(model, batches, tuple(spec.fractions_below_full(model)), device, sums[: len(downs)])
        if order_mlps
        else None
    )
    head_ordering = None
    if order_heads:
        kv_heads = attentions(model)[0].num_kv_heads
        kept = sorted((c for c in heads.counts_for(kv_heads) if c < kv_heads), reverse=True)
        head_ordering = order_kv_groups(model, batches, tuple(kept or [1]), device, sums[len(downs) :])
    change = float((streamed_logits(model, batches[0], device) - before).abs().max())
    result = {
        "model": config.model.name_or_path,
        "ordering": ordering.to_dict() if ordering else None,
        "head_ordering": head_ordering.to_dict() if head_ordering else None,
        "max_logit_change": change,
        "calibration": {**cal.model_dump(), "task": task.name, "split": "train"},
        "time_s": time.perf_counter() - start,
    }
    save_checkpoint(output, model, tokenizer, verb="reorder", reports={"report.json": result})
    log.info(
        "ordered the %s of %s (max logit change %.2e)",
        " and ".join(w for w, on in (("MLP channels", order_mlps), ("KV groups", order_heads)) if on),
        config.model.name_or_path,
        change,
    )
    return result


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


def _subnet_size(supernet: ElasticLoraSuperNet, chosen: dict[str, int], seq_len: int) -> dict[str, Any]:
    """What the report says of the chosen sub-network before extraction spends the super-network."""
    adapter_ids = {id(p) for p in supernet.trainable_parameters()}

    def macs(config: dict[str, int]) -> int:
        return supernet.get_macs_for_active_config(config, seq_len=seq_len, include_base=True)

    return {
        "mlp_widths": list(supernet.mlp_widths(chosen).values()),
        "kv_groups": supernet.kv_groups(chosen),  # with elastic heads: KV groups kept per layer (else None)
        "kv_heads": supernet.kv_heads(),
        "params_before": sum(p.numel() for p in supernet.model.parameters() if id(p) not in adapter_ids),
        # adapted linears and every MLP projection, base included
        "macs": {"subnet": macs(chosen), "maximal": macs(supernet.get_maximal_config()), "seq_len": seq_len},
    }


def extract(
    config: PipelineConfig, output: str | Path, super_adapter: str | Path, subnet: str | Path = "heuristic"
) -> dict[str, Any]:
    """LoNAS: the sub-network ``subnet`` of a super-adapter as a smaller checkpoint (merged, MLPs sliced).

    ``subnet``: ``heuristic``, ``maximal``, ``minimal``, or a ``subnet_config.json`` (or the folder
    holding one: ``search``'s ``sub_adapter/``). ``config.model`` is the base it was trained on.
    """
    start = time.perf_counter()
    # Merged in float32 as `merge` does: the update is not rounded into a bf16/fp16 base.
    supernet, tokenizer = load_supernet(config.model.model_copy(update={"dtype": "float32"}), super_adapter)
    chosen = subnet_config(supernet, subnet)
    size = _subnet_size(supernet, chosen, config.bootstrapNAS.search.seq_len)
    quantized = None
    if supernet.kind.int4_trained:  # INT4 base: the merged codes, sliced with the MLPs
        model, quantized = extract_int4_subnet(supernet, chosen)
        check_codes_match_weights(model, quantized)
    else:
        # Merged in float32, written in model.dtype (bf16 on a GPU with 'auto': not twice the size in float32).
        model = extract_subnet(supernet, chosen).to(model_placement(config.model).dtype)
    params = sum(p.numel() for p in model.parameters())
    result = {
        "base_model": config.model.name_or_path,
        "super_adapter": str(super_adapter),
        "subnet": str(subnet),
        "config": chosen,
        "mlp_widths": size["mlp_widths"],
        "kv_groups": size["kv_groups"],
        "kv_heads": size["kv_heads"],
        "params": params,
        "params_before": size["params_before"],
        "macs": size["macs"],
        "precision": "int4" if quantized is not None else "float",
        "time_s": time.perf_counter() - start,
    }
    meta = {"extracted_from": str(super_adapter), "subnet": str(subnet)}
    save_checkpoint(
        output,
        model,
        tokenizer,
        verb="extract",
        reports={"extract_report.json": result},
        extra=None if quantized is None else lambda tmp: save_quantized_weights(tmp, quantized, meta),
    )
    log.info(
        "extracted %s: %d parameters (%.1f%% of %d)",
        subnet,
        params,
        100 * params / size["params_before"],
        size["params_before"],
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
    spec = config.bootstrapNAS.elasticity.channel_spec()
    if spec is None:
        raise ValueError(
            "the latency model predicts from the MLP widths: set bootstrapNAS.elasticity.mode to "
            "'rank_and_channels' (LoNAS)"
        )
    lat, ex = config.bootstrapNAS.search.latency, config.export
    meta = meta_model(config.model)
    _, sizes, _ = mlp_layout(meta)
    heads = config.bootstrapNAS.elasticity.head_spec()
    fmt, group_size, sym = lat.weight_format or ex.weight_format, ex.group_size, ex.sym
    base_dir = Path(resolve_model_dir(config.model))
    if is_quantized_base(base_dir):  # the IR will ship the base's INT4 codes: measure INT4 of that layout
        info = read_quantization_info(base_dir)
        fmt, group_size, sym = "int4", info["group_size"], info["sym"]
    start = time.perf_counter()
    fitted = fit_latency_model(
        config.model,
        widths=[spec.widths_for(size) for size in sizes],
        kv_groups=heads.counts_for(attention_layout(meta)[0]) if heads else None,
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
        fitted.save(tmp / LATENCY_MODEL)
        plot_latency_model(fitted, tmp / "latency_model.png")
    return {**fitted.to_dict(), "model": config.model.name_or_path, "time_s": time.perf_counter() - start}


class Reorder(NewBase):
    """LoNAS: the base with every MLP's channels (and KV groups) ordered most important first (the same function)."""

    name, title, directory = "reorder", "order MLP channels", "ordered_model"

    def make(self, config: PipelineConfig, out: Path, progress: bool) -> dict[str, Any]:
        return reorder(config, out, progress)

    def label(self, run: RunState) -> str:
        return run.base_label  # the function is the base's: its scores are the base's


class FitLatency(Stage):
    """LoNAS, search cost 'latency': sub-networks of the base measured on this machine, a line fitted."""

    name, title, directory = "latency_model", "fit latency model", "latency_model"

    def compute(self, run: RunState) -> Any:
        out = run.output / self.directory
        return completed_or(
            out / LATENCY_MODEL, run.resume, lambda: fit_latency(run.with_model(run.base), out, run.progress)
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.latency_model = run.output / self.directory / LATENCY_MODEL
        run.artifacts["latency_model"] = str(run.latency_model)


class Extract(Stage):
    """LoNAS: the chosen sub-network merged and sliced into a physically smaller checkpoint."""

    name, title, section = "extract", "extract sub-network", "extract"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {**adapter_inputs(run), "adapter": fingerprint_path(run.adapter)}

    def compute(self, run: RunState) -> Any:
        out = run.output / "extracted_model"
        return completed_or(
            out / "extract_report.json",
            run.resume,
            lambda: extract(run.with_model(run.base), out, run.super_adapter, str(run.adapter)),
        )

    def apply(self, run: RunState, result: Any) -> None:
        run.merged, run.merged_label = run.output / "extracted_model", "extracted"
        run.artifacts["extracted_model"] = str(run.merged)

    def summary(self, run: RunState, result: Any) -> Any:
        keys = ("subnet", "config", "mlp_widths", "kv_groups", "kv_heads", "params", "params_before")
        return pick(result, (*keys, "macs", "precision"))
