"""bench/decode_profile.py: node names map to the right model part; bad flags are one clear error."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from decode_profile import part_of  # noqa: E402


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
