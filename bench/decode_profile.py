"""Benchmark: where batch-1 decode time goes, per part of the model, and what cutting the MLPs can buy.

For each shape and weight format, the dense model is exported through optimum-intel (NNCF data-free INT8
per channel / INT4 asym group 64, the same as ``optimum-cli export openvino --weight-format``) and run by
the OpenVINO runtime with per-node profiling (``PERF_COUNT``): a 128-token prompt, then greedy decode
steps one token at a time on the stateful model. The executed nodes' real times, summed over the timed
steps, are grouped by the module they come from:

- **LM head** (the vocabulary projection, tied or not) and **embedding** (the token gather);
- **MLP** (gate/up/down projections and the activation): what LoNAS's elastic widths shrink;
- **attention projections** (q/k/v/o) and **attention core** (RoPE, KV-cache reads and writes, SDPA);
- **norms**, and **other** (residual adds, the attention mask, shape arithmetic);
- **outside the graph**: the request's wall time minus the sum of its nodes (the runtime's per-call cost).

From the MLP share the table derives the bound on cutting MLP width: halving every MLP saves at most
half the MLP time, so the speed-up is at most ``1 / (1 - MLP share / 2)``, whatever the accuracy.
``--mlp 0.75`` also profiles each shape with every MLP cut to that width (what LoNAS's extract ships: the
same graph with narrower MLPs), so what a cut buys is measured beside its bound, as the ratio of its wall
time to the dense INT8 IR's of the same shape.
``smollm2-135m`` is the bundled model; other shapes, and every cut, are randomly initialised with the
published shapes (``bench/scale.py``): time does not depend on the weights' values. Compare within one
run only.

    .venv/bin/python bench/decode_profile.py [--shapes smollm2-135m,llama-3.2-1b] [--formats int8,int4]
                                             [--mlp 0.75] [--steps 32] [--repeats 3]

IRs are cached under ``bench/results/decode_profile/``; the profiling reruns every time (each IR in its
own process). Writes ``bench/results/<--name>.{md,json}`` (``decode_profile`` by default). Run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "results"
WORK = OUT / "decode_profile"
PROMPT_TOKENS = 128
PARTS = ("LM head", "embedding", "MLP", "attention projections", "attention core", "norms", "other")


def part_of(node_name: str, node_type: str = "") -> str:
    """The model part an executed node belongs to, from the module path optimum-intel keeps in its name
    (the stateful KV cache's ``Assign`` / ``ReadValue`` nodes by their type)."""
    name = node_name.lower()
    if node_type in ("Assign", "ReadValue"):
        return "attention core"
    if "lm_head" in name:
        return "LM head"
    if "embed_tokens" in name:
        return "embedding"
    if ".mlp." in name or ".mlp/" in name:
        return "MLP"
    if "self_attn" in name:
        if any(f"{p}_proj" in name for p in ("q", "k", "v", "o")) and "matmul" in name:
            return "attention projections"
        return "attention core"
    if "norm" in name:
        return "norms"
    if "rotary" in name or "rope" in name or "past_key_values" in name or "beam_idx" in name:
        return "attention core"
    return "other"


def cut_shape(shape: str, mlp: float) -> dict[str, Any]:
    """``shape``'s dimensions with every MLP at ``mlp`` of its width, in whole 64-channel steps (as
    LoNAS's ``channel_step``)."""
    from scale import SHAPES

    dims = dict(SHAPES[shape])
    dims["intermediate_size"] = max(64, round(dims["intermediate_size"] * mlp / 64) * 64)
    return dims


def built_width(shape: str, mlp: float) -> float:
    """The MLP width a cut to ``mlp`` really has, after rounding to whole steps."""
    from scale import SHAPES

    return cut_shape(shape, mlp)["intermediate_size"] / SHAPES[shape]["intermediate_size"]


def _folder(shape: str, mlp: float) -> Path:
    return WORK / (f"{shape}_mlp{cut_shape(shape, mlp)['intermediate_size']}" if built_width(shape, mlp) < 1 else shape)


def _model(shape: str, mlp: float) -> Path | str:
    if shape == "smollm2-135m" and built_width(shape, mlp) == 1.0:
        return "smollm2-135m"  # the bundled real model
    from scale import make_model

    out = _folder(shape, mlp) / "model"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        make_model(shape, out, cut_shape(shape, mlp))
    return out


def export_ir(shape: str, fmt: str, mlp: float = 1.0) -> Path:
    from nncf_elastic_lora.deploy.export import export_openvino

    out = _folder(shape, mlp) / f"ir_{fmt}"
    if not (out / "openvino_model.xml").exists():
        export_openvino(_model(shape, mlp), out, weight_format=fmt, genai_device=None, overwrite=True)
    return out


def profile_ir(ir: Path, steps: int, warmup: int = 4) -> dict[str, Any]:
    """Per-part node time (ms per decode token, summed over ``steps`` timed steps) and the wall time."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(ir / "openvino_model.xml"), "CPU",
        {"PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"},
    )  # fmt: skip
    req = compiled.create_infer_request()
    names = {p.get_any_name() for p in compiled.inputs}
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 1000, size=(1, PROMPT_TOKENS), dtype=np.int64)

    def feed(tokens: np.ndarray, past: int) -> dict[str, np.ndarray]:
        n = tokens.shape[1]
        inputs = {"input_ids": tokens, "attention_mask": np.ones((1, past + n), dtype=np.int64)}
        if "position_ids" in names:
            inputs["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None]
        if "beam_idx" in names:
            inputs["beam_idx"] = np.zeros(1, dtype=np.int32)
        return inputs

    req.reset_state()
    req.infer(feed(ids, 0))
    past, token = PROMPT_TOKENS, np.array([[int(req.get_tensor("logits").data[0, -1].argmax())]])
    # The CPU plugin's counters are running means over every inference of the request (the prompt's
    # included), so the timed steps' total is the difference of mean x count after and before them.
    walls, before, infers = [], {}, 1
    for step in range(warmup + steps):
        if step == warmup:
            before = _node_totals(req, infers)
        start = time.perf_counter()
        req.infer(feed(token, past))
        if step >= warmup:
            walls.append((time.perf_counter() - start) * 1e3)
        past, infers = past + 1, infers + 1
        token = np.array([[int(req.get_tensor("logits").data[0, -1].argmax())]])
    parts = dict.fromkeys(PARTS, 0.0)
    for key, total in _node_totals(req, infers).items():
        parts[part_of(*key)] += total - before.get(key, 0.0)
    nodes = sum(parts.values())
    per_token = {k: v / steps for k, v in parts.items()}
    wall = statistics.median(walls)
    return {"wall_ms": wall, "nodes_ms": nodes / steps, "parts_ms": per_token,
            "outside_ms": max(0.0, statistics.fmean(walls) - nodes / steps)}  # fmt: skip


def _node_totals(req: Any, infers: int) -> dict[tuple[str, str], float]:
    """Each executed node's total real time in ms over the request's ``infers`` inferences so far."""
    import openvino as ov

    return {
        (i.node_name, i.node_type): i.real_time.total_seconds() * 1e3 * infers
        for i in req.profiling_info
        if i.status == ov.ProfilingInfo.Status.EXECUTED
    }


def _child(ir: Path, steps: int) -> dict[str, Any]:
    """One profile in a fresh process (no other compiled model holding threads or memory)."""
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); from decode_profile import profile_ir; "
        f"from pathlib import Path; print(json.dumps(profile_ir(Path({str(ir)!r}), {steps})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"profiling {ir} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_profile(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = statistics.median
    return {
        "wall_ms": med(r["wall_ms"] for r in runs),
        "wall_ms_runs": [r["wall_ms"] for r in runs],
        "nodes_ms": med(r["nodes_ms"] for r in runs),
        "outside_ms": med(r["outside_ms"] for r in runs),
        "parts_ms": {p: med(r["parts_ms"][p] for r in runs) for p in PARTS},
    }


def mlp_share(profile: dict[str, Any]) -> float:
    return profile["parts_ms"]["MLP"] / (profile["nodes_ms"] + profile["outside_ms"])


def cut_bound(dense: dict[str, Any], mlp: float) -> float:
    """The most cutting every MLP to ``mlp`` of its width can buy over the ``dense`` profile: only the MLP
    time shrinks, in proportion."""
    return 1 / (1 - mlp_share(dense) * (1 - mlp))


def table(results: list[dict[str, Any]]) -> list[str]:
    head = "| shape | MLP width | format | decode ms/token (wall) | " + " | ".join(PARTS) + " | outside the graph | "
    head += ("MLP share | bound: all MLPs halved | bound: MLPs removed | × dense INT8 (wall) | × dense, same format "
             "(wall) | bound of this cut (same format) |")
    lines = [head, "|" + "---|" * (len(PARTS) + 11)]
    dense = {(q["shape"], q["format"]): q["profile"] for q in results if q.get("mlp", 1.0) == 1.0}
    for r in results:
        p, wall = r["profile"], r["profile"]["wall_ms"]
        total = p["nodes_ms"] + p["outside_ms"]
        shares = [f"{p['parts_ms'][k]:.2f} ({p['parts_ms'][k] / total:.0%})" for k in PARTS]
        mlp, width = mlp_share(p), r.get("mlp", 1.0)
        int8, same = dense.get((r["shape"], "int8")), dense.get((r["shape"], r["format"]))
        ratio = f"{int8['wall_ms'] / wall:.2f}x" if int8 else "-"
        own = f"{same['wall_ms'] / wall:.2f}x" if same and width < 1.0 else "-"
        bound = f"{cut_bound(same, width):.2f}x" if same and width < 1.0 else "-"
        lines.append(
            f"| {r['shape']} | {width:.0%} | {r['format'].upper()} | {wall:.2f} | " + " | ".join(shares)
            + f" | {p['outside_ms']:.2f} ({p['outside_ms'] / total:.0%}) | {mlp:.0%} | "
            f"{1 / (1 - mlp / 2):.2f}x | {1 / (1 - mlp):.2f}x | {ratio} | {own} | {bound} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="smollm2-135m,llama-3.2-1b")
    parser.add_argument("--formats", default="int8,int4")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps per profile (after 4 warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="profiles per IR, each in its own process")
    parser.add_argument("--mlp", default="", help="MLP widths to profile beside the dense one, e.g. 0.75,0.5")
    parser.add_argument("--name", default="decode_profile",
                        help="results file stem under bench/results/ (another machine class's profile beside this "
                             "one, e.g. decode_profile_avx2)")  # fmt: skip
    args = parser.parse_args()
    from scale import SHAPES

    shapes, formats = args.shapes.split(","), args.formats.split(",")
    unknown = [s for s in shapes if s not in SHAPES] + [f for f in formats if f not in ("fp32", "fp16", "int8", "int4")]
    if unknown:
        parser.error(f"unknown shape or format {unknown}: shapes {sorted(SHAPES)}, formats fp32, fp16, int8, int4")
    if not args.name.isidentifier():
        parser.error(f"--name {args.name!r}: letters, digits and underscores, not starting with a digit, "
                     "e.g. decode_profile_avx2")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    try:
        cuts = [float(w) for w in args.mlp.split(",") if w]
    except ValueError:
        cuts = [-1.0]
    if not all(0 < w < 1 for w in cuts):
        parser.error(f"--mlp {args.mlp}: comma-separated widths between 0 and 1 (exclusive), e.g. 0.75,0.5")
    from nncf_elastic_lora.runtime import machine_info

    start, results = time.time(), []
    if any(built_width(s, w) == 1.0 for s in shapes for w in cuts):
        parser.error(f"--mlp {args.mlp}: a width rounds to the whole MLP (64-channel steps) on one of {shapes}")
    irs = {(s, w, f): export_ir(s, f, w) for s in shapes for w in (1.0, *cuts) for f in formats}
    for (shape, width, fmt), ir in irs.items():
        runs = [_child(ir, args.steps) for _ in range(args.repeats)]
        results.append({"shape": shape, "mlp": built_width(shape, width), "format": fmt,
                        "profile": _median_profile(runs)})
        print(table(results)[-1], flush=True)
    machine = machine_info()
    cmd = (f".venv/bin/python bench/decode_profile.py --shapes {args.shapes} --formats {args.formats} "
           + (f"--mlp {args.mlp} " if cuts else "") + f"--steps {args.steps} --repeats {args.repeats}"
           + (f" --name {args.name}" if args.name != "decode_profile" else ""))  # fmt: skip
    text = "\n".join([
        "# Where batch-1 decode time goes (OpenVINO CPU, per-node profiling)",
        "",
        f"Command: `{cmd}`; wall time {(time.time() - start) / 60:.0f} min. Machine: {json.dumps(machine)}.",
        f"Each IR: {PROMPT_TOKENS}-token prompt, then {args.steps} timed greedy decode steps (after 4 warm-up), "
        f"median of {args.repeats} processes. Milliseconds per token (share of the wall time); node times are "
        "the runtime's own per-node real times, so they include its per-node scheduling.",
        "The bounds assume nothing but the MLP time shrinks ('bound of this cut': from the dense profile of the "
        "same shape and format, to compare with '× dense, same format'); '× dense INT8': the dense INT8 IR's wall "
        "time over this IR's, same shape, this run (profiling on); MLP width: as built, in 64-channel steps. Speeds from a GenAI pipeline differ (sampling, tokenisation), the shares do not.",
        "",
        *table(results),
        "",
    ])  # fmt: skip
    (OUT / f"{args.name}.md").write_text(text)
    (OUT / f"{args.name}.json").write_text(json.dumps({"command": cmd, "machine": machine, "results": results},
                                                        indent=1))  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
