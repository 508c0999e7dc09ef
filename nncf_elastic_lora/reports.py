"""Writing results: atomic files and directories, JSON reports, readable tables."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .outputs import MARKER, OutputExistsError, read_marker, write_marker

__all__ = ["OutputExistsError", "atomic_directory", "check_same_config", "write_json", "write_text"]


def check_same_config(path: str | Path, config: dict[str, Any]) -> None:
    """On resume: refuse when ``path`` (a saved config) differs from ``config``; name what changed."""
    path = Path(path)
    if not path.is_file():
        return
    saved = json.loads(path.read_text())

    def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{prefix}{k}.")]
        return [] if a == b else [prefix.rstrip(".")]

    changed = diff(saved, config)
    if changed:
        raise OutputExistsError(
            f"cannot resume in {path.parent}: the config differs from the one it was started with "
            f"({', '.join(changed[:8])}); use a new --output or --overwrite"
        )


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (a temporary file renamed over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; reports are meant to be read by others
    os.replace(tmp, path)
    return path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


@contextmanager
def atomic_directory(target: str | Path, verb: str = "stage"):
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` in one rename.

    An interrupted stage leaves no half-written ``target`` behind, so "does the output exist"
    is a safe resume test. The result carries the ownership marker (:mod:`.outputs`); an existing
    ``target`` is replaced only when it carries one too.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and read_marker(target) is None and (target.is_file() or any(target.iterdir())):
        raise OutputExistsError(
            f"refusing to replace {target.resolve()}: it was not written by nncf-elastic-lora (no {MARKER})"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if not (tmp / MARKER).is_file():
            write_marker(tmp, verb, entries=sorted(p.name for p in tmp.iterdir()))
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], print_fn: Callable | None = None
) -> None:
    """A table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, no_wrap=i == 0)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough not to cut task names
        console = Console(width=160)
    (print_fn or console.print)(table)
