"""Benchmark: in-place distillation (the sandwich rule) against plain NLS, on LoNAS sub-networks.

LoNAS Mode B (``configs/lonas_smollm2.json``: MLP channels ordered by importance, NLS over MLP width ×
LoRA rank) on SmolLM2-135M, per seed:

- **NLS**: ``--steps`` steps of plain NLS (one sampled sub-network per step);
- **NLS + distillation, equal wall time**: the sandwich rule (the maximal sub-network on the labels,
  the sampled one on its logits) for as many steps as fit in plain NLS's training time, from the median
  step times of a short probe run and of the plain run;
- **NLS + distillation, equal steps** (``--equal-steps``): the same number of steps as plain NLS.

Each trained super-network is scored in torch on the test split at its maximal, heuristic and minimal
sub-networks and at the sub-network NSGA-II finds on the validation split (cost: MACs, the cheapest on
the front at least as good as the heuristic). A LoNAS sub-network in the super-network computes the
logits of the extracted smaller model (tested), so these are the shipped models' torch accuracies.
Every cell is cached under ``bench/results/distill/`` (rerun to resume).

    .venv/bin/python bench/distill.py [--task basic_arithmetic] [--steps 150] [--seeds 1] [--limit 200]
                                      [--equal-steps]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from lonas import at_model, config_for  # noqa: E402
from sqft import _cached, _exists, _mean_std, _score  # noqa: E402

OUT = ROOT / "bench" / "results"
WORK = OUT / "distill"
SUBNETS = ("maximal", "heuristic", "minimal", "searched")
PROBE_STEPS = 6


def _config(task: str, steps: int, limit: int, seed: int, distill: bool):
    from nncf_elastic_lora.config import apply_overrides

    config = config_for(task, steps, limit)
    overrides = [
        f"bootstrapNAS.training.seed={seed}",
        "bootstrapNAS.training.logging_steps=5",
        "bootstrapNAS.search.cost=macs",
    ]
    if distill:
        overrides.append('bootstrapNAS.training.distillation={"enabled": true}')
    return apply_overrides(config, overrides)


def ordered_model(task: str, limit: int) -> Path:
    """The importance-ordered dense model (the same calibration for every cell)."""
    from nncf_elastic_lora.pipeline import reorder

    out = WORK / task / "ordered_model"
    return _exists(out, lambda: reorder(_config(task, 1, limit, 0, False), out, False))


def train_cell(task: str, steps: int, limit: int, seed: int, distill: bool, name: str) -> dict:
    """Train one super-network, then score its sub-networks on the test split (cached)."""
    from nncf_elastic_lora.pipeline import (
        eval_splits,
        evaluate_subnets,
        load_supernet,
        search,
        subnet_config,
        train,
    )

    config = at_model(_config(task, steps, limit, seed, distill), ordered_model(task, limit))
    kind = "distilled" if distill else "nls"
    work = WORK / task / f"seed{seed}" / f"{kind}-{steps}steps-limit{limit}"
    report = _cached(work / "train.json", lambda: train(config, work / "nls", resume=True, progress=False))
    super_adapter = work / "nls" / "super_adapter"
    searched = _cached(work / "search.json", lambda: search(config, work / "search", super_adapter, False))

    def score() -> dict:
        supernet, tokenizer = load_supernet(config.model, super_adapter)
        subnets = {n: subnet_config(supernet, n) for n in SUBNETS[:3]}
        subnets["searched"] = subnet_config(supernet, work / "search" / "sub_adapter")
        results = evaluate_subnets(supernet, tokenizer, config, subnets, eval_splits(config), False)
        macs = {n: supernet.get_macs_for_active_config(c, include_base=True) for n, c in subnets.items()}
        return {n: {"acc": _score(r[0]["metrics"]), "macs": macs[n]} for n, r in results.items()}

    scores = _cached(work / "scores.json", score)
    return {
        "name": name,
        "seed": seed,
        "steps": report["steps"],
        "time_s": report["time_s"],
        "step_time_median_s": report["step_time_median_s"],
        "final_loss": report["losses"][-1] if report["losses"] else None,
        "search_evaluations": searched.get("evaluations_used"),
        "scores": scores,
    }


def probe_step_time(task: str, limit: int) -> float:
    """The median step time of a short distilled run (what the equal-wall-time step count divides by)."""
    from nncf_elastic_lora.pipeline import train

    config = at_model(_config(task, PROBE_STEPS, limit, 0, True), ordered_model(task, limit))
    work = WORK / task / "probe"
    report = _cached(work / "train.json", lambda: train(config, work / "nls", resume=True, progress=False))
    return report["step_time_median_s"]


def table(cells: list[dict]) -> str:
    names = list(dict.fromkeys(c["name"] for c in cells))
    head = "| training | steps | train time (min) | s/step | " + " | ".join(f"{s} acc" for s in SUBNETS) + " |"
    lines = [head, "|" + "---|" * (4 + len(SUBNETS))]
    for name in names:
        rows = [c for c in cells if c["name"] == name]
        accs = [_mean_std([r["scores"][s]["acc"] for r in rows]) for s in SUBNETS]
        lines.append(
            f"| {name} | {'/'.join(str(r['steps']) for r in rows)} | "
            f"{statistics.mean(r['time_s'] for r in rows) / 60:.1f} | "
            f"{statistics.mean(r['step_time_median_s'] for r in rows):.2f} | " + " | ".join(accs) + " |"
        )
    macs = cells[0]["scores"]
    lines.append("")
    lines.append(
        "MACs per token (M; adapted linears and MLPs, base and adapter), first cell: "
        + ", ".join(f"{s} {macs[s]['macs'] / 1e6:.1f}" for s in SUBNETS)
        + " (the searched sub-network differs per cell)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="basic_arithmetic")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--equal-steps", action="store_true", help="add distillation at plain NLS's step count")
    args = parser.parse_args()
    for flag, value in (("--steps", args.steps), ("--seeds", args.seeds), ("--limit", args.limit)):
        if value < 1:
            parser.error(f"{flag} {value}: must be at least 1")
    start = time.time()
    probe = probe_step_time(args.task, args.limit)
    cells = []
    for seed in range(args.seeds):
        plain = train_cell(args.task, args.steps, args.limit, seed, False, "NLS")
        equal_wall = max(1, round(args.steps * plain["step_time_median_s"] / probe))
        cells.append(plain)
        cells.append(
            train_cell(args.task, equal_wall, args.limit, seed, True, "NLS + distillation, equal wall time")
        )
        if args.equal_steps:
            cells.append(
                train_cell(args.task, args.steps, args.limit, seed, True, "NLS + distillation, equal steps")
            )
    cmd = f".venv/bin/python bench/distill.py --task {args.task} --steps {args.steps} --seeds {args.seeds} " \
          f"--limit {args.limit}" + (" --equal-steps" if args.equal_steps else "")
    text = "\n".join(
        [
            "# In-place distillation (sandwich rule) vs plain NLS: LoNAS sub-networks of SmolLM2-135M",
            "",
            f"Command: `{cmd}`; wall time {(time.time() - start) / 60:.0f} min (cached cells reused).",
            f"Machine: {platform.processor() or platform.machine()}, torch threads as the library sets them. "
            f"Task {args.task}, test split ({args.limit} examples), torch accuracy of each sub-network; "
            f"distilled step time from a {PROBE_STEPS}-step probe: {probe:.2f} s.",
            "",
            table(cells),
            "",
        ]
    )
    (OUT / "distill.md").write_text(text)
    (OUT / "distill.json").write_text(json.dumps({"command": cmd, "probe_step_s": probe, "cells": cells}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
