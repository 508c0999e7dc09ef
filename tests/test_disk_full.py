"""A full disk: checked before a stage writes where its size is known, and one clear error when it fills anyway."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest
from safetensors import SafetensorError

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.outputs import DiskFullError, disk_full_as_error, is_disk_full, write_json

TINY_CONFIG = Path(__file__).parent.parent / "configs" / "tiny_shears.json"
# What safetensors raises when the disk fills mid-write (the message the run ended in).
SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError(SAFETENSORS_ENOSPC),
        RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: No space left on device"),
    ],
)  # fmt: skip
def test_disk_full_is_recognised_however_it_is_wrapped(exc):
    assert is_disk_full(exc)
    wrapped = RuntimeError("export failed")
    wrapped.__cause__ = exc
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(DiskFullError, match=r"^stage merge: the disk holding /x is full .*it needed about 2\.0 MiB"):
        with disk_full_as_error("merge", "/x", 2 * 2**20):
            raise exc


def test_write_json_leaves_no_temporary_when_the_disk_fills(tmp_path, monkeypatch):
    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError):
        write_json(tmp_path / "report.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_disk_filling_mid_write_is_one_error_naming_the_stage(tmp_path, monkeypatch, capsys):
    import transformers.modeling_utils

    def full(*_, **__):
        raise SafetensorError(SAFETENSORS_ENOSPC)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    out = tmp_path / "sparse"
    argv = ["sparsify", "--config", str(TINY_CONFIG), "--output", str(out), "--no-progress"]
    assert main(argv) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: stage sparsify: the disk holding {out} is full") and "it needed about" in line
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("verb", ["sparsify", "train"])
def test_a_disk_too_small_is_refused_before_writing(small_disk, verb, capsys):
    out = small_disk / verb
    if verb == "train":
        (small_disk / "filler").write_bytes(b"\0" * (4 * 2**20 - 512 * 2**10))  # leave 512 KiB
    argv = [verb, "--config", str(TINY_CONFIG), "--output", str(out), "--no-progress"]
    assert main(argv) == 2
    line = _one_error(capsys)
    assert f"error: stage {verb}" in line and "needs about" in line and "MiB free" in line, line
    assert not (out / "super_adapter").exists() and _leftovers(small_disk) == []
    if verb == "sparsify":
        assert not out.exists()
