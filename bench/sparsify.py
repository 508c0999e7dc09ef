"""Benchmark: Wanda vs magnitude pruning at 50% on the bundled SmolLM2-135M.

Measures, for each method, the wall time and peak memory of pruning, and the held-out test
accuracy (log-likelihood multiple choice) of dense, Wanda-50% and magnitude-50% models on
basic_arithmetic, ARC-Easy and PIQA. Each method runs in its own process so that peak memory
(max RSS) is its own. Writes bench/results/sparsify.json and .md.

    .venv/bin/python bench/sparsify.py [--limit 200] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
TASKS = ["basic_arithmetic", "arc_easy", "piqa"]


def measure(method: str, ratio: float, limit: int) -> dict:
    """Runs in a child process: load, prune (timed), evaluate."""
    import torch

    from nncf_elastic_lora.config import PipelineConfig
    from nncf_elastic_lora.data import load_task
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.pipeline import evaluate_model
    from nncf_elastic_lora.sparsity import calibration_batches, sparsify_model

    config = PipelineConfig.model_validate(
        {
            "evaluation": {"tasks": TASKS, "limit": limit, "batch_size": 16, "max_new_tokens": 8},
            "sparsity": {"method": method if method != "dense" else "none", "ratio": ratio},
        }
    )
    model, tokenizer = load_model(config.model)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row: dict = {
        "method": method,
        "ratio": ratio if method != "dense" else 0.0,
        "torch_threads": torch.get_num_threads(),
    }
    if method != "dense":
        cal = None
        if method == "wanda":
            c = config.sparsity.calibration
            cal = calibration_batches(
                load_task(config.data).train, tokenizer, c.num_samples, c.seq_len, c.seed
            )
        start = time.perf_counter()
        report = sparsify_model(
            model,
            method=method,
            ratio=ratio,
            target_modules=config.sparsity.target_modules,
            calibration=cal,
            progress=False,
        )
        row["prune_time_s"] = time.perf_counter() - start
        row["sparsity"] = report.sparsity
        row["calibration"] = report.calibration
    row["peak_rss_mb_after_load"] = rss_loaded
    row["peak_rss_mb_after_prune"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["prune_extra_peak_mb"] = row["peak_rss_mb_after_prune"] - rss_loaded
    results = evaluate_model(model, tokenizer, config, progress=False)
    row["accuracy"] = {r.task: r.metrics for r in results}
    row["n"] = {r.task: r.n for r in results}
    row["eval_time_s"] = sum(r.time_s for r in results)
    return row


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=200, help="test examples per task")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.ratio, args.limit)))
        return
    rows = []
    for method in ["dense", "wanda", "magnitude"]:
        print(f"[bench] {method} ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                method,
                "--ratio",
                str(args.ratio),
                "--limit",
                str(args.limit),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    command = f".venv/bin/python bench/sparsify.py --limit {args.limit} --ratio {args.ratio}"
    result = {
        "command": command,
        "machine": machine(),
        "torch": torch.__version__,
        "model": "smollm2-135m",
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sparsify.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Sparsification benchmark (SmolLM2-135M-Instruct, ratio {args.ratio})",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; torch {result['torch']}.",
        f"Command: `{command}`",
        "",
        "Accuracy is log-likelihood multiple choice (acc) on each task's held-out test split "
        "(" + ", ".join(f"{t}: n={rows[0]['n'][t]}" for t in TASKS) + ").",
        "",
        "| model | prune time (s) | extra peak RSS (MB) | sparsity | "
        + " | ".join(f"{t} acc" for t in TASKS)
        + " |",
        "|---|---|---|---|" + "---|" * len(TASKS),
    ]
    for r in rows:
        accs = " | ".join(f"{r['accuracy'][t]['acc']:.3f}" for t in TASKS)
        label = "dense" if r["method"] == "dense" else f"{r['method']}-{int(100 * r['ratio'])}%"
        lines.append(
            f"| {label} | {r.get('prune_time_s', 0):.1f} | {r['prune_extra_peak_mb']:.0f} | "
            f"{r.get('sparsity', 0):.3f} | {accs} |"
        )
    (OUT / "sparsify.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
