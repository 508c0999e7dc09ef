"""bench/int4_layout.py: layouts parse into export settings, ratios carry their errors, bad flags are one error."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from int4_layout import parse_layout, ratio_with_se, table  # noqa: E402


def test_layouts_parse_into_export_settings():
    assert parse_layout("int8") == {"weight_format": "int8"}
    assert parse_layout("int4_g64") == {"weight_format": "int4", "group_size": 64, "sym": False}
    assert parse_layout("int4_g192_sym") == {"weight_format": "int4", "group_size": 192, "sym": True}
    for bad in ("int4", "int4_g0", "int4_sym", "fp8"):
        with pytest.raises(ValueError, match="int4_g<group size>"):
            parse_layout(bad)


def _speed(tok_s_b1: float, spread: float) -> dict:
    def batch(size: int, speed: float) -> dict:
        # runs of 63 decoded tokens (64 new, the first is the TTFT's) around ``speed`` tokens/s per sequence
        fulls = [0.1 + size * 63 / (speed * f) for f in (1 - spread, 1.0, 1 + spread)]
        return {"batch_size": size, "decode_tokens_per_s": speed, "ttft_runs_s": [0.1] * 3, "generate_runs_s": fulls}

    return {"new_tokens": 64, "weights_bytes": 2**20, "batches": [batch(1, tok_s_b1), batch(4, 3 * tok_s_b1)]}


def test_ratios_carry_both_sides_standard_errors():
    fast, slow = _speed(130.0, 0.05), _speed(100.0, 0.05)
    ratio, se = ratio_with_se(fast, slow, 1)
    assert ratio == pytest.approx(1.3) and 0 < se < 0.1
    assert ratio_with_se(fast, _speed(100.0, 0.0), 1)[1] < se  # a steadier peer, a smaller error
    rows = [{"layout": "int8", "accuracy": 0.58, "speed": slow}, {"layout": "int4_g64", "accuracy": 0.48, "speed": fast}]
    last = table(rows)[-1]
    assert last.startswith("| int4_g64 | 1.0 | 0.480 | 130.0 | 390.0 | 1.30 ± ") and last.endswith("| 1 | 1 |")


def test_a_bad_layout_is_refused_before_any_work():
    done = subprocess.run([sys.executable, str(BENCH / "int4_layout.py"), "--layouts", "int8,int4_gx"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--layouts: layout 'int4_gx': use int8 or int4_g<group size>[_sym]" in done.stderr.strip().splitlines()[-1]
