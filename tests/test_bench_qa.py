"""bench/qa.py: a stale torch-extension lock (torch would wait on it forever) and bad flags are one clear error."""

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "qa.py"


def _run(env_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(env_dir)}
    return subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip


def test_stale_lock_is_one_clear_error(tmp_path):
    build = tmp_path / "py311_cpu" / "nncf" / "quantized_functions_cpu" / "2.13.0+cpu"
    build.mkdir(parents=True)
    lock = build / "lock"
    lock.touch()
    old = time.time() - 7200
    os.utime(lock, (old, old))
    done = _run(tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert str(lock) in last and "delete it, or pass --no-nncf" in last
    assert lock.exists()  # the user decides; nothing is deleted behind their back


def test_bad_base_weights_and_output_are_one_clear_error(tmp_path):
    for flags, error in (
        (["--base-weights", "float,int4"], "--base-weights 'float,int4': give dequantized and/or float"),
        (["--output", "../qa"], "--output '../qa': a file name stem"),
    ):
        done = subprocess.run([sys.executable, str(SCRIPT), "--no-nncf", *flags], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert error in done.stderr.strip().splitlines()[-1]
