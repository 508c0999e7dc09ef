"""Verbs that make a compressed base: ``sparsify`` (prune) and ``quantize`` (INT4, SQFT)."""

from __future__ import annotations

from .common import claim, common_flags
from .registry import Call, Flag, verb

FALLBACKS = ("error", "adjust", "ignore")


@verb(
    "sparsify",
    help="prune a model (Wanda, magnitude, N:M)",
    description="Prune the targeted linear layers and write a Hugging Face checkpoint "
    "with report.json (per-layer and total sparsity, calibration set, time).",
    flags=(
        *common_flags(),
        Flag(
            ("--method",),
            key="sparsity.method",
            choices=("wanda", "magnitude"),
            help="override sparsity.method",
        ),
        Flag(
            ("--ratio",), key="sparsity.ratio", type=float, help="override sparsity.ratio (fraction zeroed)"
        ),
        Flag(
            ("--pattern",),
            key="sparsity.pattern",
            choices=("unstructured", "2:4", "4:8"),
            help="override sparsity.pattern",
        ),
    ),
)
def sparsify(call: Call) -> int:
    """Prune the base and write it as a Hugging Face checkpoint."""
    from ..pipeline import sparsify
    from ..preflight import check_config_against_model, check_data

    check_config_against_model(call.config, sparsify=True)
    check_data(call.config, sparsify=True)
    # Checked and locked here, written atomically (replacing an older one of ours) once complete.
    with claim(call, "sparsify", create=False):
        report = sparsify(call.config, call.output, call.progress)
    print(
        f"wrote {call.output} ({100 * report['sparsity']:.2f}% of targeted weights zeroed, {report['time_s']:.1f} s)"
    )
    return 0


@verb(
    "quantize",
    help="quantize a (sparse) base to INT4 with NNCF (SQFT)",
    description="Compress the targeted linears of --model to INT4 with nncf.compress_weights and write "
    "an INT4 checkpoint: a Hugging Face checkpoint of the dequantized weights plus the codes, scales and "
    "zero points (quantized_weights.safetensors, quantization.json) that train (qa_sparsepeft), merge and "
    "export use; report.json says whether every zero was kept.",
    flags=(
        *common_flags(),
        Flag(
            ("--group-size",),
            dest="q_group_size",
            key="quantization.group_size",
            type=int,
            help="quantization.group_size",
        ),
        Flag(
            ("--sym",),
            dest="q_sym",
            key="quantization.sym",
            action="store_true",
            default=None,
            help="symmetric INT4",
        ),
        Flag(
            ("--group-size-fallback",),
            dest="q_group_size_fallback",
            key="quantization.group_size_fallback",
            choices=FALLBACKS,
            help="quantization.group_size_fallback",
        ),
    ),
    fixed={"quantization.weight_format": "int4"},  # the verb's whole point; `--set` may still say otherwise
)
def quantize(call: Call) -> int:
    """Quantize the base to INT4 and write an INT4 checkpoint."""
    from ..pipeline import quantize
    from ..preflight import check_config_against_model, check_data

    check_config_against_model(call.config, quantize=True)
    check_data(call.config, quantize=True)
    with claim(call, "quantize", create=False):
        report = quantize(call.config, call.output, call.progress)
    print(
        f"wrote {call.output}: {len(report['modules'])} linears in INT4 (group {report['group_size']}, "
        f"{'sym' if report['sym'] else 'asym'}), zeros kept: {report['zeros_kept']}, {report['time_s']:.1f} s"
    )
    return 0
