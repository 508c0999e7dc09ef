"""Verbs that ship and score a model: ``merge``, ``export``, ``eval``, and ``run`` (the whole pipeline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import claim, claim_outputs, common_flags, local_inputs, resumable_output
from .registry import Call, Flag, verb

if TYPE_CHECKING:
    from ..config import PipelineConfig


@verb(
    "run",
    help="the whole pipeline from one config",
    description="Run every configured stage: evaluate dense, sparsify, evaluate sparse, NLS-train "
    "elastic adapters, evaluate sub-adapters; writes report.json and report.md.",
    flags=(
        *common_flags(config_positional=True),
        Flag(("--resume",), action="store_true", help="continue an interrupted run in --output"),
    ),
)
def run(call: Call) -> int:
    """Run every stage the config selects under one output."""
    from ..pipeline import check_method, print_summary, run_pipeline
    from ..preflight import check_config_against_model, check_data

    config = call.config
    check_method(config)
    check_config_against_model(config, sparsify=True, quantize=True, train=True)
    check_data(
        config,
        sparsify=True,
        train=config.bootstrapNAS.enabled,
        evaluate=True,
        export=config.export.enabled,
        quantize=True,
    )
    with resumable_output(call, "run", "config.json"):
        report = run_pipeline(config, call.output, resume=call.args.resume, progress=call.progress)
    print_summary(report)
    print(f"report: {call.output / 'report.json'}, {call.output / 'report.md'}")
    return 0


@verb(
    "merge",
    help="merge a SparsePEFT / QA-SparsePEFT sub-adapter into its base, keeping zeros and INT4",
    description="Merge --adapter (a sub-adapter written by train or search) into --model, the base it "
    "was trained on. SparsePEFT: a Hugging Face checkpoint whose zeros are the base's; QA-SparsePEFT: an "
    "INT4 checkpoint whose codes are those the trained forward computed. Refused, writing nothing, for "
    "an adapter trained on another base or through other scales. --export-to also ships the merged "
    "model as an OpenVINO IR (an INT4 merge as an INT4 IR holding exactly those codes).",
    flags=(
        *common_flags(),
        Flag(("--adapter",), required=True, help="a sub_adapter/ folder from train or search"),
        Flag(("--export-to",), help="also export the merged model to this IR directory"),
    ),
)
def merge(call: Call) -> int:
    """Merge a sub-adapter into its base (and, with ``--export-to``, export the result)."""
    from ..pipeline import merge
    from ..preflight import check_data

    args, config, output = call.args, call.config, call.output
    inputs = local_inputs(call, args.adapter)
    with claim_outputs(((output, "merge"), (args.export_to, "export")), inputs, call.claim_options):
        if args.export_to:  # the export's calibration texts and parity prompts, before merging
            check_data(
                config.model_copy(update={"export": config.export.model_copy(update={"enabled": True})}),
                train=True,
                export=True,
            )
        report = merge(config, output, args.adapter, call.progress)
        ir = _export_merged(call, report) if args.export_to else None
    print(
        f"merged {report['adapter_kind']} sub-adapter ({report['modules_merged']} modules) into "
        f"{report['precision']} weights: wrote {output}; zeros {100 * report['sparsity']:.2f}% "
        f"(base {100 * report['base_sparsity']:.2f}%; "
        + ("every zero of the base kept" if report["zeros_lost"] == 0 else f"{report['zeros_lost']:,} zeros of the base filled")
        + f", {report['new_zeros']:,} new)"
    )
    if ir is not None:
        print(
            f"exported {args.export_to}: {ir['weight_format']} weights, {ir['size_bytes']['model_bin'] / 2**20:.1f} MiB"
        )
    return 0


def _export_merged(call: Call, merged: dict[str, Any]) -> dict[str, Any]:
    """Export the checkpoint ``merge`` just wrote to ``--export-to``; an INT4 merge as an INT4 IR."""
    from ..pipeline import export

    config: PipelineConfig = call.config
    exported = config.model.model_copy(update={"name_or_path": str(call.output)})
    ex = config.export.model_copy(update={"merge_adapter": False})
    if merged["precision"] == "int4":
        ex = ex.model_copy(update={"weight_format": "int4"})
    return export(
        config.model_copy(update={"model": exported, "export": ex}),
        call.args.export_to,
        overwrite=call.args.overwrite,
    )


@verb(
    "eval",
    help="evaluate a model on tasks",
    description="Score a model (--model or model.name_or_path, a checkpoint or an OpenVINO IR) on "
    "evaluation.tasks, with --adapter applied as it ships; writes eval.json, eval.md and predictions.jsonl.",
    flags=(
        *common_flags(),
        Flag(
            ("--adapter",),
            dest="adapters",
            action="append",
            default=[],
            metavar="[LABEL=]PATH",
            help="a sub-adapter (or peft LoRA) folder to apply to a checkpoint --model: LoRA unmerged, "
            "SparsePEFT / QA-SparsePEFT merged as `merge` does; or, on an IR --model, GenAI adapter files "
            "(export-genai; repeatable) scored through OpenVINO GenAI, switched per request",
        ),
        Flag(
            ("--tasks",),
            key="evaluation.tasks",
            to_config=lambda tasks: tasks.split(",") if tasks else None,
            help="comma-separated tasks; overrides evaluation.tasks",
        ),
        Flag(("--limit",), key="evaluation.limit", type=int, help="at most N examples per task"),
        Flag(
            ("--split",),
            key="evaluation.split",
            choices=("validation", "test"),
            help="override evaluation.split",
        ),
        Flag(
            ("--harness",),
            choices=("ours", "lm-eval"),
            default="ours",
            help="the evaluator: ours, or lm-evaluation-harness (offline: the same examples through the "
            "harness's official task definitions; writes lm_eval.json)",
        ),
        Flag(("--online",), action="store_true", help="with --harness lm-eval: its own tasks and hub datasets"),
    ),
)
def evaluate(call: Call) -> int:
    """Score a checkpoint or an OpenVINO IR on the configured tasks (one or several processes)."""
    from .. import distributed
    from ..evaluation import results_table
    from ..pipeline import evaluate_model, load_for_eval, write_eval
    from ..preflight import check_data
    from ..report.tables import print_table

    config = call.config
    name = config.model.name_or_path
    if call.args.online and call.args.harness != "lm-eval":
        raise ValueError("--online takes the harness's own tasks: use it with --harness lm-eval")
    adapter, genai = _eval_adapters(name, call.args.adapters)
    if genai and call.args.harness == "lm-eval":
        raise ValueError("--harness lm-eval runs an IR through optimum-intel, which cannot apply GenAI adapter files")
    if genai and distributed.world_size() > 1:  # every process would write the same output
        raise ValueError("eval through OpenVINO GenAI runs in one process: launch it without torchrun")
    if call.args.harness == "lm-eval":
        return _evaluate_lm_eval(call, adapter)
    check_data(config, evaluate=True)
    if genai:
        return _evaluate_genai(call, genai)
    with distributed.main_process_first(claim(call, "eval", adapter)):
        model, tokenizer, extra = load_for_eval(config, adapter)
        results = evaluate_model(model, tokenizer, config, progress=call.progress)
        extra["processes"] = distributed.world_size()
        if distributed.is_main_process():
            write_eval(call.output, name, results, extra)
    if distributed.is_main_process():
        print_table("evaluation", *results_table({name: results}))
    return 0


def _eval_adapters(model: str, items: list[str]) -> tuple[str | None, dict[str, str]]:
    """``(folder, {})`` for one sub-adapter folder, or ``(None, {label: file})`` for GenAI adapter files."""
    from ..formats import is_openvino_dir

    named = _named_adapters(items, "LABEL=PATH", name_of=lambda p: p.stem)
    files = {label: path for label, path in named.items() if not Path(path).is_dir()}
    if not files:
        if len(items) > 1:
            raise ValueError(f"--adapter: one sub-adapter folder applies to a checkpoint, {len(items)} were given")
        return next(iter(named.values()), None), {}
    if len(files) < len(items):
        raise ValueError("--adapter: give GenAI adapter files or one sub-adapter folder, not both")
    for path in files.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"--adapter {path}: no such file or folder ({Path(path).resolve()})")
    if not is_openvino_dir(model):
        raise ValueError(
            f"--adapter {next(iter(files.values()))} is a file: GenAI adapter files (export-genai) apply to an OpenVINO "
            f"IR, and --model {model} is not one; give the IR, or a sub-adapter folder for this checkpoint"
        )
    return None, files


def _evaluate_genai(call: Call, adapters: dict[str, str]) -> int:
    """``eval IR --adapter FILE...``: each GenAI runtime adapter on the IR, one pipeline switched per request."""
    from ..evaluation import results_table
    from ..pipeline import evaluate_genai, write_eval
    from ..report.tables import print_table

    name = call.config.model.name_or_path
    with claim(call, "eval", *adapters.values()):
        results = evaluate_genai(call.config, name, adapters, progress=call.progress)
        labelled = {f"{name} + {label}": rs for label, rs in results.items()}
        write_eval(call.output, labelled, extra={"model": name, "runtime": "openvino_genai", "adapters": adapters})
    print_table("evaluation (OpenVINO GenAI, runtime adapters)", *results_table(labelled))
    return 0


def _evaluate_lm_eval(call: Call, adapter: str | None) -> int:
    """``eval --harness lm-eval``: the harness's accuracies, written to lm_eval.json and lm_eval.md."""
    from ..formats import is_openvino_dir
    from ..outputs import write_json, write_text
    from ..pipeline import evaluate_harness, load_for_eval
    from ..preflight import check_data
    from ..report.tables import markdown_table, print_table

    config, name = call.config, call.config.model.name_or_path
    if not call.args.online:
        check_data(config, evaluate=True)
    with claim(call, "eval", adapter):
        # an IR goes to lm-eval's own `openvino` model (optimum-intel) by its path
        model, tokenizer = (name, None) if is_openvino_dir(name) else load_for_eval(config, adapter)[:2]
        results = evaluate_harness(config, model, tokenizer, online=call.args.online)
        rows = [[task, r["harness_task"], r["examples"], r["acc"], r["acc_norm"]] for task, r in results.items()]
        headers = ["task", "lm-eval task", "examples", "acc", "acc_norm"]
        write_json(call.output / "lm_eval.json", {"model": name, "adapter": adapter, "online": call.args.online,
                                                  "results": results})  # fmt: skip
        write_text(call.output / "lm_eval.md", markdown_table(headers, rows))
    print_table(f"lm-evaluation-harness: {name}", headers, rows)
    return 0


# export's flags: the adapter, and NNCF's weight compression options (export.*)
EXPORT_FLAGS = (
    *common_flags(),
    Flag(("--adapter",), help="a PEFT LoRA folder (sub_adapter/ from train or search)"),
    Flag(
        ("--merge",),
        key="export.merge_adapter",
        to_config=lambda merge: True if merge else None,  # no --merge: the config's value stands
        action="store_true",
        help="merge the adapter (export.merge_adapter)",
    ),
    Flag(("--save-merged",), help="with --merge: also write the merged HF checkpoint here"),
    Flag(
        ("--weight-format",),
        key="export.weight_format",
        choices=("fp32", "fp16", "int8", "int4"),
        help="export.weight_format",
    ),
    Flag(
        ("--group-size",),
        key="export.group_size",
        type=int,
        help="export.group_size (int4)",
    ),
    Flag(
        ("--ratio",),
        dest="int4_ratio",
        key="export.ratio",
        type=float,
        help="export.ratio: fraction of layers in int4",
    ),
    Flag(
        ("--sym",),
        key="export.sym",
        action="store_true",
        default=None,
        help="symmetric quantization (export.sym)",
    ),
    Flag(
        ("--activations",),
        key="export.activations",
        choices=("none", "int8"),
        help="export.activations: 'int8' makes a W8A8 IR (nncf.quantize on the calibration texts; "
        "--weight-format int8, merged adapter), as `optimum-cli export openvino --quant-mode int8`",
    ),
    Flag(("--awq",), key="export.awq", action="store_true", default=None, help="data-aware AWQ (int4)"),
    Flag(
        ("--scale-estimation",),
        key="export.scale_estimation",
        action="store_true",
        default=None,
        help="int4",
    ),
    Flag(
        ("--data-aware",),
        key="export.data_aware",
        action="store_true",
        default=None,
        help="calibrate on export.calibration",
    ),
    Flag(
        ("--group-size-fallback",),
        key="export.group_size_fallback",
        choices=("error", "adjust", "ignore"),
        help="int4",
    ),
    Flag(
        ("--backup-precision",),
        key="export.backup_precision",
        choices=("int8_asym", "int8_sym", "none"),
        help="int4: embeddings, head and layers left out of INT4",
    ),
    Flag(("--eval",), dest="eval_ir", action="store_true", help="also evaluate the IR on evaluation.tasks"),
)


@verb(
    "export",
    help="export to OpenVINO IR (optionally with an adapter, INT8/INT4 weights)",
    description="Convert --model (an HF checkpoint: dense, sparse or merged) and optionally a PEFT "
    "--adapter to an OpenVINO model directory through optimum-intel, with openvino_tokenizer/"
    "detokenizer IRs, weight compression by NNCF (export.*), a load check in OpenVINO GenAI, a "
    "comparison with torch on test prompts (parity.json) and export_report.json.",
    flags=EXPORT_FLAGS,
)
def export(call: Call) -> int:
    """Export to an OpenVINO IR (and, with ``--eval``, score the IR)."""
    from ..pipeline import evaluate_ir, export, export_facts, write_eval
    from ..report.tables import print_table

    args, config, output = call.args, call.config, call.output
    inputs = local_inputs(call, args.adapter)
    # An existing output is refused unless --overwrite; then replaced once the new one is complete.
    with claim_outputs(((output, "export"), (args.save_merged, "merge")), inputs, call.claim_options):
        report = export(config, output, args.adapter, args.save_merged, overwrite=args.overwrite)
    facts = [*export_facts(report), ["export time (s)", f"{report['export_s']:.1f}"]]
    print_table(f"exported {output}", ["", "value"], facts)
    if args.eval_ir:
        from ..evaluation import results_table

        results = evaluate_ir(config, output, progress=call.progress)
        write_eval(output / "eval", str(output), results, {"model": str(output), "export": report})
        print_table("evaluation of the IR", *results_table({str(output): results}))
    return 0


def _named_adapters(
    items: list[str], form: str = "NAME=FOLDER", name_of: Callable[[Path], str] = lambda p: p.name
) -> dict[str, str]:
    """``{name: path}`` from ``--adapter NAME=PATH``; a bare PATH (one that exists may hold a '=') is
    named ``name_of(PATH)``."""
    adapters: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep and not Path(item).exists() else (name_of(Path(item)), item)
        if name in adapters:
            raise ValueError(f"--adapter name {name!r} is given twice; name them with {form}")
        adapters[name] = path
    return adapters


@verb(
    "export-genai",
    help="export a base IR once plus sub-adapters as OpenVINO GenAI runtime adapters",
    description="Export --model (dense, sparse or an INT4 base, export.weight_format) once as an OpenVINO IR and "
    "each --adapter NAME=FOLDER (a plain LoRA sub-adapter: Shears, or SQFT's INT4 base + adapter) as "
    "adapters/NAME.safetensors with its per-layer scale folded in (GenAI applies it with alpha 1); each is "
    "checked against an IR with the adapter in its graph (greedy tokens, log-probabilities). Writes "
    "genai_adapters.json. Use them with `benchmark --adapter` or openvino_genai.LLMPipeline(adapters=...).",
    flags=(
        *common_flags(),
        Flag(("--adapter",), dest="genai_adapters", action="append", required=True, metavar="[NAME=]FOLDER",
             help="a peft LoRA sub-adapter folder; repeatable"),
        Flag(("--weight-format",), key="export.weight_format", choices=("fp32", "fp16", "int8", "int4"),
             help="export.weight_format of the base"),
    ),
)
def export_genai(call: Call) -> int:
    """Export the base IR and the GenAI runtime adapters; print each adapter's check."""
    from ..pipeline import export_genai
    from ..report.tables import print_table

    args, config, output = call.args, call.config, call.output
    adapters = _named_adapters(args.genai_adapters)
    with claim_outputs(((output, "export"),), local_inputs(call, *adapters.values()), call.claim_options):
        manifest = export_genai(config, output, adapters, overwrite=args.overwrite)
    rows = [[a["name"], a["file"], ", ".join(map(str, a["ranks"])), a["bytes"] / 2**10,
             f"{a['check']['greedy_identical']}/{a['check']['prompts']}" if "check" in a else "not checked",
             a["check"]["max_logprob_diff_per_token"] if "check" in a else None] for a in manifest["adapters"]]  # fmt: skip
    headers = ["adapter", "file", "ranks", "KiB", "greedy = in-graph IR", "max |Δ log p| / token"]
    print_table(f"GenAI adapters on the {manifest['base']['weight_format']} base in {output}", headers, rows)
    return 0
