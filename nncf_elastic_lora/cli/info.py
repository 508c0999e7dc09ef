"""Verbs that only describe: the config's ``schema`` and the bundled ``tasks``."""

from __future__ import annotations

import json
import sys

from .registry import Call, Flag, verb


@verb(
    "schema",
    help="print the config's JSON Schema",
    flags=(Flag(("--output", "-o"), help="write to this file instead of stdout"),),
    prepare="none",
)
def schema(call: Call) -> int:
    """Print (or write to ``--output``) the config's JSON Schema."""
    from ..config import json_schema
    from ..outputs import check_writable_location, write_text

    text = json.dumps(json_schema(), indent=2)
    if call.args.output:
        check_writable_location(call.args.output)
        write_text(call.args.output, text + "\n")
    else:
        print(text)
        sys.stdout.flush()  # a closed pipe shows up here, inside main's handler
    return 0


@verb("tasks", help="list the bundled tasks", prepare="none")
def tasks(call: Call) -> int:
    """List the bundled tasks with their descriptions."""
    from ..data import BUNDLED_TASKS

    for name, task in BUNDLED_TASKS.items():
        print(f"{name:18s} {task.description}")
    return 0
