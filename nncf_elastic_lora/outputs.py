"""Output directories: ownership, overlap with inputs, locking, resume checks and clean-up.

The tool deletes only what it can prove it wrote: every directory it creates holds a marker file
(:data:`MARKER`) naming the verb that wrote it and a fingerprint of every input that determined it.

- ``--overwrite`` replaces a directory only when it holds the marker (and no top-level entries the
  marker does not list), never a project folder that happens to contain a ``config.json``;
- ``--resume`` continues only in a directory written by the same verb from the same inputs,
  and names every input that changed otherwise;
- an output that is, contains or lies inside one of the inputs is refused before anything is read;
- one process at a time writes an output (an ``flock`` beside it); a second is refused;
- a failed verb removes the output it created if nothing was kept there, and a resume removes the
  temporary directories (``.<name>.tmp-*``) a killed stage left behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .formats import MAX_SHARD_SIZE

MARKER = ".nncf-elastic-lora.json"
TMP_INFIX = ".tmp-"  # atomic_directory and the model cache write ``.<name>.tmp-XXXX`` beside the target


class OutputExistsError(FileExistsError):
    """An output cannot be written: it exists, is not ours, overlaps an input or is in use."""


class DiskFullError(OSError):
    """A stage ran out of disk space (or would): nothing of it was kept or claimed complete."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(directory: str | Path, needed: int, stage: str) -> None:
    """Refuse to start ``stage`` when the disk holding ``directory`` has less than ``needed`` bytes free."""
    free = free_bytes(directory)
    if needed > free:
        raise DiskFullError(
            f"stage {stage}: {directory} needs about {_mib(needed)} but its disk has {_mib(free)} free; nothing "
            "of it was written: free space or write it elsewhere",
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is ENOSPC, however the library that wrote wrapped it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True  # safetensors, torch.save and OpenVINO's serializer raise their own types
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def disk_full_as_error(stage: str, directory: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn running out of disk space inside the block into one :class:`DiskFullError` naming ``stage``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        need = f"it needed about {_mib(needed)}" if needed else "it needed more"
        raise DiskFullError(
            f"stage {stage}: the disk holding {directory} is full ({_mib(free_bytes(directory))} free, {need}); "
            "its temporary files were removed and nothing of it is claimed complete: free space or write "
            "elsewhere, then rerun (a `run` continues with --resume, keeping the stages before it)"
        ) from None


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes ``tensors`` take on disk, each storage once (tied weights appear twice in a state dict)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------ fingerprints

_HASHES: dict[tuple, str] = {}


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    skip = {MARKER}
    out = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # temporaries, caches
        out += [Path(root) / n for n in sorted(names) if n not in skip and not n.startswith(".")]
    return out


def fingerprint_path(path: str | Path) -> str:
    """A SHA-256 of a file's or directory's contents (relative names and bytes; hidden files skipped).

    Memoised per process by (name, size, mtime) of every file, so repeated checks cost a ``stat``.
    """
    path = Path(path).resolve()
    files = _files(path)
    stats = tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])
    key = (str(path), stats)
    if key not in _HASHES:
        digest = hashlib.sha256()
        for f in files:
            digest.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
        _HASHES[key] = digest.hexdigest()[:20]
    return _HASHES[key]


def changed_inputs(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Names of the inputs whose fingerprints differ (or are missing on one side)."""
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


# ------------------------------------------------------------------ markers


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of a directory we wrote, or None (no marker, or not ours)."""
    marker = Path(path) / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "nncf-elastic-lora" else None


def write_marker(path: str | Path, verb: str, inputs: Mapping[str, Any] | None = None, **extra: Any) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool_version = version("nncf-elastic-lora")
    except PackageNotFoundError:
        tool_version = "unknown"

    write_json(
        Path(path) / MARKER,
        {
            "tool": "nncf-elastic-lora",
            "version": tool_version,
            "verb": verb,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "inputs": dict(inputs or {}),
            **extra,
        },
    )


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != MARKER)


def _foreign_entries(path: Path, marker: dict[str, Any]) -> list[str]:
    """Top-level entries the marker does not list as written by us (empty when it lists none)."""
    ours = marker.get("entries")
    if ours is None:  # a killed run never recorded its entries: the marker alone proves ownership
        return []
    return [e for e in _entries(path) if e not in ours and TMP_INFIX not in e and not e.startswith(".")]


# ------------------------------------------------------------------ checks


def _is_nonempty(path: Path) -> bool:
    return path.exists() and (path.is_file() or any(path.iterdir()))


def location_problem(path: str | Path) -> tuple[Path, str] | None:
    """Why a directory cannot be made at ``path``: ``(the offending ancestor, "file" or "not writable")``,
    or None. The nearest existing ancestor decides (``mkdir`` would fail there with a bare OSError)."""
    path = Path(path).absolute()
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                return parent, "file"
            if not os.access(parent, os.W_OK | os.X_OK):
                return parent, "not writable"
            return None
    return None


def check_writable_location(path: str | Path) -> None:
    """Refuse an output below a regular file or in a directory this process cannot write."""
    path = Path(path).absolute()
    problem = location_problem(path)
    if problem is None:
        return
    parent, why = problem
    if why == "file":
        what = "is a file" if parent == path else f"lies below the file {parent}"
        raise OutputExistsError(f"output {path} {what}; choose a directory path for --output")
    raise OutputExistsError(f"output {path}: {parent} is not writable")


def check_not_input(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output that is, contains or lies inside one of the inputs."""
    out = Path(output).resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue  # hub ids, bundled ids
        src = Path(item).resolve()
        if out == src:
            relation = "is"
        elif out in src.parents:
            relation = "contains"
        elif src in out.parents:
            relation = "is inside"
        else:
            continue
        raise OutputExistsError(
            f"output {out} {relation} the input {src}; writing there could destroy the input: "
            "choose another --output"
        )


def check_output(path: str | Path, overwrite: bool = False) -> bool:
    """Whether ``path`` holds something; raise unless ``overwrite`` may replace it (ours, nothing foreign)."""
    path = Path(path)
    check_writable_location(path)
    if not _is_nonempty(path):
        return False
    if not overwrite:
        raise OutputExistsError(
            f"output {path.resolve()} already exists and is not empty; pass --overwrite to replace it "
            "(or, for `run`, `train` and `search`, --resume to continue)"
        )
    marker = read_marker(path) if path.is_dir() else None
    if marker is None:
        raise OutputExistsError(
            f"refusing to delete {path.resolve()}: it was not written by nncf-elastic-lora (no {MARKER}); "
            "remove it yourself or choose another --output"
        )
    foreign = _foreign_entries(path, marker)
    if foreign:
        raise OutputExistsError(
            f"refusing to delete {path.resolve()}: it holds entries nncf-elastic-lora did not write "
            f"({', '.join(foreign[:5])}); move them away or choose another --output"
        )
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the ``.<name>.tmp-*`` directories a killed stage left under ``path``; return them."""
    removed = []
    for root, dirs, _ in os.walk(path):
        for d in list(dirs):
            if d.startswith(".") and TMP_INFIX in d:
                shutil.rmtree(Path(root) / d, ignore_errors=True)
                removed.append(Path(root) / d)
                dirs.remove(d)
    return removed


# ------------------------------------------------------------------ locking


@contextmanager
def output_lock(path: str | Path, wait: bool = False) -> Iterator[None]:
    """An exclusive lock on ``path`` (a file ``.<name>.lock`` beside it): refused at once if another
    process holds it, or with ``wait`` held once that process lets go (a shared cache entry)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise OutputExistsError(
                f"output {path} is being written by another nncf-elastic-lora process (pid {holder}); "
                "wait for it to finish or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            if not wait:  # a waiter holds the file open: unlinking it would let a third process lock a new one
                lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ the one entry point


@contextmanager
def claim_output(
    path: str | Path,
    *,
    verb: str,
    inputs: Iterable[str | Path | None] = (),
    fingerprints: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    create: bool = True,
    prelude: Iterable[str] = (),
) -> Iterator[Path]:
    """Check, lock and (with ``create``) prepare the output directory of one verb.

    ``inputs`` are the paths the verb reads (refused as outputs); ``fingerprints`` what determines
    the result (recorded in the marker; a resume with different ones is refused, naming them).
    Verbs that write their output atomically at the end pass ``create=False``: the directory is
    checked and locked, not made. On failure, a directory this call created is removed again when
    nothing was kept in it (nothing but the ``prelude`` files the verb writes before its work).
    """
    path = Path(path)
    check_writable_location(path)
    check_not_input(path, inputs)
    fingerprints = dict(fingerprints or {})
    with output_lock(path):
        # What a killed (kill -9) atomic write of this output left beside it; ours by name, and the lock is ours.
        for stale in path.parent.glob(f".{path.name}{TMP_INFIX}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        existed = _is_nonempty(path)
        if existed and resume:
            marker = read_marker(path) if path.is_dir() else None
            if marker is None:
                raise OutputExistsError(
                    f"cannot resume in {path.resolve()}: it was not written by nncf-elastic-lora "
                    f"(no {MARKER}); choose another --output"
                )
            if marker.get("verb") != verb:
                raise OutputExistsError(
                    f"cannot resume `{verb}` in {path.resolve()}: it holds the output of "
                    f"`{marker.get('verb')}`; choose another --output"
                )
            changed = changed_inputs(marker.get("inputs", {}), fingerprints)
            if changed:
                raise OutputExistsError(
                    f"cannot resume in {path.resolve()}: these inputs differ from the ones it was started "
                    f"with: {', '.join(changed)}; use a new --output or --overwrite"
                )
            remove_stale_temporaries(path)
        elif existed and check_output(path, overwrite) and create:
            shutil.rmtree(path)
        if create:
            path.mkdir(parents=True, exist_ok=True)
            write_marker(path, verb, fingerprints)
        try:
            yield path
        except BaseException:
            if create and not existed and path.is_dir() and set(_entries(path)) <= set(prelude):
                shutil.rmtree(path, ignore_errors=True)
            raise
        if create and path.is_dir():
            write_marker(path, verb, fingerprints, entries=_entries(path))


# ------------------------------------------------------------------ atomic files and directories


def directory_size(path: str | Path, pattern: str = "*") -> int:
    """Bytes of the files in ``path`` (not recursive) whose names match ``pattern``."""
    return sum(p.stat().st_size for p in Path(path).glob(pattern) if p.is_file())


def config_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs as JSON objects (``model_dump(mode="json")``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in config_differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def check_same_config(
    path: str | Path, config: dict[str, Any], normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> None:
    """On resume: refuse when ``path`` (a saved config) differs from ``config``; name what changed.

    ``normalize`` maps the saved config to its current form (e.g. options added since, with the value that
    reproduces what the run did: :func:`~nncf_elastic_lora.config.with_added_options`).
    """
    path = Path(path)
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if normalize is not None:
        saved = normalize(saved)
    changed = config_differences(saved, config)
    if changed:
        raise OutputExistsError(
            f"cannot resume in {path.parent}: the config differs from the one it was started with "
            f"({', '.join(changed[:8])}); use a new --output or --overwrite"
        )


def json_number(
    value: Any, name: str, *, integer: bool = False, minimum: float | None = None, above: float | None = None
) -> float:
    """``value`` (read back from a JSON file this tool wrote) if it is a finite number in range.

    Raises ``ValueError`` naming ``name``, the value and what was expected: JSON's ``Infinity``/``NaN``
    literals, strings, booleans and out-of-range values are all damage, never data.
    """
    kind = "an integer" if integer else "a finite number"
    bound = f" >= {minimum}" if minimum is not None else f" > {above}" if above is not None else ""
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    if not ok:
        raise ValueError(f"{name} is {value!r}, expected {kind}{bound}")
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (a temporary file renamed over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; reports are meant to be read by others
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write failed (a full disk): no temporary left behind
            os.unlink(tmp)
    return path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextmanager
def atomic_directory(target: str | Path, verb: str = "stage"):
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` in one rename.

    An interrupted stage leaves no half-written ``target`` behind, so "does the output exist"
    is a safe resume test. The result carries the ownership marker (:data:`MARKER`); an existing
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


def save_checkpoint(
    target: str | Path,
    model: Any,
    tokenizer: Any,
    *,
    verb: str,
    reports: Mapping[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a Hugging Face checkpoint (model + tokenizer) and its JSON ``reports`` atomically.

    ``reports`` maps file names to JSON-able data; ``extra`` writes anything else into the temporary
    directory before it replaces ``target`` (the INT4 codes, say). Returns ``target``.
    """
    needed = tensor_bytes(model.state_dict().values()) + 8 * 2**20  # the weights, plus the tokenizer and reports
    check_free_space(target, needed, verb)
    with disk_full_as_error(verb, target, needed), atomic_directory(target, verb=verb) as tmp:
        model.save_pretrained(tmp, max_shard_size=MAX_SHARD_SIZE)  # in the model's own dtype
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        for name, data in (reports or {}).items():
            write_json(tmp / name, data)
    return Path(target)
