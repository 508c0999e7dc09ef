"""Benchmark: what the INT4 layout (group size, symmetric or not) costs in decode speed and in accuracy.

OpenVINO's CPU plugin decompresses INT4 weights on the fly at batch 1: the layout decides that work. This
script takes the plain alternative of the main bench cell (LoRA on the dense SmolLM2-135M, basic_arithmetic,
seed 0, from the plain cache: ``bench/plain.py``), merges it and exports it once per layout through
optimum-intel (NNCF data-free, embeddings and LM head INT8 as ``optimum-cli`` does), then

- scores each IR on the test split (accuracy of the plain alternative at that layout), and
- measures GenAI decode tokens/s at batch 1 and 4, every IR once per round, ``--rounds`` rounds in
  alternating order, pooled (``nncf-elastic-lora benchmark --rounds``).

Ratios are to the INT8 IR and to INT4 asymmetric group 64 (the shipped configs' layout) of this run, with
their standard errors from the repeated runs. A layout our INT4 methods train through (FQ-LoRA's
``quantization.sym`` / ``group_size``) recovers accuracy the plain export loses; its speed is the layout's.

    .venv/bin/python bench/int4_layout.py [--layouts int8,int4_g64,int4_g64_sym,int4_g192,int4_g192_sym]
                                          [--rounds 3] [--repeats 3]

IRs are cached under ``bench/results/int4_layout/``. Writes ``bench/results/int4_layout.{md,json}``. Run on an
idle machine; compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "results"
WORK = OUT / "int4_layout"
LAYOUT = re.compile(r"^(int8|int4_g(\d+)(_sym)?)$")
SHIPPED = "int4_g64"  # the shipped configs' INT4 layout: asymmetric, group 64


def parse_layout(name: str) -> dict[str, Any]:
    """``int8`` or ``int4_g<group>[_sym]`` as export settings; ValueError naming the allowed forms."""
    m = LAYOUT.match(name)
    if not m or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(f"layout {name!r}: use int8 or int4_g<group size>[_sym], e.g. int4_g64_sym")
    if m.group(1) == "int8":
        return {"weight_format": "int8"}
    return {"weight_format": "int4", "group_size": int(m.group(2)), "sym": bool(m.group(3))}


def ratio_with_se(a: dict[str, Any], b: dict[str, Any], batch: int) -> tuple[float, float | None]:
    """``a``'s decode speed over ``b``'s at ``batch``, and the ratio's standard error as the verdicts compute it
    (:func:`~nncf_elastic_lora.stages.plain.speedup_stderr`; None without repeated runs)."""
    from nncf_elastic_lora.stages.plain import speedup_stderr

    fa, fb = (next(x for x in r["batches"] if x["batch_size"] == batch) for r in (a, b))
    ratio = fa["decode_tokens_per_s"] / fb["decode_tokens_per_s"]
    se = speedup_stderr([{**a, "label": "a"}, {**b, "label": "b"}], "a", "b", {batch: ratio}).get(batch)
    return ratio, se


def _fmt(pair: tuple[float, float | None]) -> str:
    ratio, se = pair
    return f"{ratio:.2f}" + (f" ± {se:.2f}" if se is not None else "")


def table(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["layout"]: r for r in rows}
    lines = ["| layout | weights (MiB) | test acc | tok/s b1 | tok/s b4 | × INT8 b1 | × INT8 b4 "
             f"| × {SHIPPED} b1 | × {SHIPPED} b4 |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        speed = {x["batch_size"]: x["decode_tokens_per_s"] for x in r["speed"]["batches"]}
        cells = []
        for peer in ("int8", SHIPPED):
            for batch in (1, 4):
                if peer not in by or peer == r["layout"]:  # no peer, or the peer itself
                    cells.append("–" if peer not in by else "1")
                else:
                    cells.append(_fmt(ratio_with_se(r["speed"], by[peer]["speed"], batch)))
        lines.append(f"| {r['layout']} | {r['speed']['weights_bytes'] / 2**20:.1f} | {r['accuracy']:.3f} "
                     f"| {speed[1]:.1f} | {speed[4]:.1f} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", default="int8,int4_g64,int4_g64_sym,int4_g192,int4_g192_sym")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    try:
        settings = {name: parse_layout(name) for name in layouts}
    except ValueError as e:
        parser.error(f"--layouts: {e}")
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")

    from plain import main_cell_config

    from nncf_elastic_lora.deploy.benchmark import benchmark_models
    from nncf_elastic_lora.deploy.export import export_openvino
    from nncf_elastic_lora.runtime import machine_info
    from nncf_elastic_lora.stages.evaluate import eval_splits, evaluate_ir
    from nncf_elastic_lora.stages.plain import plain_config, plain_reference
    from nncf_elastic_lora.stages.ship import primary_score

    start = time.time()
    config = main_cell_config()
    reference = plain_reference(config, progress=False, score=False)  # cached by bench/plain.py's main cell
    adapter = Path(reference["directory"]) / "train" / "sub_adapter_heuristic"
    plain, tasks = plain_config(config), eval_splits(config)
    irs = {}
    for name, s in settings.items():
        irs[name] = WORK / reference["key"] / name  # another plain reference, other IRs
        if not (irs[name] / "openvino_model.xml").exists():
            export_openvino(config.model, irs[name], adapter=adapter, merge_adapter=True, genai_device=None,
                            overwrite=True, **s)  # fmt: skip
    accuracy, scored = {}, 0
    for name, ir in irs.items():
        scores = [r.to_dict() for r in evaluate_ir(plain, ir, tasks, progress=False)]
        accuracy[name] = primary_score(scores, config.data.task)[1]
        scored = next(r["n"] for r in scores if r["task"] == config.data.task)
    b = config.benchmark
    speeds = benchmark_models([(name, ir, "genai") for name, ir in irs.items()], rounds=args.rounds,
                              repeats=args.repeats, batch_sizes=[1, 4], prompt_tokens=b.prompt_tokens,
                              new_tokens=b.new_tokens, warmup=b.warmup)  # fmt: skip
    rows = [{"layout": name, **settings[name], "accuracy": accuracy[name], "speed": speed}
            for name, speed in zip(irs, speeds, strict=True)]  # fmt: skip
    machine = machine_info()
    cmd = f".venv/bin/python bench/int4_layout.py --layouts {args.layouts} --rounds {args.rounds} --repeats {args.repeats}"
    text = "\n".join([
        "# INT4 layouts: decode speed and the plain alternative's accuracy",
        "",
        f"Command: `{cmd}`; wall time {(time.time() - start) / 60:.0f} min. Machine: {json.dumps(machine)}.",
        f"Model: the plain alternative of bench/plain.py's main cell (LoRA on the dense SmolLM2-135M, "
        f"{config.data.task}, seed 0, {config.bootstrapNAS.training.max_steps} steps), merged and exported per "
        f"layout (NNCF data-free; embeddings and LM head INT8). Test accuracy on {scored} "
        f"examples; GenAI decode, {b.prompt_tokens}-token prompt, {b.new_tokens} new tokens, median of "
        f"{args.repeats} runs per round × {args.rounds} rounds in alternating order; ratios ± their standard errors.",
        "",
        *table(rows),
        "",
    ])  # fmt: skip
    (OUT / "int4_layout.md").write_text(text)
    (OUT / "int4_layout.json").write_text(json.dumps({"command": cmd, "machine": machine, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
