"""Benchmark: NLS (Shears) against plain LoRA on the same Wanda-50% SmolLM2-135M.

Same sparse base, data, steps, batch and seed for both; plain LoRA is the same training loop with the
maximal (rank-32) adapter fixed. For each task it trains on the task's train split and reports
held-out test accuracy of LoRA and of NLS's maximal, heuristic and minimal sub-adapters, the median
training step time (NLS/LoRA ratio) and peak memory (each training runs in its own process).
Writes bench/results/nls_vs_lora.json and .md.

    .venv/bin/python bench/nls_vs_lora.py [--tasks basic_arithmetic,sst2] [--steps 250] [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
WORK = OUT / "work"
CONFIG = ROOT / "configs" / "shears_smollm2_quick.json"
SPLITS = {"basic_arithmetic": (1000, 50, 200), "sst2": (600, 50, 200), "piqa": (1000, 50, 200)}


def _config(task: str, algorithm: str, steps: int, limit: int):
    from nncf_elastic_lora.config import apply_overrides, load_config

    train, val, test = SPLITS[task]
    return apply_overrides(
        load_config(CONFIG),
        [
            f"data.task={task}",
            f'data.splits={{"train": {train}, "validation": {val}, "test": {test}}}',
            f"bootstrapNAS.training.algorithm={algorithm}",
            f"bootstrapNAS.training.max_steps={steps}",
            "bootstrapNAS.training.save_steps=0",
            f'evaluation.tasks=["{task}"]',
            f"evaluation.limit={limit}",
        ],
    )


def child(task: str, algorithm: str, steps: int, limit: int, base: str) -> dict:
    from nncf_elastic_lora.data import load_task
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.pipeline import build_supernet, eval_splits, evaluate_subnets
    from nncf_elastic_lora.training import train_super_adapter

    config = _config(task, algorithm, steps, limit)
    model_config = config.model.model_copy(update={"name_or_path": base})
    model, tokenizer = load_model(model_config)
    supernet = build_supernet(model, config.bootstrapNAS)
    data = load_task(config.data)
    result, _ = train_super_adapter(
        supernet,
        tokenizer,
        data.train,
        config.bootstrapNAS.training,
        WORK / f"{task}-{algorithm}",
        max_length=config.data.max_length,
        progress=False,
    )
    supernet.save_super_adapter(WORK / f"{task}-{algorithm}" / "super_adapter", base_model=base)
    subnets = ["maximal", "heuristic", "minimal"]
    evals = evaluate_subnets(supernet, tokenizer, config, subnets, eval_splits(config), progress=False)
    return {
        "task": task,
        "algorithm": algorithm,
        "train": {k: v for k, v in result.to_dict().items() if k not in ("step_times_s",)},
        "accuracy": {name: rs[0]["metrics"] for name, rs in evals.items()},
        "n_test": evals["maximal"][0]["n"],
        "adapter_params": {
            n: supernet.get_active_params(getattr(supernet, f"get_{n}_config")()) for n in subnets
        },
        "split": data.record,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="basic_arithmetic,sst2")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--child", nargs=2, metavar=("TASK", "ALGORITHM"), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.limit, args.base)))
        return

    from nncf_elastic_lora.config import load_config
    from nncf_elastic_lora.pipeline import sparsify

    base = WORK / "smollm2-wanda50"
    if not (base / "report.json").is_file():
        print("[bench] sparsifying SmolLM2 with Wanda 50% ...", file=sys.stderr, flush=True)
        sparsify(load_config(CONFIG), base, progress=False)
    rows = []
    start = time.perf_counter()
    for task in args.tasks.split(","):
        for algorithm in ("lora", "nls"):
            print(f"[bench] {task} / {algorithm} ...", file=sys.stderr, flush=True)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    task,
                    algorithm,
                    "--steps",
                    str(args.steps),
                    "--limit",
                    str(args.limit),
                    "--base",
                    str(base),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    sys.path.insert(0, str(ROOT / "bench"))
    from sparsify import machine

    command = f".venv/bin/python bench/nls_vs_lora.py --tasks {args.tasks} --steps {args.steps} --limit {args.limit}"
    result = {"command": command, "machine": machine(), "wall_s": time.perf_counter() - start, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "nls_vs_lora.json").write_text(json.dumps(result, indent=2) + "\n")
    cfg = load_config(CONFIG).bootstrapNAS.training
    lines = [
        "# NLS vs plain LoRA on Wanda-50% SmolLM2-135M",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. Command: `{command}`",
        "",
        f"Both: {args.steps} steps, batch {cfg.per_device_train_batch_size}, lr {cfg.learning_rate}, seed {cfg.seed}, "
        f"rank 32 (NLS widths [32, 24, 16] per group: q/k/v, up, down of each layer), float32. "
        f"Accuracy: held-out test split, n={args.limit} per task (multiple choice `acc`; arithmetic also generative "
        "exact match `em`). LoRA's heuristic/minimal rows truncate the plain LoRA to those ranks without NLS training.",
        "",
        "| task | method | sub-adapter | adapter params | acc | em | median step (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name in ("maximal", "heuristic", "minimal"):
            m = r["accuracy"][name]
            em = f"{m['exact_match']:.3f}" if "exact_match" in m else ""
            lines.append(
                f"| {r['task']} | {r['algorithm']} | {name} | {r['adapter_params'][name]:,} | {m['acc']:.3f} | {em} | "
                f"{r['train']['step_time_median_s']:.2f} | {r['train']['peak_rss_mb']:.0f} |"
            )
    lines.append("")
    for task in args.tasks.split(","):
        lora = next(r for r in rows if r["task"] == task and r["algorithm"] == "lora")
        nls = next(r for r in rows if r["task"] == task and r["algorithm"] == "nls")
        ratio = nls["train"]["step_time_median_s"] / lora["train"]["step_time_median_s"]
        lines.append(
            f"- {task}: step time NLS/LoRA = {ratio:.2f} (medians); final train loss LoRA "
            f"{lora['train']['train_loss']:.3f}, NLS {nls['train']['train_loss']:.3f}"
        )
    (OUT / "nls_vs_lora.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
