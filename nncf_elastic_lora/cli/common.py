"""What the verbs share: the common flags, claiming outputs, the launcher checks, printing errors."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .registry import Call, Flag

CONFIG_FILE = Flag(("--config", "-c"), help="JSON config file; default: built-in defaults")
CONFIG_POSITIONAL = Flag(("config",), help="JSON config file (see `nncf-elastic-lora schema`)")
OUTPUT = Flag(("--output", "-o"), required=True, help="output directory")
OVERWRITE = Flag(("--overwrite",), action="store_true", help="replace an existing, non-empty output")
SUPER_ADAPTER = Flag(("--super-adapter",), required=True, help="a super_adapter/ folder written by `train`")
SHARED = (
    OUTPUT,
    OVERWRITE,
    Flag(
        ("--model",),
        key="model.name_or_path",
        help="override model.name_or_path (bundled id, HF dir or hub id)",
    ),
    Flag(("--task",), key="data.task", help="override data.task"),
    Flag(
        ("--set",),
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set sparsity.ratio=0.6 (JSON values); repeatable",
    ),
    Flag(("--no-progress",), action="store_true", help="hide progress bars"),
)


def common_flags(*, config_positional: bool = False, super_adapter: bool = False) -> tuple[Flag, ...]:
    """The flags of every config-driven verb: the config, the output and the usual overrides."""
    config = CONFIG_POSITIONAL if config_positional else CONFIG_FILE
    return (config, *SHARED, *((SUPER_ADAPTER,) if super_adapter else ()))


def local_inputs(call: Call, *extra: str | None) -> list:
    """The paths this call reads (refused as its outputs): the config file, the model, ``extra``."""
    from ..provenance import local_inputs as inputs_of

    return inputs_of(call.config, call.args.config, *extra)


def claim(call: Call, verb: str, *extra: str | None, **options: Any) -> contextlib.AbstractContextManager:
    """Claim ``--output`` for ``verb``, reading the config's inputs and ``extra``."""
    from ..outputs import claim_output

    return claim_output(
        call.output, verb=verb, inputs=local_inputs(call, *extra), **call.claim_options, **options
    )


@contextlib.contextmanager
def claim_outputs(outputs: tuple[tuple[str | None, str], ...], inputs: list, common: dict) -> Iterator[None]:
    """Claim every given ``(path, verb)`` output (None paths skipped); each is written atomically later."""
    from ..outputs import claim_output

    with contextlib.ExitStack() as claims:
        for path, verb in outputs:
            if path:
                claims.enter_context(claim_output(path, verb=verb, inputs=inputs, create=False, **common))
        yield


@contextlib.contextmanager
def resumable_output(call: Call, verb: str, config_name: str) -> Iterator[Path]:
    """Claim a resumable output (``run``, ``train``) and record its resolved config in it.

    On resume the config must equal the one the output was started with (checked first, so the
    error names the changed keys), and the model and data must be the same (their fingerprints).
    """
    from ..config import with_added_options
    from ..outputs import check_same_config, claim_output, write_json
    from ..provenance import input_fingerprints

    args, config = call.args, call.config
    output, data = call.output, config.model_dump(mode="json")
    if args.resume:
        # an option added since the run started holds the value that reproduces what it ran with: not a change
        check_same_config(output / config_name, data, normalize=with_added_options)
    with claim_output(
        output,
        verb=verb,
        inputs=local_inputs(call),
        fingerprints=input_fingerprints(config),
        prelude=[config_name],
        overwrite=args.overwrite,
        resume=args.resume,
    ):
        write_json(output / config_name, data)
        yield output


LAUNCHABLE = ("train", "eval", "search")  # verbs that use several processes; the others are single-process


def check_launchable(command: str) -> None:
    """Refuse a verb that has nothing to share between processes, naming what to launch instead."""
    from .. import distributed

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
            '--output O/eval` (docs/cli.md, section "Many processes")'
        )
    raise ValueError(
        f"`{command}` is single-process: run it without torchrun / accelerate launch "
        f"(WORLD_SIZE={n}); only {', '.join(LAUNCHABLE)} use several processes"
    )


def print_error(exc: BaseException) -> None:
    """Print ``exc`` as the CLI's one-line error, naming the process when it is not the first."""
    from .. import distributed

    where = f"[process {distributed.rank()} of {distributed.world_size()}] " if distributed.rank() else ""
    print(f"error: {where}{exc}", file=sys.stderr)
