"""bench/decode_profile.py: node names map to the right model part; bad flags are one clear error."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from decode_profile import built_width, cut_bound, cut_shape, part_of, table  # noqa: E402


def test_part_of_reads_optimum_intel_node_names():
    assert part_of("__module.lm_head/aten::linear/MatMul", "FullyConnectedCompressed") == "LM head"
    assert part_of("__module.model.embed_tokens/aten::embedding/Gather", "GatherCompressed") == "embedding"
    assert part_of("__module.model.layers.3.mlp.down_proj/aten::linear/MatMul", "FullyConnected") == "MLP"
    assert part_of("__module.model.layers.0.mlp/aten::mul/Multiply", "Multiply") == "MLP"
    q = "__module.model.layers.0.self_attn.q_proj/aten::linear/MatMul"
    assert part_of(q, "FullyConnectedCompressed") == "attention projections"
    sdpa = "__module.model.layers.1.self_attn/aten::scaled_dot_product_attention/ScaledDotProductAttention"
    assert part_of(sdpa, "ScaledDotProductAttentionWithKVCache") == "attention core"
    assert part_of("__module.model.rotary_emb/aten::cos/Cos", "Cos") == "attention core"
    assert part_of("Assign_15227", "Assign") == "attention core"
    assert part_of("__module.model.layers.1.post_attention_layernorm/aten::mul/Multiply", "RMS") == "norms"
    assert part_of("__module.model.layers.1/aten::add/Add_1", "Add") == "other"


def test_decode_profile_refuses_an_unknown_shape_before_any_work():
    results = BENCH / "results"
    before = {p: p.stat().st_mtime_ns for p in results.glob("decode_profile*")}
    done = subprocess.run(
        [sys.executable, str(BENCH / "decode_profile.py"), "--shapes", "smollm2-135m,gpt-9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown shape or format ['gpt-9']" in done.stderr.strip().splitlines()[-1]
    assert {p: p.stat().st_mtime_ns for p in results.glob("decode_profile*")} == before


def test_a_cut_keeps_the_shape_but_the_mlp_width_in_whole_steps():
    assert cut_shape("llama-3.2-1b", 0.75)["intermediate_size"] == 6144
    assert cut_shape("smollm2-135m", 0.75)["intermediate_size"] == 1152  # LoNAS's heuristic width
    assert cut_shape("smollm2-135m", 0.75)["hidden_size"] == 576
    assert built_width("smollm2-135m", 0.6) == 896 / 1536  # the width the table shows is the one built


def _profile(wall: float, mlp: float) -> dict:
    parts = dict.fromkeys(("LM head", "embedding", "attention projections", "attention core", "norms", "other"), 0.0)
    return {"wall_ms": wall, "nodes_ms": wall, "outside_ms": 0.0, "parts_ms": {**parts, "MLP": mlp}}


def test_the_table_measures_a_cut_against_dense_int8_and_bounds_it_by_the_dense_mlp_share():
    dense8, dense4, cut4 = _profile(10.0, 4.0), _profile(8.0, 4.0), _profile(6.0, 2.0)
    assert abs(cut_bound(dense4, 0.75) - 1 / (1 - 0.5 * 0.25)) < 1e-12  # half the time in MLPs, a quarter cut
    rows = table([{"shape": "s", "mlp": 1.0, "format": "int8", "profile": dense8},
                  {"shape": "s", "mlp": 1.0, "format": "int4", "profile": dense4},
                  {"shape": "s", "mlp": 0.75, "format": "int4", "profile": cut4}])  # fmt: skip
    assert rows[-1].endswith("| 1.67x | 1.33x | 1.14x |") and "| 75% | INT4 |" in rows[-1]
    assert rows[-3].endswith("| 1.00x | - | - |")


def test_decode_profile_refuses_a_width_outside_zero_one():
    done = subprocess.run([sys.executable, str(BENCH / "decode_profile.py"), "--mlp", "0.75,1.5"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--mlp 0.75,1.5: comma-separated widths between 0 and 1" in done.stderr.strip().splitlines()[-1]


def test_decode_profile_refuses_a_results_name_that_is_not_a_file_stem():
    results = BENCH / "results"
    before = {p: p.stat().st_mtime_ns for p in results.glob("*")}
    done = subprocess.run([sys.executable, str(BENCH / "decode_profile.py"), "--name", "../elsewhere"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "--name '../elsewhere': letters, digits and underscores, not starting with a digit" in last
    assert {p: p.stat().st_mtime_ns for p in results.glob("*")} == before  # nothing written, here or elsewhere
    assert not (BENCH / "elsewhere.md").exists()
