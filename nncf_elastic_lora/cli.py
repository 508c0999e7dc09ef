"""The ``nncf-elastic-lora`` command line.

Every verb reads the same JSON config (``--config FILE``; positional for ``run``), takes flags that
override single fields (``--set section.key=value`` for any of them), and writes under ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  nncf-elastic-lora run configs/tiny_shears.json --output runs/tiny
  nncf-elastic-lora sparsify --model smollm2-135m --ratio 0.5 --output runs/smollm2-wanda50
  nncf-elastic-lora train --config configs/shears_smollm2.json --model runs/smollm2-wanda50 --output runs/nls
  nncf-elastic-lora eval --model runs/smollm2-wanda50 --tasks arc_easy,piqa --limit 200 --output runs/eval
  nncf-elastic-lora export --model runs/smollm2-wanda50 --adapter runs/nls/sub_adapter_heuristic \
      --weight-format int8 --output runs/ov-int8
  nncf-elastic-lora eval --model runs/ov-int8 --tasks basic_arithmetic --output runs/eval-ov-int8
  nncf-elastic-lora benchmark --model runs/ov-int8 --runtime genai,optimum --output runs/bench-int8
  nncf-elastic-lora schema > config.schema.json
  nncf-elastic-lora tasks

Without --config the defaults apply (bundled SmolLM2-135M, basic_arithmetic, Wanda 50%).
`nncf-elastic-lora schema` prints every config key with its default and allowed values.
"""


def _add_common(
    p: argparse.ArgumentParser, config_positional: bool = False, super_adapter: bool = False
) -> None:
    if config_positional:
        p.add_argument("config", help="JSON config file (see `nncf-elastic-lora schema`)")
    else:
        p.add_argument("--config", "-c", help="JSON config file; default: built-in defaults")
    p.add_argument("--output", "-o", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output")
    p.add_argument("--model", help="override model.name_or_path (bundled id, HF dir or hub id)")
    p.add_argument("--task", help="override data.task")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set sparsity.ratio=0.6 (JSON values); repeatable",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if super_adapter:
        p.add_argument("--super-adapter", required=True, help="a super_adapter/ folder written by `train`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncf-elastic-lora",
        description="Compress LLMs with elastic low-rank adapters (Shears, SQFT, LoNAS) and ship them to OpenVINO.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="the whole pipeline from one config",
        description="Run every configured stage: evaluate dense, sparsify, evaluate sparse, NLS-train "
        "elastic adapters, evaluate sub-adapters; writes report.json and report.md.",
    )
    _add_common(run, config_positional=True)
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")

    sp = sub.add_parser(
        "sparsify",
        help="prune a model (Wanda, magnitude, N:M)",
        description="Prune the targeted linear layers and write a Hugging Face checkpoint "
        "with report.json (per-layer and total sparsity, calibration set, time).",
    )
    _add_common(sp)
    sp.add_argument("--method", choices=["wanda", "magnitude"], help="override sparsity.method")
    sp.add_argument("--ratio", type=float, help="override sparsity.ratio (fraction zeroed)")
    sp.add_argument("--pattern", choices=["unstructured", "2:4", "4:8"], help="override sparsity.pattern")

    qu = sub.add_parser(
        "quantize",
        help="quantize a (sparse) base to INT4 with NNCF (SQFT)",
        description="Compress the targeted linears of --model to INT4 with nncf.compress_weights and write "
        "an INT4 checkpoint: a Hugging Face checkpoint of the dequantized weights plus the codes, scales and "
        "zero points (quantized_weights.safetensors, quantization.json) that train (qa_sparsepeft), merge and "
        "export use; report.json says whether every zero was kept.",
    )
    _add_common(qu)
    qu.add_argument("--group-size", dest="q_group_size", type=int, help="quantization.group_size")
    qu.add_argument("--sym", dest="q_sym", action="store_true", default=None, help="symmetric INT4")
    qu.add_argument(
        "--group-size-fallback",
        dest="q_group_size_fallback",
        choices=["error", "adjust", "ignore"],
        help="quantization.group_size_fallback",
    )

    tr = sub.add_parser(
        "train",
        help="train an elastic super-adapter with NLS (or plain LoRA)",
        description="Attach elastic LoRA adapters to the base (--model, typically a sparsified checkpoint), "
        "train them with Neural Low-rank adapter Search, and write super_adapter/ (peft folder + search space), "
        "sub_adapter_heuristic/ (a stock peft LoRA folder) and train_report.json.",
    )
    _add_common(tr)
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    tr.add_argument(
        "--algorithm",
        dest="train_algorithm",
        choices=["nls", "lora"],
        help="override bootstrapNAS.training.algorithm",
    )
    tr.add_argument("--max-steps", type=int, help="override bootstrapNAS.training.max_steps")

    se = sub.add_parser(
        "search",
        help="choose a sub-adapter: heuristic, hill-climbing or NSGA-II",
        description="Search the trained super-adapter (--super-adapter) on the base (--model) with "
        "bootstrapNAS.search on the validation split; writes evaluations.jsonl/.csv, pareto.json, search.png, "
        "search_report.json and sub_adapter/ (the chosen one, a stock peft folder). Rerunning on the same "
        "--output with --resume continues a killed search without re-evaluating anything.",
    )
    _add_common(se, super_adapter=True)
    se.add_argument(
        "--algorithm",
        dest="search_algorithm",
        choices=["heuristic", "hill_climbing", "NSGA2", "RNSGA2"],
        help="override bootstrapNAS.search.algorithm",
    )
    se.add_argument("--num-evals", type=int, help="override bootstrapNAS.search.num_evals")
    se.add_argument(
        "--latency-model",
        dest="latency_model",
        help="latency_model.json (or its folder) written by `latency`: needed for bootstrapNAS.search.cost 'latency'",
    )
    se.add_argument("--resume", action="store_true", help="continue a search in --output from its log")

    me = sub.add_parser(
        "merge",
        help="merge a SparsePEFT / QA-SparsePEFT sub-adapter into its base, keeping zeros and INT4",
        description="Merge --adapter (a sub-adapter written by train or search) into --model, the base it "
        "was trained on. SparsePEFT: a Hugging Face checkpoint whose zeros are the base's; QA-SparsePEFT: an "
        "INT4 checkpoint whose codes are those the trained forward computed. Refused, writing nothing, for "
        "an adapter trained on another base or through other scales. --export-to also ships the merged "
        "model as an OpenVINO IR (an INT4 merge as an INT4 IR holding exactly those codes).",
    )
    _add_common(me)
    me.add_argument("--adapter", required=True, help="a sub_adapter/ folder from train or search")
    me.add_argument("--export-to", dest="export_to", help="also export the merged model to this IR directory")

    ro = sub.add_parser(
        "reorder",
        help="LoNAS: order every MLP's channels (and KV groups) most important first (same function)",
        description="Score the MLP intermediate channels of --model on calibration windows "
        "(bootstrapNAS.elasticity.channels.calibration) and permute them most important first, so that every "
        "elastic width keeps the most important ones (with bootstrapNAS.elasticity.heads, the attention's KV groups "
        "too); writes a checkpoint with the same function and report.json.",
    )
    _add_common(ro)

    la = sub.add_parser(
        "latency",
        help="LoNAS: fit a latency model of this machine's OpenVINO runtime (search cost 'latency')",
        description="Build sub-networks of --model (the ordered base) at the configured MLP widths "
        "(bootstrapNAS.elasticity.channels), export each through optimum-intel, measure its GenAI decode time "
        "per token (bootstrapNAS.search.latency) and fit ms = intercept + slope x MLP weights. Random per-layer "
        "mixes are measured too and only predicted: their error is reported. Writes latency_model.json and "
        "latency_model.png; `search --latency-model` takes the JSON.",
    )
    _add_common(la)

    xt = sub.add_parser(
        "extract",
        help="LoNAS: a sub-network as a physically smaller checkpoint",
        description="Merge the chosen sub-adapter of --super-adapter into --model (the base it was trained on) "
        "and slice every MLP to its width: a smaller Hugging Face checkpoint (per-layer widths recorded as "
        "intermediate_size_per_layer) with extract_report.json. Export it with `export --model`.",
    )
    _add_common(xt, super_adapter=True)
    xt.add_argument(
        "--subnet",
        default="heuristic",
        help="heuristic (default), maximal, minimal, or a subnet_config.json / sub-adapter folder from search",
    )

    ev = sub.add_parser(
        "eval",
        help="evaluate a model on tasks",
        description="Score a model (--model or model.name_or_path) on evaluation.tasks; "
        "writes eval.json, eval.md and predictions.jsonl.",
    )
    _add_common(ev)
    ev.add_argument("--tasks", help="comma-separated tasks; overrides evaluation.tasks")
    ev.add_argument("--limit", type=int, help="at most N examples per task")
    ev.add_argument("--split", choices=["validation", "test"], help="override evaluation.split")

    ex = sub.add_parser(
        "export",
        help="export to OpenVINO IR (optionally with an adapter, INT8/INT4 weights)",
        description="Convert --model (an HF checkpoint: dense, sparse or merged) and optionally a PEFT "
        "--adapter to an OpenVINO model directory through optimum-intel, with openvino_tokenizer/"
        "detokenizer IRs, weight compression by NNCF (export.*), a load check in OpenVINO GenAI, a "
        "comparison with torch on test prompts (parity.json) and export_report.json.",
    )
    _add_common(ex)
    ex.add_argument("--adapter", help="a PEFT LoRA folder (sub_adapter/ from train or search)")
    ex.add_argument("--merge", action="store_true", help="merge the adapter (export.merge_adapter)")
    ex.add_argument("--save-merged", help="with --merge: also write the merged HF checkpoint here")
    ex.add_argument(
        "--weight-format",
        dest="weight_format",
        choices=["fp32", "fp16", "int8", "int4"],
        help="export.weight_format",
    )
    ex.add_argument("--group-size", dest="group_size", type=int, help="export.group_size (int4)")
    ex.add_argument("--ratio", dest="int4_ratio", type=float, help="export.ratio: fraction of layers in int4")
    ex.add_argument("--sym", action="store_true", default=None, help="symmetric quantization (export.sym)")
    ex.add_argument("--awq", action="store_true", default=None, help="data-aware AWQ (int4)")
    ex.add_argument(
        "--scale-estimation", dest="scale_estimation", action="store_true", default=None, help="int4"
    )
    ex.add_argument(
        "--data-aware",
        dest="data_aware",
        action="store_true",
        default=None,
        help="calibrate on export.calibration",
    )
    ex.add_argument(
        "--group-size-fallback",
        dest="group_size_fallback",
        choices=["error", "adjust", "ignore"],
        help="int4",
    )
    ex.add_argument(
        "--eval", dest="eval_ir", action="store_true", help="also evaluate the IR on evaluation.tasks"
    )

    be = sub.add_parser(
        "benchmark",
        help="measure inference speed and memory (OpenVINO GenAI, optimum-intel, torch)",
        description="Time to first token, decode latency and tokens/s at each batch size, compile time, "
        "size on disk and peak memory of each --model on each --runtime; medians over --repeats after "
        "--warmup; every model and runtime in its own process. Writes benchmark.json and benchmark.md.",
    )
    be.add_argument("--model", action="append", required=True, metavar="[LABEL=]DIR", help="repeatable")
    be.add_argument("--output", "-o", required=True, help="output directory")
    be.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output")
    be.add_argument(
        "--runtime", default="genai", help="comma-separated: genai, optimum, torch (default genai)"
    )
    be.add_argument("--device", default="CPU", help="OpenVINO device (CPU, GPU)")
    be.add_argument("--prompt-tokens", type=int, default=128)
    be.add_argument("--new-tokens", type=int, default=64)
    be.add_argument("--batch-sizes", default="1,4", help="comma-separated (default 1,4)")
    be.add_argument("--repeats", type=int, default=3)
    be.add_argument("--warmup", type=int, default=1)
    be.add_argument(
        "--property",
        dest="properties",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runtime property",
    )
    be.add_argument("--properties-file", help="JSON object of runtime properties (see export/runtime/)")
    be.add_argument("--no-isolate", action="store_true", help="run everything in this process")

    sch = sub.add_parser("schema", help="print the config's JSON Schema")
    sch.add_argument("--output", "-o", help="write to this file instead of stdout")
    sub.add_parser("tasks", help="list the bundled tasks")
    return parser


def _config(args: argparse.Namespace):
    from .config import apply_overrides, load_config

    config = load_config(getattr(args, "config", None))
    overrides = list(args.overrides)
    for flag, key in [
        ("model", "model.name_or_path"),
        ("task", "data.task"),
        ("method", "sparsity.method"),
        ("ratio", "sparsity.ratio"),
        ("pattern", "sparsity.pattern"),
        ("limit", "evaluation.limit"),
        ("split", "evaluation.split"),
        ("train_algorithm", "bootstrapNAS.training.algorithm"),
        ("search_algorithm", "bootstrapNAS.search.algorithm"),
        ("num_evals", "bootstrapNAS.search.num_evals"),
        ("max_steps", "bootstrapNAS.training.max_steps"),
        ("weight_format", "export.weight_format"),
        ("group_size", "export.group_size"),
        ("int4_ratio", "export.ratio"),
        ("sym", "export.sym"),
        ("awq", "export.awq"),
        ("scale_estimation", "export.scale_estimation"),
        ("data_aware", "export.data_aware"),
        ("group_size_fallback", "export.group_size_fallback"),
        ("q_group_size", "quantization.group_size"),
        ("q_sym", "quantization.sym"),
        ("q_group_size_fallback", "quantization.group_size_fallback"),
    ]:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.insert(0, f"{key}={json.dumps(value)}")
    if args.command == "quantize":
        overrides.insert(0, 'quantization.weight_format="int4"')
    if getattr(args, "merge", False):
        overrides.insert(0, "export.merge_adapter=true")
    if getattr(args, "tasks", None):
        overrides.insert(0, f"evaluation.tasks={json.dumps(args.tasks.split(','))}")
    return apply_overrides(config, overrides) if overrides else config


@contextlib.contextmanager
def _resumable_output(args: argparse.Namespace, config, verb: str, config_name: str):
    """Claim a resumable output (``run``, ``train``) and record its resolved config in it.

    On resume the config must equal the one the output was started with (checked first, so the
    error names the changed keys), and the model and data must be the same (their fingerprints).
    """
    from .outputs import check_same_config, claim_output, write_json
    from .provenance import input_fingerprints, local_inputs

    output, data = Path(args.output), config.model_dump(mode="json")
    if args.resume:
        check_same_config(output / config_name, data)
    with claim_output(
        output,
        verb=verb,
        inputs=local_inputs(config, args.config),
        fingerprints=input_fingerprints(config),
        prelude=[config_name],
        overwrite=args.overwrite,
        resume=args.resume,
    ):
        write_json(output / config_name, data)
        yield output


@contextlib.contextmanager
def _claim_outputs(outputs: tuple[tuple[str | None, str], ...], inputs: list, common: dict):
    """Claim every given ``(path, verb)`` output (None paths skipped); each is written atomically later."""
    from .outputs import claim_output

    with contextlib.ExitStack() as claims:
        for path, verb in outputs:
            if path:
                claims.enter_context(claim_output(path, verb=verb, inputs=inputs, create=False, **common))
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:  # import-time noise of optional torchao kernels and torch's pytree registry
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from .config import ConfigError
    from .data import DatasetNotFoundError
    from .deploy.benchmark import BenchmarkError
    from .deploy.export import ExportError
    from .models import ModelNotFoundError
    from .outputs import OutputExistsError

    try:
        return _dispatch(args)
    except BrokenPipeError:  # `nncf-elastic-lora schema | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (
        ConfigError,
        OutputExistsError,
        ModelNotFoundError,
        DatasetNotFoundError,
        ExportError,
        BenchmarkError,
        ValueError,  # invalid inputs found after validation (split sizes, patterns, runtime properties)
    ) as exc:
        _print_error(exc)
        return 2
    except OSError as exc:  # missing, unreadable or unwritable files: the message names the path
        _print_error(exc)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed stages are kept (use --resume to continue a run)", file=sys.stderr)
        return 130


def _print_error(exc: BaseException) -> None:
    from . import distributed

    where = f"[process {distributed.rank()} of {distributed.world_size()}] " if distributed.rank() else ""
    print(f"error: {where}{exc}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "schema":
        from .config import json_schema
        from .outputs import check_writable_location, write_text

        text = json.dumps(json_schema(), indent=2)
        if args.output:
            check_writable_location(args.output)
            write_text(args.output, text + "\n")
        else:
            print(text)
            sys.stdout.flush()  # a closed pipe shows up here, inside main's handler
        return 0
    if args.command == "tasks":
        from .data import BUNDLED_TASKS

        for name, task in BUNDLED_TASKS.items():
            print(f"{name:18s} {task.description}")
        return 0
    if getattr(args, "resume", False) and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the output, or replace it")

    from . import distributed
    from .outputs import claim_output
    from .preflight import check_config_against_model, check_data
    from .provenance import local_inputs

    if distributed.is_launched():
        check_launchable(args.command)
        distributed.init_processes()
    main_first = distributed.main_process_first
    if args.command == "benchmark":
        return _benchmark(args)
    config = _config(args)  # validate everything before touching the output
    progress = not args.no_progress
    output = Path(args.output)
    common = dict(overwrite=args.overwrite, resume=getattr(args, "resume", False))
    if args.command == "sparsify":
        from .pipeline import sparsify

        check_config_against_model(config, sparsify=True)
        check_data(config, sparsify=True)
        # Checked and locked here, written atomically (replacing an older one of ours) once complete.
        with claim_output(
            output, verb="sparsify", inputs=local_inputs(config, args.config), create=False, **common
        ):
            report = sparsify(config, output, progress)
        print(
            f"wrote {output} ({100 * report['sparsity']:.2f}% of targeted weights zeroed, {report['time_s']:.1f} s)"
        )
        return 0
    if args.command == "reorder":
        from .pipeline import reorder

        with claim_output(
            output, verb="reorder", inputs=local_inputs(config, args.config), create=False, **common
        ):
            report = reorder(config, output, progress)
        parts = [
            f"{what} ordered; at {kept['fractions'][-1]:.0%} {unit} they keep {kept['kept_ordered'][-1]:.1%} of the "
            f"importance ({kept['kept_original'][-1]:.1%} unordered)"
            for what, unit, kept in (
                ("channels", "width", report["ordering"]),
                ("KV groups", "of the groups", report.get("head_ordering")),
            )
            if kept
        ]
        print(f"wrote {output}: {'; '.join(parts)}; max logit change {report['max_logit_change']:.1e}")
        return 0
    if args.command == "latency":
        from .pipeline import fit_latency

        with claim_output(
            output, verb="latency", inputs=local_inputs(config, args.config), create=False, **common
        ):
            report = fit_latency(config, output, progress)
        held, fit = report["holdout_error"], report["fit_error"]

        def pct(err: dict) -> str:
            return (
                "n/a"
                if err["mean_abs"] is None
                else f"{100 * err['mean_abs']:.1f} % (max {100 * err['max_abs']:.1f} %)"
            )

        print(
            f"wrote {output / 'latency_model.json'}: {report['intercept_ms']:.2f} ms + "
            f"{report['ms_per_mparam']:.4f} ms per million MLP weights at batch {report['batch_size']} "
            f"({report['weight_format']}); prediction error held-out {pct(held)}, leave-one-out {pct(fit)}"
        )
        return 0
    if args.command == "extract":
        from .pipeline import extract

        with claim_output(
            output,
            verb="extract",
            inputs=local_inputs(config, args.config, args.super_adapter),
            create=False,
            **common,
        ):
            report = extract(config, output, args.super_adapter, args.subnet)
        widths = sorted(set(report["mlp_widths"]))
        heads = (
            f", KV groups {report['kv_groups']} of {report['kv_heads']}" if report.get("kv_groups") else ""
        )
        print(
            f"wrote {output}: {report['params']:,} parameters ({report['params'] / report['params_before']:.1%} "
            f"of {report['params_before']:,}), MLP widths {widths or 'unchanged'}{heads}"
        )
        return 0
    if args.command == "quantize":
        from .pipeline import quantize

        check_config_against_model(config, quantize=True)
        check_data(config, quantize=True)
        with claim_output(
            output, verb="quantize", inputs=local_inputs(config, args.config), create=False, **common
        ):
            report = quantize(config, output, progress)
        print(
            f"wrote {output}: {len(report['modules'])} linears in INT4 (group {report['group_size']}, "
            f"{'sym' if report['sym'] else 'asym'}), zeros kept: {report['zeros_kept']}, {report['time_s']:.1f} s"
        )
        return 0
    if args.command == "merge":
        from .pipeline import export, merge

        inputs = local_inputs(config, args.config, args.adapter)
        with _claim_outputs(((output, "merge"), (args.export_to, "export")), inputs, common):
            if args.export_to:  # the export's calibration texts and parity prompts, before merging
                check_data(
                    config.model_copy(update={"export": config.export.model_copy(update={"enabled": True})}),
                    train=True,
                    export=True,
                )
            report = merge(config, output, args.adapter, progress)
            ir = None
            if args.export_to:
                exported = config.model.model_copy(update={"name_or_path": str(output)})
                ex = config.export.model_copy(update={"merge_adapter": False})
                if report["precision"] == "int4":
                    ex = ex.model_copy(update={"weight_format": "int4"})
                ir = export(
                    config.model_copy(update={"model": exported, "export": ex}),
                    args.export_to,
                    overwrite=args.overwrite,
                )
        print(
            f"merged {report['adapter_kind']} sub-adapter ({report['modules_merged']} modules) into "
            f"{report['precision']} weights: wrote {output}; zeros {100 * report['sparsity']:.2f}% "
            f"(base {100 * report['base_sparsity']:.2f}%; every zero of the base kept, {report['new_zeros']:,} new)"
        )
        if ir is not None:
            print(
                f"exported {args.export_to}: {ir['weight_format']} weights, {ir['size_bytes']['model_bin'] / 2**20:.1f} MiB"
            )
        return 0
    if args.command == "train":
        from .pipeline import check_trainable_base, train

        check_config_against_model(config, train=True)
        check_trainable_base(config)
        check_data(config, train=True)
        with main_first(_resumable_output(args, config, "train", "train_config.json")):
            report = train(config, output, resume=args.resume, progress=progress)
        if distributed.is_main_process():
            print(
                f"trained {report['algorithm']} for {report['steps']} steps (loss {report['train_loss']:.4f}) "
                f"in {report['processes']} process(es); wrote {output / 'super_adapter'} and "
                f"{output / 'sub_adapter_heuristic'}"
            )
        return 0
    if args.command == "search":
        from .pipeline import latency_predictor, search

        check_data(config, train=True)
        latency_predictor(config, args.latency_model)  # checked before the output is claimed
        # No input fingerprints here: the evaluation log keys every measurement by its inputs, so a
        # resume on another base or super-adapter measures anew instead of reusing.
        claim = claim_output(
            output,
            verb="search",
            inputs=local_inputs(config, args.config, args.super_adapter, args.latency_model),
            prelude=["search_meta.json"],
            **common,
        )
        with main_first(claim):
            report = search(
                config, output, args.super_adapter, progress=progress, latency_model=args.latency_model
            )
        if not distributed.is_main_process():
            return 0
        reused = f", {report['not_reused']} logged on other inputs not reused" if report["not_reused"] else ""
        print(
            f"{report['algorithm']}: chose quality {report['chosen_quality']:.4f} at cost {report['chosen_cost']:.4g} "
            f"after {report['evaluations_used']} evaluations ({report['new_evaluations']} new{reused}, "
            f"{report['wall_s']:.0f} s); wrote {output / 'sub_adapter'}, {output / 'search.png'}"
        )
        return 0
    if args.command == "export":
        from .pipeline import evaluate_ir, export, export_facts, write_eval
        from .report.tables import print_table

        inputs = local_inputs(config, args.config, args.adapter)
        # An existing output is refused unless --overwrite; then replaced once the new one is complete.
        with _claim_outputs(((output, "export"), (args.save_merged, "merge")), inputs, common):
            report = export(config, output, args.adapter, args.save_merged, overwrite=args.overwrite)
        facts = [*export_facts(report), ["export time (s)", f"{report['export_s']:.1f}"]]
        print_table(f"exported {output}", ["", "value"], facts)
        if args.eval_ir:
            from .evaluation import results_table

            results = evaluate_ir(config, output, progress=progress)
            write_eval(output / "eval", str(output), results, {"model": str(output), "export": report})
            print_table("evaluation of the IR", *results_table({str(output): results}))
        return 0
    if args.command == "eval":
        from .evaluation import results_table
        from .formats import is_openvino_dir
        from .models import load_model, load_openvino_model
        from .pipeline import evaluate_model, write_eval
        from .report.tables import print_table

        check_data(config, evaluate=True)
        with main_first(
            claim_output(output, verb="eval", inputs=local_inputs(config, args.config), **common)
        ):
            ex, extra = config.export, {"model": config.model.name_or_path}
            if is_openvino_dir(config.model.name_or_path):
                model, tokenizer = load_openvino_model(
                    config.model.name_or_path, ex.device, ex.runtime_properties
                )
                extra["openvino"] = {"device": ex.device, "runtime_properties": ex.runtime_properties}
            else:
                model, tokenizer = load_model(config.model)
            results = evaluate_model(model, tokenizer, config, progress=progress)
            extra["processes"] = distributed.world_size()
            if distributed.is_main_process():
                write_eval(output, config.model.name_or_path, results, extra)
        if distributed.is_main_process():
            print_table("evaluation", *results_table({config.model.name_or_path: results}))
        return 0
    if args.command == "run":
        from .config import check_method
        from .pipeline import print_summary, run_pipeline

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
        with _resumable_output(args, config, "run", "config.json"):
            report = run_pipeline(config, output, resume=args.resume, progress=progress)
        print_summary(report)
        print(f"report: {output / 'report.json'}, {output / 'report.md'}")
        return 0
    raise AssertionError(args.command)


LAUNCHABLE = ("train", "eval", "search")  # verbs that use several processes; the others are single-process


def check_launchable(command: str) -> None:
    """Refuse a verb that has nothing to share between processes, naming what to launch instead."""
    from . import distributed

    if command == "train":
        distributed.check_training_launch()
    if command in LAUNCHABLE:
        return
    n = distributed.world_size()
    launched = "under torchrun / accelerate launch"
    if command == "run":
        raise ValueError(
            f"`run` does not run {launched} (WORLD_SIZE={n}): its sparsify, quantize, merge, export and "
            "benchmark stages are single-process, and N copies would repeat them. Run the stages one by one "
            "and launch only train, search and eval: `nncf-elastic-lora sparsify --config C --output O/sparse`; "
            f"`accelerate launch --multi_gpu --num_processes {n} -m nncf_elastic_lora train --config C --model O/sparse "
            "--output O/nls`; `accelerate launch ... search --config C --model O/sparse --super-adapter "
            "O/nls/super_adapter --output O/search`; `nncf-elastic-lora export --config C --model O/sparse "
            "--adapter O/search/sub_adapter --output O/ir`; `accelerate launch ... eval --model O/ir "
            '--output O/eval` (README, section "Many processes")'
        )
    raise ValueError(
        f"`{command}` is single-process: run it without torchrun / accelerate launch "
        f"(WORLD_SIZE={n}); only {', '.join(LAUNCHABLE)} use several processes"
    )


def _benchmark(args: argparse.Namespace) -> int:
    from .deploy.benchmark import benchmark_models, results_table
    from .outputs import claim_output, write_json, write_text
    from .report.tables import markdown_table, print_table
    from .runtime import check_properties, machine_info, parse_properties

    try:
        runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise ValueError(
            f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}"
        ) from None
    for flag, value, least in (
        ("--batch-sizes", min(batch_sizes, default=0), 1),
        ("--prompt-tokens", args.prompt_tokens, 1),
        ("--new-tokens", args.new_tokens, 2),  # decode latency needs a token after the first
        ("--repeats", args.repeats, 1),
        ("--warmup", args.warmup, 0),
    ):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    allowed = ("genai", "optimum", "torch")
    if not runtimes:
        raise ValueError(f"--runtime is empty; choose from {', '.join(allowed)}")
    for r in runtimes:
        if r not in allowed:
            raise ValueError(f"--runtime {r!r} is not one of {', '.join(allowed)}")
    models, labels = [], set()
    for item in args.model:
        label, sep, path = item.partition("=")
        path = path if sep else label
        label = label if sep else Path(path).name
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--model {path}: no such directory ({Path(path).resolve()})")
        if label in labels:
            raise ValueError(f"--model label {label!r} is given twice; name them with LABEL=DIR")
        labels.add(label)
        for r in runtimes:
            needs = "config.json" if r == "torch" else "openvino_model.xml"
            if not (Path(path) / needs).is_file():
                kind = "a Hugging Face checkpoint" if r == "torch" else "an OpenVINO IR directory"
                raise FileNotFoundError(
                    f"--model {path}: runtime {r!r} needs {kind}, but {Path(path).resolve() / needs} is missing"
                )
        models += [(label, path, r) for r in runtimes]
    properties = parse_properties(args.properties, args.properties_file)
    check_properties(properties, args.device)  # names and values, before any output or model work
    inputs = [path for _, path, _ in models] + [args.properties_file]
    claim = claim_output(args.output, verb="benchmark", inputs=inputs, overwrite=args.overwrite)
    settings = dict(
        device=args.device,
        properties=properties,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        batch_sizes=batch_sizes,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    out = Path(args.output)
    with claim:
        results = benchmark_models(models, isolate=not args.no_isolate, **settings)
        headers, rows = results_table(results)
        notes = sorted({n for r in results for n in r["property_notes"]})
        report = {
            "machine": machine_info(args.device),
            "settings": settings,
            "notes": notes,
            "results": results,
        }
        write_json(out / "benchmark.json", report)
        text = markdown_table(headers, rows)
        if notes:
            text += "\nNotes:\n" + "".join(f"- {n}\n" for n in notes)
        write_text(out / "benchmark.md", text)
    print_table(f"benchmark ({report['machine']['cpu']}, {args.device})", headers, rows)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
