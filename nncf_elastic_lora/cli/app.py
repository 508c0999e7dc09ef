"""The top level: the parser built from the registered verbs, running one, and ``main``'s error handling."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

# Importing the verb modules registers the verbs. They import torch, the pipeline and the models
# inside their functions, never at module level, so `--help`, `schema` and `tasks` start in a blink.
from . import bases, benchmark, info, lonas, nls, ship  # noqa: F401
from .common import check_launchable, print_error
from .registry import VERBS, Call
from .registry import build_parser as _build_parser

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

# The order `--help` lists the verbs in: a pipeline's order, then the tools.
ORDER = (
    "run",
    "sparsify",
    "quantize",
    "train",
    "search",
    "merge",
    "reorder",
    "latency",
    "extract",
    "eval",
    "export",
    "export-genai",
    "benchmark",
    "schema",
    "tasks",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``nncf-elastic-lora`` parser: ``--verbose`` and one subcommand per verb."""
    return _build_parser(
        ORDER,
        prog="nncf-elastic-lora",
        description="Compress LLMs with elastic low-rank adapters (Shears, SQFT, LoNAS) and ship them to OpenVINO.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run_verb(args: argparse.Namespace) -> int:
    """Check what every verb of its kind needs checked, then run the verb ``args.command``."""
    verb = VERBS[args.command]
    if verb.prepare == "none":
        return verb.run(Call(args))
    if getattr(args, "resume", False) and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the output, or replace it")

    from .. import distributed

    if distributed.is_launched():
        check_launchable(args.command)
        distributed.init_processes()
    from ..outputs import disk_full_as_error

    with disk_full_as_error(args.command, getattr(args, "output", None) or "."):
        if verb.prepare == "launch":
            return verb.run(Call(args))
        return verb.run(Call(args, verb.resolve_config(args)))  # validate everything before touching the output


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or a launcher's stop), raised so that clean-up runs as for ^C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the verb; 0 on success, 2 on bad input, 130 on ^C
    and 143 on SIGTERM (both after removing what the interrupted stage had half written)."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        return _main(argv)
    except Terminated:  # before the verb ran (during the imports): nothing to clean up
        print("terminated (SIGTERM)", file=sys.stderr)
        return 143
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:  # import-time noise of optional torchao kernels and torch's pytree registry
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from ..config import ConfigError
    from ..data import DatasetNotFoundError
    from ..deploy.benchmark import BenchmarkError
    from ..deploy.export import ExportError
    from ..models import ModelNotFoundError
    from ..outputs import OutputExistsError

    try:
        return run_verb(args)
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
        print_error(exc)
        return 2
    except OSError as exc:  # missing, unreadable or unwritable files: the message names the path
        print_error(exc)
        return 2
    except Terminated:
        print("terminated (SIGTERM); completed stages are kept (use --resume to continue a run)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; completed stages are kept (use --resume to continue a run)", file=sys.stderr)
        return 130
