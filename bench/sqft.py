"""Benchmark: SQFT's Table 2 at our scale (SmolLM2-135M, Wanda 50 %), every pipeline on the same bases.

Rows, per task (each trains on the task's train split and is scored on its held-out test split):

- **without tuning**: the Wanda-50 % base as is;
- **LoRA**: plain LoRA (rank 32, no NLS) on the sparse base, shipped unmerged at its maximal rank;
- **Shears**: NLS on the sparse base, heuristic sub-adapter shipped unmerged;
- **SQFT**: NLS on the sparse INT4 base (NNCF), heuristic sub-adapter shipped unmerged;
- **SQFT + SparsePEFT**: masked NLS on the sparse base, merged (the zeros kept), FP32 IR and INT8 IR;
- **SQFT + QA-SparsePEFT**: masked NLS through the INT4 base's frozen scales, merged into INT4.

Columns: test accuracy of the shipped model in torch (mean ± std over seeds), the OpenVINO IR's own
accuracy (first seed), sparsity of the weights that ship (read back from the IR), precision, IR
weights size, GenAI decode tokens/s at batch 1 and 4 and the ratio to the dense FP32 IR of the
original model measured in the same process pool, and the median training step time relative to
LoRA's. Every cell is cached under ``bench/results/sqft/`` (rerun to resume); all IRs are
benchmarked together at the end so the speeds compare.

    .venv/bin/python bench/sqft.py [--tasks basic_arithmetic,piqa] [--seeds 3] [--other-seeds 2]
                                   [--steps basic_arithmetic=250,piqa=100] [--limit 200] [--no-benchmark]

``--steps`` is one number for every task or ``task=N`` per task: piqa's sequences are about three times
basic_arithmetic's and its training loss stops falling after ~100 steps (measured: 4.03, 3.53, 3.42, 3.39,
3.39 at steps 25-125), so it trains for 100.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
WORK = OUT / "sqft"
SPLITS = {"basic_arithmetic": (1000, 50, 200), "piqa": (1000, 50, 200), "arc_easy": (300, 50, 200)}

# row: (config, algorithm, adapter kind, INT4 base, merged, IR weight format, precision shown)
ROWS = {
    "without tuning": ("smollm2_wanda50", None, None, False, False, "fp32", "FP32"),
    "LoRA": ("shears_smollm2_quick", "lora", "lora", False, False, "fp32", "FP32 + FP32 adapter"),
    "Shears": ("shears_smollm2_quick", "nls", "lora", False, False, "fp32", "FP32 + FP32 adapter"),
    "SQFT": ("sqft_smollm2", "nls", "lora", True, False, "int4", "INT4 + FP32 adapter"),
    "SQFT + SparsePEFT": ("sqft_sparsepeft_smollm2", "nls", "sparsepeft", False, True, "fp32", "FP32 merged"),
    "SQFT + QA-SparsePEFT": (
        "sqft_qa_sparsepeft_smollm2",
        "nls",
        "qa_sparsepeft",
        True,
        True,
        "int4",
        "INT4 merged",
    ),
}
# The same SparsePEFT merge shipped with INT8 weights: NNCF compresses the merged, still sparse model.
EXTRA_IRS = {"SQFT + SparsePEFT (INT8 IR)": ("SQFT + SparsePEFT", "int8", "INT8 merged")}


def config_for(row: str, task: str, seed: int, steps: int, limit: int):
    from nncf_elastic_lora.config import apply_overrides, load_config

    name, algorithm, kind, _, _, fmt, _ = ROWS[row]
    train, val, test = SPLITS[task]
    overrides = [
        f"data.task={task}",
        f'data.splits={{"train": {train}, "validation": {val}, "test": {test}}}',
        f'evaluation.tasks=["{task}"]',
        f"evaluation.limit={limit}",
        f'export.weight_format="{fmt}"',
        "export.enabled=true",
        "export.merge_adapter=false",
        f"bootstrapNAS.training.seed={seed}",
        f"bootstrapNAS.training.max_steps={steps}",
        "bootstrapNAS.training.save_steps=0",
        'bootstrapNAS.search.algorithm="heuristic"',
    ]
    if algorithm:
        overrides += [
            f"bootstrapNAS.training.algorithm={algorithm}",
            f'bootstrapNAS.training.adapter_kind="{kind}"',
        ]
    return apply_overrides(load_config(ROOT / "configs" / f"{name}.json"), overrides)


def parse_steps(text: str, tasks: list[str]) -> dict[str, int]:
    """``"250"`` (every task) or ``"task=N,..."`` naming every task."""
    if "=" not in text:
        return dict.fromkeys(tasks, int(text))
    steps = {k.strip(): int(v) for k, v in (item.split("=", 1) for item in text.split(","))}
    missing = [t for t in tasks if t not in steps]
    if missing:
        raise SystemExit(f"--steps {text!r} names no step count for {missing}")
    return {t: steps[t] for t in tasks}


def _cached(path: Path, make):
    if path.is_file():
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def _exists(path: Path, make) -> Path:
    if not path.exists():
        make()
    return path


def bases(task: str, steps: int, limit: int) -> dict[str, Path]:
    """The Wanda-50 % base (calibrated on the task's train split) and its INT4 version, made once."""
    from nncf_elastic_lora.pipeline import quantize, sparsify

    config = config_for("SQFT", task, 0, steps, limit)
    sparse = _exists(
        WORK / task / "sparse_model", lambda: sparsify(config, WORK / task / "sparse_model", False)
    )
    at_sparse = config.model_copy(
        update={"model": config.model.model_copy(update={"name_or_path": str(sparse)})}
    )
    int4 = _exists(WORK / task / "int4_model", lambda: quantize(at_sparse, WORK / task / "int4_model", False))
    return {"sparse": sparse, "int4": int4}


def cell(
    row: str, task: str, seed: int, steps: int, limit: int, base: dict[str, Path], with_ir: bool
) -> dict:
    """Train (unless without tuning), merge where the method merges, score in torch; export + score the IR."""
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.pipeline import (
        eval_splits,
        evaluate_ir,
        evaluate_model,
        evaluate_subnets,
        export,
        load_supernet,
        merge,
        train,
    )

    _, algorithm, _, int4, merged, _, _ = ROWS[row]
    config = config_for(row, task, seed, steps, limit)
    base_model = config.model.model_copy(update={"name_or_path": str(base["int4" if int4 else "sparse"])})
    config = config.model_copy(update={"model": base_model})
    tasks = eval_splits(config)
    work = WORK / task / row.replace(" ", "_").replace("+", "p") / f"seed{seed}"
    result: dict = {"row": row, "task": task, "seed": seed}
    adapter = shipped = None
    if algorithm:
        report = _cached(
            work / "train.json", lambda: train(config, work / "nls", resume=True, progress=False)
        )
        result["step_time_median_s"] = report["step_time_median_s"]
        result["steps"] = report["steps"]
        # Plain LoRA is trained at its maximal rank only: ship and score that (the super-adapter folder
        # is a stock peft LoRA at the maximal rank); NLS rows ship the heuristic sub-adapter.
        subnet = "maximal" if algorithm == "lora" else "heuristic"
        adapter = work / "nls" / ("super_adapter" if algorithm == "lora" else "sub_adapter_heuristic")
        if merged:
            _cached(work / "merge.json", lambda: merge(config, work / "merged", adapter, progress=False))
            shipped = config.model.model_copy(update={"name_or_path": str(work / "merged")})

    def score_torch():
        if algorithm and not merged:
            supernet, tokenizer = load_supernet(base_model, work / "nls" / "super_adapter")
            return evaluate_subnets(supernet, tokenizer, config, [subnet], tasks, False)[subnet]
        model, tokenizer = load_model(shipped or base_model)
        return [r.to_dict() for r in evaluate_model(model, tokenizer, config, tasks, False)]

    result["torch"] = _cached(work / "eval_torch.json", score_torch)[0]["metrics"]
    if with_ir:
        irs = {row: config}
        irs.update({extra: None for extra, (source, _, _) in EXTRA_IRS.items() if source == row})
        result["irs"] = {}
        for label in irs:
            fmt = EXTRA_IRS[label][1] if label in EXTRA_IRS else ROWS[row][5]
            ex_config = config.model_copy(
                update={"export": config.export.model_copy(update={"weight_format": fmt})}
            )
            if shipped is not None:
                ex_config = ex_config.model_copy(update={"model": shipped})
            ir = work / f"ir_{fmt}"
            rep = _cached(
                work / f"export_{fmt}.json",
                lambda c=ex_config, d=ir: export(c, d, None if merged else adapter),
            )
            acc = _cached(
                work / f"eval_ir_{fmt}.json",
                lambda c=ex_config, d=ir: [r.to_dict() for r in evaluate_ir(c, d, tasks, False)],
            )
            result["irs"][label] = {
                "path": str(ir),
                "weight_format": fmt,
                "ir_sparsity": rep.get("ir_sparsity"),
                "bytes": rep["size_bytes"]["model_bin"],
                "parity": rep.get("parity"),
                "metrics": acc[0]["metrics"],
            }
    return result


def dense_reference(task: str, steps: int, limit: int) -> dict:
    from nncf_elastic_lora.pipeline import eval_splits, evaluate_ir, export

    config = config_for("without tuning", task, 0, steps, limit)
    ir = WORK / "dense_fp32_ir"
    rep = _cached(WORK / "dense_fp32_export.json", lambda: export(config, ir, None))
    acc = _cached(
        WORK / task / "dense_fp32_eval.json",
        lambda: [r.to_dict() for r in evaluate_ir(config, ir, eval_splits(config), False)],
    )
    return {"path": str(ir), "bytes": rep["size_bytes"]["model_bin"], "metrics": acc[0]["metrics"]}


def _score(metrics: dict) -> float:
    return metrics.get("acc", metrics.get("exact_match"))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)})"


def table(cells: list[dict], refs: dict[str, dict], speeds: dict[str, dict]) -> str:
    ref_speed = speeds.get("dense FP32 IR", {})
    lines = []
    for task in dict.fromkeys(c["task"] for c in cells):
        lora_step = statistics.median(
            [c["step_time_median_s"] for c in cells if c["row"] == "LoRA" and c["task"] == task]
            or [float("nan")]
        )
        trained = [c["steps"] for c in cells if c["task"] == task and "steps" in c]
        ref = refs[task]
        lines.append(
            f"\n### {task} (dense FP32 IR: accuracy {_score(ref['metrics']):.3f}; "
            f"{max(trained, default=0)} training steps)\n"
        )
        lines.append(
            "| method | test acc (torch, mean ± std) | IR acc (seed 0) | sparsity shipped | precision | IR MiB "
            "| decode tok/s b1 | × dense b1 | decode tok/s b4 | × dense b4 | step time × LoRA |"
        )
        lines.append("|" + "---|" * 11)
        for row, spec in ROWS.items():
            group = [c for c in cells if c["task"] == task and c["row"] == row]
            if not group:
                continue
            first = next((c for c in group if "irs" in c), None)
            labels = [row] + [e for e, (src, _, _) in EXTRA_IRS.items() if src == row]
            for label in labels:
                ir = (first or {}).get("irs", {}).get(label)
                precision = EXTRA_IRS[label][2] if label in EXTRA_IRS else spec[6]
                speed = speeds.get(label, {})
                steps = [c["step_time_median_s"] for c in group if "step_time_median_s" in c]
                cols = [
                    label,
                    _mean_std([_score(c["torch"]) for c in group]) if label == row else "(same adapter)",
                    f"{_score(ir['metrics']):.3f}" if ir else "-",
                    f"{100 * ir['ir_sparsity']:.1f}%" if ir and ir.get("ir_sparsity") is not None else "-",
                    precision,
                    f"{ir['bytes'] / 2**20:.0f}" if ir else "-",
                ]
                for b in ("1", "4"):
                    v, r = speed.get(b), ref_speed.get(b)
                    cols += [f"{v:.1f}" if v else "-", f"{v / r:.2f}" if v and r else "-"]
                cols.append(
                    f"{statistics.median(steps) / lora_step:.2f}" if steps and lora_step == lora_step else "-"
                )
                lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="basic_arithmetic,piqa")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for LoRA and Shears")
    parser.add_argument("--other-seeds", type=int, default=2, help="seeds for the SQFT rows")
    parser.add_argument(
        "--steps", default="basic_arithmetic=250,piqa=100", help="N, or task=N,... (training steps per task)"
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--no-benchmark", action="store_true", help="skip the speed measurements")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="tabulate the cells already computed (their seed counts shown) instead of computing missing ones",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--reuse-speeds",
        metavar="JSON",
        help="take the speeds (and machine) from this earlier sqft.json instead of measuring: the IRs measured "
        "are the seed-0 ones, cached, so they are the same files",
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.time()
    tasks = args.tasks.split(",")
    steps = parse_steps(args.steps, tasks)
    cells, refs, base = [], {}, {}
    for task in tasks:
        # Cached cells are only valid for the training and evaluation settings they were made with.
        settings = {"steps": steps[task], "limit": args.limit}
        recorded = _cached(WORK / task / "settings.json", lambda s=settings: s)
        if recorded != settings:
            raise SystemExit(
                f"{WORK / task} holds cells made with {recorded}, not {settings}: move it away or match them"
            )
        base[task] = bases(task, steps[task], args.limit)
        refs[task] = dense_reference(task, steps[task], args.limit)
    # Seed 0 of every row of every task first, so a partial run already covers the table.
    for seed in range(max(args.seeds, args.other_seeds)):
        for task in tasks:
            for row in ROWS:
                if ROWS[row][1] is None and seed > 0:
                    continue  # nothing is trained: no seed to vary
                if seed >= (args.seeds if row in ("LoRA", "Shears") else args.other_seeds):
                    continue
                path = WORK / task / "cells" / f"{row.replace(' ', '_')}_seed{seed}.json"
                if args.cached_only and not path.is_file():
                    continue
                logging.info("cell %s / %s / seed %d", task, row, seed)
                cells.append(
                    _cached(
                        path,
                        lambda r=row, s=seed, t=task, b=base[task]: cell(
                            r, t, s, steps[t], args.limit, b, s == 0
                        ),
                    )
                )
    speeds: dict[str, dict] = {}
    machine, measured_at, reused = None, None, False
    if args.reuse_speeds:
        source = Path(args.reuse_speeds)
        if not source.is_file():
            raise SystemExit(f"--reuse-speeds {source}: no such file (an sqft.json written by this script)")
        previous = json.loads(source.read_text())
        if not previous.get("speeds"):
            raise SystemExit(f"--reuse-speeds {source}: it holds no speeds (written with --no-benchmark?)")
        speeds, machine = previous["speeds"], previous["machine"]
        measured_at, reused = previous.get("speeds_measured_at"), True
    elif not args.no_benchmark:
        from nncf_elastic_lora.deploy.benchmark import benchmark_models
        from nncf_elastic_lora.runtime import machine_info

        models = [("dense FP32 IR", refs[tasks[0]]["path"], "genai")]
        first_task = [c for c in cells if c["task"] == tasks[0] and "irs" in c]
        models += [(label, ir["path"], "genai") for c in first_task for label, ir in c["irs"].items()]
        results = benchmark_models(
            models, batch_sizes=[1, 4], repeats=args.repeats, prompt_tokens=128, new_tokens=64
        )
        speeds = {
            r["label"]: {str(b["batch_size"]): b["decode_tokens_per_s"] for b in r["batches"]}
            for r in results
        }
        machine = machine_info()
        measured_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = (
        "`.venv/bin/python bench/sqft.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("no_benchmark", "cached_only", "reuse_speeds")
        )
        + "`"
    )
    md = (
        "# SQFT Table 2 at our scale: SmolLM2-135M, Wanda 50 %\n\n"
        f"Command: {command}; wall time {(time.time() - start) / 60:.0f} min (cached cells reused).\n"
        + (
            f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, AVX-512 {machine['avx512']}, "
            f"AMX {machine['amx']}, OpenVINO {machine['openvino']}. Speeds: OpenVINO GenAI, 128-token prompt, 64 new "
            f"tokens, median of {args.repeats}, speeds of the first task's IRs (the IRs of other tasks have the "
            "same shapes)"
            + (
                f"; speeds reused from an earlier run of this script on the same seed-0 IRs"
                f"{f' (measured {measured_at})' if measured_at else ''} (`--reuse-speeds`)"
                if reused
                else f"; measured {measured_at}"
            )
            + ".\n"
            if machine
            else ""
        )
        + "Training: heuristic sub-adapter of NLS (LoRA: its rank-32 adapter) after the stated steps, batch 8, "
        "lr 3e-4; torch accuracy of what ships (unmerged: the sub-network; merged: the merged checkpoint).\n"
        "Step time × LoRA: the median in-training step time of a row's cells over LoRA's on the same task. Cells "
        "that trained while other jobs shared the cores distort it; `bench/sqft_step.py` measures the step times "
        "under control (one process, same batches).\n"
        + (f"Cells computed so far (`--cached-only`): {len(cells)}.\n" if args.cached_only else "")
        + table(cells, refs, speeds)
        + "\n"
    )
    (OUT / "sqft.md").write_text(md)
    (OUT / "sqft.json").write_text(
        json.dumps(
            {
                "cells": cells,
                "references": refs,
                "speeds": speeds,
                "machine": machine,
                "speeds_measured_at": measured_at,
            },
            indent=1,
        )
    )
    print(md)


if __name__ == "__main__":
    main()
