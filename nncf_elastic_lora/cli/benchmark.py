"""``benchmark``: time and size IRs and checkpoints on runtimes. Flag-driven: it reads no config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import OUTPUT, OVERWRITE
from .registry import Call, Flag, verb

RUNTIMES = ("genai", "optimum", "torch")


def _runtimes_and_batch_sizes(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """Parse ``--runtime`` and ``--batch-sizes`` and check every number flag against its least value."""
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
        ("--rounds", args.rounds, 1),
    ):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.paired == 1 or args.paired < 0:
        raise ValueError(f"--paired must be 0 (off) or at least 2 rounds, got {args.paired}")
    if not runtimes:
        raise ValueError(f"--runtime is empty; choose from {', '.join(RUNTIMES)}")
    for r in runtimes:
        if r not in RUNTIMES:
            raise ValueError(f"--runtime {r!r} is not one of {', '.join(RUNTIMES)}")
    return runtimes, batch_sizes


def _models(items: list[str], runtimes: list[str]) -> list[tuple[str, str, str]]:
    """``(label, path, runtime)`` for every ``--model [LABEL=]DIR`` on every runtime, each checked."""
    models, labels = [], set()
    for item in items:
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
    return models


def _with_adapters(models: list[tuple[str, str, str]], items: list[str]) -> list[tuple]:
    """Each ``--adapter [LABEL=]FILE`` on every GenAI IR model, as extra rows beside the IR without it."""
    if not items:
        return models
    from ..deploy.genai_adapters import check_adapter_for_ir

    genai = [m for m in models if m[2] == "genai"]
    if not genai:
        raise ValueError("--adapter applies a runtime adapter through OpenVINO GenAI: include genai in --runtime")
    extra = []
    for item in items:
        label, sep, file = item.partition("=")
        label, file = (label, file) if sep else (Path(item).stem, item)
        if not Path(file).is_file():
            raise FileNotFoundError(f"--adapter {file}: no such file ({Path(file).resolve()})")
        for model_label, path, runtime in genai:
            check_adapter_for_ir(path, file)
            extra.append((f"{model_label} + adapter {label}", path, runtime, file))
    return [*models, *extra]


def _paired_models(models: list[tuple], rounds: int) -> list[tuple[str, str]]:
    """The ``(label, IR)`` pairs ``--paired`` measures: every model on genai without a runtime adapter."""
    if not rounds:
        return []
    paired = [(label, path) for label, path, runtime, *adapter in models if runtime == "genai" and not adapter]
    if not any(runtime == "genai" for _, _, runtime, *_ in models):
        raise ValueError("--paired compares IRs on genai: add genai to --runtime")
    if len(paired) < 2:
        raise ValueError(f"--paired compares IRs on genai: give at least two --model IR directories (got {len(paired)})")
    return paired


def _paired_report(models: list[tuple[str, str]], rounds: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 speeds paired round by round, and each model's ratio to the first ``(mean, standard error)``."""
    from ..deploy.benchmark import paired_decode_speeds, paired_ratio

    keys = ("prompt_tokens", "new_tokens", "device", "properties")
    got = paired_decode_speeds(models, rounds=rounds, **{k: settings[k] for k in keys})
    first = got["tokens_per_s"][models[0][0]]
    got["ratio_to_first"] = {label: paired_ratio(v, first) for label, v in got["tokens_per_s"].items()}
    return got


def _paired_lines(paired: dict[str, Any]) -> str:
    import statistics

    first = next(iter(paired["tokens_per_s"]))
    lines = [f"\nPaired at batch 1 ({paired['rounds']} rounds, every IR in one process, one generation each per "
             f"round, alternating order; ratio to {first} round by round ± its standard error):\n"]  # fmt: skip
    for label, speeds in paired["tokens_per_s"].items():
        mean, se = paired["ratio_to_first"][label]
        lines.append(f"- {label}: {statistics.median(speeds):.1f} tok/s (median), {mean:.3f} ± {se:.3f}x\n")
    return "".join(lines)


def _write_report(out: Path, report: dict[str, Any], headers: list, rows: list) -> None:
    from ..outputs import write_json, write_text
    from ..report.tables import markdown_table

    write_json(out / "benchmark.json", report)
    text = markdown_table(headers, rows)
    if report.get("paired"):
        text += _paired_lines(report["paired"])
    if report["notes"]:
        text += "\nNotes:\n" + "".join(f"- {n}\n" for n in report["notes"])
    write_text(out / "benchmark.md", text)


# benchmark reads no config: its flags are all it takes
BENCHMARK_FLAGS = (
    Flag(("--model",), action="append", required=True, metavar="[LABEL=]DIR", help="repeatable"),
    OUTPUT,
    OVERWRITE,
    Flag(("--runtime",), default="genai", help="comma-separated: genai, optimum, torch (default genai)"),
    Flag(("--device",), default="CPU", help="OpenVINO device (CPU, GPU)"),
    Flag(("--prompt-tokens",), type=int, default=128),
    Flag(("--new-tokens",), type=int, default=64),
    Flag(("--batch-sizes",), default="1,4", help="comma-separated (default 1,4)"),
    Flag(("--repeats",), type=int, default=3),
    Flag(("--warmup",), type=int, default=1),
    Flag(
        ("--rounds",),
        type=int,
        default=1,
        help="measure every model once per round, in reverse order every other round, and pool the runs: "
        "a machine whose speed drifts over minutes (a shared VM) then slows every model alike (default 1)",
    ),
    Flag(
        ("--property",),
        dest="properties",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runtime property",
    ),
    Flag(("--properties-file",), help="JSON object of runtime properties (see export/runtime/)"),
    Flag(("--no-isolate",), action="store_true", help="run everything in this process"),
    Flag(
        ("--paired",),
        type=int,
        default=0,
        metavar="ROUNDS",
        help="then every genai IR at batch 1, all loaded in one process, one generation each per round for "
        "ROUNDS rounds (>= 2), alternating order: each IR's speed over the first's, paired round by round "
        "(resolves a few percent on a drifting VM; default 0: off)",
    ),
    Flag(
        ("--adapter",),
        dest="adapters",
        action="append",
        default=[],
        metavar="[LABEL=]FILE",
        help="a GenAI adapter file (export-genai) applied at run time to every IR on genai, measured beside "
        "the IR without it; repeatable",
    ),
)


@verb(
    "benchmark",
    help="measure inference speed and memory (OpenVINO GenAI, optimum-intel, torch)",
    description="Time to first token, decode latency and tokens/s at each batch size, compile time, "
    "size on disk and peak memory of each --model on each --runtime; medians over --repeats after "
    "--warmup (pooled over --rounds); every model and runtime in its own process; with --paired, the genai "
    "IRs' batch-1 speeds paired round by round in one process. Writes benchmark.json and benchmark.md.",
    flags=BENCHMARK_FLAGS,
    prepare="launch",
)
def benchmark(call: Call) -> int:
    """Measure every ``--model`` on every ``--runtime`` and write benchmark.json and benchmark.md."""
    from ..deploy.benchmark import benchmark_models, results_table
    from ..outputs import claim_output
    from ..report.tables import print_table
    from ..runtime import check_properties, machine_info, parse_properties

    args = call.args
    runtimes, batch_sizes = _runtimes_and_batch_sizes(args)
    models = _with_adapters(_models(args.model, runtimes), args.adapters)
    paired = _paired_models(models, args.paired)
    properties = parse_properties(args.properties, args.properties_file)
    check_properties(properties, args.device)  # names and values, before any output or model work
    inputs = [m[1] for m in models] + [*(m[3] for m in models if len(m) > 3), args.properties_file]
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
        results = benchmark_models(models, isolate=not args.no_isolate, rounds=args.rounds, **settings)
        headers, rows = results_table(results)
        notes = sorted({n for r in results for n in r["property_notes"]})
        report = {
            "machine": machine_info(args.device),
            "settings": {**settings, "rounds": args.rounds, "paired": args.paired},
            "notes": notes,
            "results": results,
            "paired": None,
        }
        _write_report(out, report, headers, rows)  # kept should the paired pass fail
        if paired:
            report["paired"] = _paired_report(paired, args.paired, settings)
            _write_report(out, report, headers, rows)
    print_table(f"benchmark ({report['machine']['cpu']}, {args.device})", headers, rows)
    if report["paired"]:
        print(_paired_lines(report["paired"]).strip())
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}")
    return 0
