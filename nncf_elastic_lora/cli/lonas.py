"""LoNAS verbs: ``reorder`` the MLP channels, fit a ``latency`` model, ``extract`` a smaller sub-network."""

from __future__ import annotations

from .common import claim, common_flags
from .registry import Call, Flag, verb


@verb(
    "reorder",
    help="LoNAS: order every MLP's channels (and KV groups) most important first (same function)",
    description="Score the MLP intermediate channels of --model on calibration windows "
    "(bootstrapNAS.elasticity.channels.calibration) and permute them most important first, so that every "
    "elastic width keeps the most important ones (with bootstrapNAS.elasticity.heads, the attention's KV groups "
    "too); writes a checkpoint with the same function and report.json.",
    flags=common_flags(),
)
def reorder(call: Call) -> int:
    """Permute the base's channels (and KV groups) most important first."""
    from ..pipeline import reorder

    with claim(call, "reorder", create=False):
        report = reorder(call.config, call.output, call.progress)
    parts = [
        f"{what} ordered; at {kept['fractions'][-1]:.0%} {unit} they keep {kept['kept_ordered'][-1]:.1%} of the "
        f"importance ({kept['kept_original'][-1]:.1%} unordered)"
        for what, unit, kept in (
            ("channels", "width", report["ordering"]),
            ("KV groups", "of the groups", report.get("head_ordering")),
        )
        if kept
    ]
    print(f"wrote {call.output}: {'; '.join(parts)}; max logit change {report['max_logit_change']:.1e}")
    return 0


def _percent_error(err: dict) -> str:
    return (
        "n/a"
        if err["mean_abs"] is None
        else f"{100 * err['mean_abs']:.1f} % (max {100 * err['max_abs']:.1f} %)"
    )


@verb(
    "latency",
    help="LoNAS: fit a latency model of this machine's OpenVINO runtime (search cost 'latency')",
    description="Build sub-networks of --model (the ordered base) at the configured MLP widths "
    "(bootstrapNAS.elasticity.channels), export each through optimum-intel, measure its GenAI decode time "
    "per token (bootstrapNAS.search.latency) and fit ms = intercept + slope x MLP weights. Random per-layer "
    "mixes are measured too and only predicted: their error is reported. Writes latency_model.json and "
    "latency_model.png; `search --latency-model` takes the JSON.",
    flags=common_flags(),
)
def latency(call: Call) -> int:
    """Measure sub-networks on this machine and fit the latency model."""
    from ..pipeline import fit_latency

    with claim(call, "latency", create=False):
        report = fit_latency(call.config, call.output, call.progress)
    held, fit = _percent_error(report["holdout_error"]), _percent_error(report["fit_error"])
    print(
        f"wrote {call.output / 'latency_model.json'}: {report['intercept_ms']:.2f} ms + "
        f"{report['ms_per_mparam']:.4f} ms per million MLP weights at batch {report['batch_size']} "
        f"({report['weight_format']}); prediction error held-out {held}, leave-one-out {fit}"
    )
    return 0


@verb(
    "extract",
    help="LoNAS: a sub-network as a physically smaller checkpoint",
    description="Merge the chosen sub-adapter of --super-adapter into --model (the base it was trained on) "
    "and slice every MLP to its width: a smaller Hugging Face checkpoint (per-layer widths recorded as "
    "intermediate_size_per_layer) with extract_report.json. Export it with `export --model`.",
    flags=(
        *common_flags(super_adapter=True),
        Flag(
            ("--subnet",),
            default="heuristic",
            help="heuristic (default), maximal, minimal, or a subnet_config.json / sub-adapter folder from search",
        ),
    ),
)
def extract(call: Call) -> int:
    """Merge a sub-adapter and slice the base to its widths."""
    from ..pipeline import extract

    args = call.args
    with claim(call, "extract", args.super_adapter, create=False):
        report = extract(call.config, call.output, args.super_adapter, args.subnet)
    widths = sorted(set(report["mlp_widths"]))
    heads = f", KV groups {report['kv_groups']} of {report['kv_heads']}" if report.get("kv_groups") else ""
    print(
        f"wrote {call.output}: {report['params']:,} parameters ({report['params'] / report['params_before']:.1%} "
        f"of {report['params_before']:,}), MLP widths {widths or 'unchanged'}{heads}"
    )
    return 0
