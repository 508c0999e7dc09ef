"""Benchmark: LoNAS's Table 1 at our scale (SmolLM2-135M, dense base), against LoRA on the dense model.

Per task (trained on the task's train split, scored on its held-out test split):

- **LoRA (dense)**: plain LoRA (rank 32, no NLS) on the dense model, merged into it;
- **LoNAS heuristic**: MLP channels ordered by importance, NLS over MLP width × LoRA rank (Mode B),
  the heuristic sub-network (the middle width and rank of every group) extracted as a smaller model;
- **LoNAS searched**: NSGA-II on the validation split with cost = decode latency predicted by a latency
  model of this machine (fitted on exported, measured sub-networks; its held-out error is reported),
  the cheapest sub-network on the front at least as good as the heuristic, extracted.

Each model ships as FP32, INT8 and INT4 IRs (optimum-intel + NNCF, data-free). Columns: test accuracy of
the IR, parameters, MACs per token (every linear, the LM head included), IR weights size, GenAI decode
tokens/s at batch 1 and 4, the ratio to the LoRA-merged dense IR of the same precision, and the ratio to
the dense FP32 IR. All IRs are benchmarked together at the end, each in its own process. Every step is
cached under ``bench/results/lonas/`` (rerun to resume).

    .venv/bin/python bench/lonas.py [--tasks basic_arithmetic,piqa] [--steps basic_arithmetic=250,piqa=100]
                                    [--limit 200] [--no-benchmark] [--repeats 3] [--qa]

``--qa`` adds **LoNAS + QA-SparsePEFT**: the ordered model quantized to INT4 (NNCF, asym, group 64), NLS
through its frozen scales, the heuristic sub-network extracted with its merged INT4 codes (INT4 IR only).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from sqft import _cached, _exists, _score, parse_steps  # noqa: E402

OUT = ROOT / "bench" / "results"
WORK = OUT / "lonas"
SPLITS = {"basic_arithmetic": (1000, 100, 200), "piqa": (1000, 100, 200)}
FORMATS = ("fp32", "int8", "int4")
ROWS = ("LoRA (dense)", "LoNAS heuristic", "LoNAS searched")


def config_for(task: str, steps: int, limit: int, *, lora: bool = False, qa: bool = False):
    """``configs/lonas_smollm2.json`` on ``task``; ``lora``: plain LoRA in Mode A on the dense model;
    ``qa``: ``configs/lonas_qa_smollm2.json`` (INT4 base, QA-SparsePEFT)."""
    from nncf_elastic_lora.config import apply_overrides, load_config

    train, val, test = SPLITS[task]
    overrides = [
        f"data.task={task}",
        f'data.splits={{"train": {train}, "validation": {val}, "test": {test}}}',
        f'evaluation.tasks=["{task}"]',
        f"evaluation.limit={limit}",
        f"bootstrapNAS.training.max_steps={steps}",
        "bootstrapNAS.training.save_steps=0",
        "bootstrapNAS.search.algorithm=NSGA2",
        "bootstrapNAS.search.cost=latency",
        "bootstrapNAS.search.metric=loss",
        "bootstrapNAS.search.select=cheapest_above_heuristic",
        "bootstrapNAS.search.num_evals=40",
        f"bootstrapNAS.search.subset_size={val}",
        'bootstrapNAS.search.latency={"weight_format": "int8", "holdout": 3}',
    ]
    if lora:
        overrides += [
            "bootstrapNAS.training.algorithm=lora",
            "bootstrapNAS.elasticity.mode=rank",
            "bootstrapNAS.elasticity.channels=null",
            "bootstrapNAS.search.cost=params",
        ]
    name = "lonas_qa_smollm2" if qa else "lonas_smollm2"
    return apply_overrides(load_config(ROOT / "configs" / f"{name}.json"), overrides)


def at_model(config, path: Path, fmt: str | None = None):
    update = {"model": config.model.model_copy(update={"name_or_path": str(path)})}
    if fmt:
        update["export"] = config.export.model_copy(update={"weight_format": fmt, "merge_adapter": False})
    return config.model_copy(update=update)


def linear_macs(path: Path) -> tuple[int, int]:
    """(parameters, multiply-accumulates per token of every linear incl. the LM head) of a checkpoint."""
    from torch import nn

    from nncf_elastic_lora.config import ModelConfig
    from nncf_elastic_lora.models import load_model

    model, _ = load_model(ModelConfig(name_or_path=str(path)))
    params = sum(p.numel() for p in model.parameters())
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return params, macs


def ship(config, model_dir: Path, work: Path, tasks, formats: tuple[str, ...] = FORMATS) -> dict:
    """Export ``model_dir`` at every format and score each IR on the test split (cached)."""
    from nncf_elastic_lora.pipeline import evaluate_ir, export

    params, macs = _cached(work / "size.json", lambda: list(linear_macs(model_dir)))
    irs = {}
    for fmt in formats:
        c, ir = at_model(config, model_dir, fmt), work / f"ir_{fmt}"
        rep = _cached(work / f"export_{fmt}.json", lambda c=c, ir=ir: export(c, ir))
        acc = _cached(
            work / f"eval_ir_{fmt}.json",
            lambda c=c, ir=ir: [r.to_dict() for r in evaluate_ir(c, ir, tasks, False)],
        )
        irs[fmt] = {
            "path": str(ir),
            "bytes": rep["size_bytes"]["model_bin"],
            "acc": _score(acc[0]["metrics"]),
            "parity": rep.get("parity", {}).get("summary"),
        }
    return {"params": params, "macs": macs, "irs": irs}


def lora_dense(task: str, steps: int, limit: int) -> dict:
    from nncf_elastic_lora.pipeline import eval_splits, export, train

    config = config_for(task, steps, limit, lora=True)
    work = WORK / task / "lora_dense"
    report = _cached(work / "train.json", lambda: train(config, work / "nls", resume=True, progress=False))
    merged = work / "merged"
    merge_cfg = config.model_copy(
        update={"export": config.export.model_copy(update={"weight_format": "fp32", "merge_adapter": True})}
    )
    _exists(merged, lambda: export(merge_cfg, work / "merge_ir", work / "nls" / "super_adapter", merged))
    return {
        "row": "LoRA (dense)",
        "train": _train_facts(report),
        **ship(config, merged, work, eval_splits(config)),
    }


def _train_facts(report: dict) -> dict:
    return {k: report.get(k) for k in ("steps", "train_loss", "step_time_median_s", "time_s")}


def lonas(task: str, steps: int, limit: int, latency_model: Path | None) -> tuple[list[dict], Path]:
    from nncf_elastic_lora.pipeline import eval_splits, extract, fit_latency, reorder, search, train

    config = config_for(task, steps, limit)
    work = WORK / task / "lonas"
    ordered = _exists(work / "ordered_model", lambda: reorder(config, work / "ordered_model", False))
    config = at_model(config, ordered)
    tasks = eval_splits(config)
    report = _cached(work / "train.json", lambda: train(config, work / "nls", resume=True, progress=False))
    if latency_model is None:  # one latency model for every task: the sub-networks have the same shapes
        latency_model = work / "latency_model" / "latency_model.json"
        _exists(latency_model, lambda: fit_latency(config, work / "latency_model", False))
    super_adapter = work / "nls" / "super_adapter"
    searched = _cached(
        work / "search.json", lambda: search(config, work / "search", super_adapter, False, latency_model)
    )
    rows = []
    for row, subnet, name in (
        ("LoNAS heuristic", "heuristic", "heuristic"),
        ("LoNAS searched", work / "search" / "sub_adapter", "searched"),
    ):
        out = work / name
        rep = _cached(
            out / "extract.json", lambda o=out, s=subnet: extract(config, o / "model", super_adapter, s)
        )
        rows.append(
            {
                "row": row,
                "train": _train_facts(report),
                "mlp_widths": rep["mlp_widths"],
                "search": {k: searched[k] for k in ("chosen_quality", "chosen_cost", "evaluations_used")}
                if name == "searched"
                else None,
                **ship(config, out / "model", out, tasks),
            }
        )
    return rows, latency_model


def lonas_qa(task: str, steps: int, limit: int) -> dict:
    """LoNAS + QA-SparsePEFT: the ordered model quantized to INT4, NLS through its scales, the heuristic
    sub-network extracted with its merged INT4 codes and shipped as an INT4 IR holding exactly those."""
    from nncf_elastic_lora.pipeline import eval_splits, extract, quantize, train

    config = config_for(task, steps, limit, qa=True)
    ordered = WORK / task / "lonas" / "ordered_model"  # the same calibration orders the channels the same way
    work = WORK / task / "lonas_qa"
    int4 = _exists(
        work / "int4_model", lambda: quantize(at_model(config, ordered), work / "int4_model", False)
    )
    config = at_model(config, int4)
    report = _cached(work / "train.json", lambda: train(config, work / "nls", resume=True, progress=False))
    out = work / "heuristic"
    rep = _cached(
        out / "extract.json",
        lambda: extract(config, out / "model", work / "nls" / "super_adapter", "heuristic"),
    )
    return {
        "row": "LoNAS + QA-SparsePEFT heuristic",
        "train": _train_facts(report),
        "mlp_widths": rep["mlp_widths"],
        **ship(config, out / "model", out, eval_splits(config), formats=("int4",)),
    }


def table(task: str, rows: list[dict], speeds: dict[str, dict]) -> str:
    lora = next(r for r in rows if r["row"] == "LoRA (dense)")
    lines = [
        f"\n### {task}\n",
        "| model | precision | test acc (IR) | params (M) | MACs/token (M) | IR MiB | decode tok/s b1 "
        "| × LoRA dense b1 | decode tok/s b4 | × LoRA dense b4 | × dense FP32 b1 / b4 |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        for fmt in r["irs"]:
            ir = r["irs"][fmt]
            ref = speeds.get(lora["irs"][fmt]["path"], {})
            fp32 = speeds.get(lora["irs"]["fp32"]["path"], {})
            speed = speeds.get(ir["path"], {})
            cols = [
                r["row"] + (f" (MLP {sorted(set(r['mlp_widths']))})" if r.get("mlp_widths") else ""),
                fmt.upper(),
                f"{ir['acc']:.3f}",
                f"{r['params'] / 1e6:.1f}",
                f"{r['macs'] / 1e6:.1f}",
                f"{ir['bytes'] / 2**20:.1f}",
            ]
            for b in ("1", "4"):
                v, base = speed.get(b), ref.get(b)
                cols += [f"{v:.1f}" if v else "-", f"{v / base:.2f}" if v and base else "-"]
            cols.append(
                " / ".join(f"{speed[b] / fp32[b]:.2f}" for b in ("1", "4"))
                if all(speed.get(b) and fp32.get(b) for b in ("1", "4"))
                else "-"
            )
            lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="basic_arithmetic,piqa")
    parser.add_argument("--steps", default="basic_arithmetic=250,piqa=100", help="N, or task=N,...")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--no-benchmark", action="store_true", help="skip the speed measurements")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--qa", action="store_true", help="add LoNAS + QA-SparsePEFT (INT4 base) rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start = time.time()
    tasks = args.tasks.split(",")
    steps = parse_steps(args.steps, tasks)
    results, latency_model = {}, None
    for task in tasks:
        settings = {"steps": steps[task], "limit": args.limit, "splits": SPLITS[task]}
        recorded = _cached(WORK / task / "settings.json", lambda s=settings: s)
        if json.loads(json.dumps(recorded)) != json.loads(json.dumps(settings)):
            raise SystemExit(
                f"{WORK / task} holds results made with {recorded}, not {settings}: move it away"
            )
        logging.info("%s: LoRA on the dense model", task)
        rows = [lora_dense(task, steps[task], args.limit)]
        logging.info("%s: LoNAS", task)
        lonas_rows, latency_model = lonas(task, steps[task], args.limit, latency_model)
        results[task] = rows + lonas_rows
        if args.qa:
            logging.info("%s: LoNAS + QA-SparsePEFT", task)
            results[task].append(lonas_qa(task, steps[task], args.limit))
    speeds: dict[str, dict] = {}
    machine = None
    if not args.no_benchmark:
        from nncf_elastic_lora.deploy.benchmark import benchmark_models
        from nncf_elastic_lora.runtime import machine_info

        # The dense and heuristic IRs have the same shapes in every task: the first task's stand for them.
        models = [
            (f"{task} {r['row']} {fmt}", r["irs"][fmt]["path"], "genai")
            for i, task in enumerate(tasks)
            for r in results[task]
            if i == 0 or r["row"] == "LoNAS searched"
            for fmt in r["irs"]
        ]
        measured = benchmark_models(
            models, batch_sizes=[1, 4], repeats=args.repeats, prompt_tokens=128, new_tokens=64
        )
        by_path = {
            m["model"]: {str(b["batch_size"]): b["decode_tokens_per_s"] for b in m["batches"]}
            for m in measured
        }
        for i, task in enumerate(tasks):
            for r in results[task]:
                for fmt in r["irs"]:
                    path = r["irs"][fmt]["path"]
                    if path not in by_path and i > 0:  # same shapes as the first task's
                        twin = next(x for x in results[tasks[0]] if x["row"] == r["row"])["irs"][fmt]["path"]
                        speeds[path] = by_path[twin]
                    else:
                        speeds[path] = by_path[path]
        machine = machine_info()
    lat = json.loads(Path(latency_model).read_text())
    fit_err, held_err = lat["fit_error"], lat["holdout_error"]
    md = (
        "# LoNAS Table 1 at our scale: SmolLM2-135M, dense base\n\n"
        f"Command: `.venv/bin/python bench/lonas.py --tasks {args.tasks} --steps {args.steps} --limit {args.limit} "
        f"--repeats {args.repeats}{' --qa' if args.qa else ''}`; wall time {(time.time() - start) / 60:.0f} min (cached steps reused).\n"
        + (
            f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, AVX-512 {machine['avx512']}, "
            f"AMX {machine['amx']}, OpenVINO {machine['openvino']}. Speeds: OpenVINO GenAI, 128-token prompt, "
            f"64 new tokens, median of {args.repeats}; the dense and heuristic IRs of later tasks have the first "
            "task's shapes and speeds.\n"
            if machine
            else ""
        )
        + "Training: `configs/lonas_smollm2.json` (LoRA rank 32 on q/k/v/up/down, lr 3e-4, batch 8); LoRA (dense) "
        "trains the same adapter at its full rank without NLS and is merged. The searched sub-network: NSGA-II "
        "(40 evaluations, validation log-likelihood), cost = decode ms/token at batch 1 (INT8) predicted by the "
        f"latency model (ms = {lat['intercept_ms']:.2f} + {lat['ms_per_mparam']:.4f} × MLP weights in millions; "
        f"held-out error {100 * held_err['mean_abs']:.1f} % mean, {100 * held_err['max_abs']:.1f} % max over "
        f"{sum(p['role'] == 'holdout' for p in lat['points'])} random per-layer mixes; leave-one-out "
        f"{100 * fit_err['mean_abs']:.1f} %), the cheapest on the front at least as good as the heuristic.\n"
        "MACs per token: every linear layer, the LM head included. IR weights: optimum-intel, NNCF data-free "
        "INT8 (per channel) / INT4 (asym, group 64).\n"
        + "".join(table(task, results[task], speeds) for task in tasks)
        + "\n"
    )
    (OUT / "lonas.md").write_text(md)
    (OUT / "lonas.json").write_text(
        json.dumps({"results": results, "speeds": speeds, "machine": machine, "latency_model": lat}, indent=1)
    )
    print(md)


if __name__ == "__main__":
    main()
