"""Benchmark: why QA-SparsePEFT learns poorly, and NNCF's own FQ_LORA_NLS path beside it.

On SmolLM2-135M, Wanda 50 % (calibrated on the task's train split) quantized to INT4 (NNCF, asym, group 64),
one task, the same data, batch, steps, warm-up and linear schedule for every row:

- **SQFT**: NLS of a plain LoRA on the INT4 base, heuristic sub-adapter unmerged (the accuracy to reach), at
  3e-4 (the shipped configs' rate) and every ``--lrs``;
- **QA-SparsePEFT, lr X**: NLS through the base's frozen scales and zero points, one row per ``--lrs``;
  ``--base-weights dequantized,float`` adds the rows **on the float weights** (``qa_base_weight: float``: the
  update is added to the weights the INT4 base was quantized from, not to its dequantized ones, under the
  same frozen grid and mask);
- **NNCF FQ_LORA_NLS** on the dense model and on the Wanda-50 % model: ``nncf.compress_weights(...,
  compression_format=FQ_LORA_NLS)``, every INT4 linear's LoRA inside its fake quantiser, the scales
  trained too (at a tenth of the LoRA learning rate, as NNCF's ``downstream_qat_with_nls`` example does),
  one rank per decoder layer sampled per step from the same widths, evaluated at the median rank after
  ``nncf.strip(..., StripFormat.IN_PLACE)``. Its update is not masked: the zeros it loses are counted.

Columns: mean training loss of the last 20 % of steps, torch test accuracy, the share of INT4 codes that
changed from the base's (QA-SparsePEFT's heuristic sub-adapter: what the trained update could express
through frozen scales), and for QA the median |update| in units of the quantisation step (an update
below half a step rounds away). Cells are cached under ``bench/results/qa/`` (rerun to resume).

    .venv/bin/python bench/qa.py [--task basic_arithmetic] [--steps 100] [--lrs 3e-4,1e-3,3e-3] [--limit 200]
                                 [--base-weights dequantized[,float]] [--no-nncf] [--output qa]

Writes ``bench/results/<output>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from sqft import _cached, _score, bases, config_for  # noqa: E402

OUT = ROOT / "bench" / "results"
WORK = OUT / "qa"
WIDTHS = (32, 24, 16)


def _tail_loss(losses: list[float]) -> float:
    tail = losses[-max(1, len(losses) // 5) :]
    return statistics.fmean(tail)


def _row_config(row: str, task: str, steps: int, limit: int, lr: float, base: Path, base_weight: str = "dequantized"):
    from nncf_elastic_lora.config import apply_overrides

    config = config_for(row, task, 0, steps, limit)
    config = apply_overrides(config, [f"bootstrapNAS.training.learning_rate={lr}",
                                      "bootstrapNAS.training.logging_steps=5",
                                      *([f"bootstrapNAS.training.qa_base_weight={base_weight}"]
                                        if base_weight != "dequantized" else [])])  # fmt: skip
    return config.model_copy(update={"model": config.model.model_copy(update={"name_or_path": str(base)})})


def qa_code_stats(supernet) -> dict:
    """Share of INT4 codes the heuristic sub-adapter changed, and the median |Lp| / step at unmasked weights."""
    import torch

    supernet.activate_heuristic_subnet()
    changed = total = 0
    ratios = []
    with torch.no_grad():
        for name, adapter in supernet.adapters.items():
            base = supernet.quantized[name].codes  # the INT4 base's own (on the float weights they are not FQ(W)'s)
            new = adapter.codes()
            changed += int((new != base).sum())
            total += base.numel()
            step = adapter.scale.float().repeat_interleave(adapter.group_size, dim=1)
            rel = (adapter.delta_weight().abs() / step)[adapter.mask]
            ratios.append(rel[torch.randperm(rel.numel(), generator=torch.Generator().manual_seed(0))[:20000]])
    supernet.activate_maximal_subnet()
    return {"codes_changed": changed / total, "median_update_in_steps": float(torch.cat(ratios).median())}


def library_cell(row: str, task: str, steps: int, limit: int, lr: float, base: Path,
                 base_weight: str = "dequantized") -> dict:  # fmt: skip
    """SQFT or QA-SparsePEFT through the library's own stages (train, heuristic sub-adapter, torch score);
    ``base_weight``: QA-SparsePEFT's ``qa_base_weight``."""
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.pipeline import (
        eval_splits,
        evaluate_model,
        evaluate_subnets,
        load_supernet,
        merge,
        train,
    )

    config = _row_config(row, task, steps, limit, lr, base, base_weight)
    label = row if base_weight == "dequantized" else f"{row} on the float weights"
    work = WORK / task / f"{label.replace(' ', '_').replace('+', 'p')}-lr{lr:g}-{steps}steps-limit{limit}"
    report = _cached(work / "train.json", lambda: train(config, work / "nls", resume=True, progress=False))
    tasks = eval_splits(config)
    qa = config.bootstrapNAS.training.adapter_kind == "qa_sparsepeft"

    def score() -> dict:
        if qa:
            merge(config, work / "merged", work / "nls" / "sub_adapter_heuristic", progress=False)
            model, tokenizer = load_model(config.model.model_copy(update={"name_or_path": str(work / "merged")}))
            metrics = evaluate_model(model, tokenizer, config, tasks, False)[0].to_dict()["metrics"]
        else:
            supernet, tokenizer = load_supernet(config.model, work / "nls" / "super_adapter")
            metrics = evaluate_subnets(supernet, tokenizer, config, ["heuristic"], tasks, False)["heuristic"][0][
                "metrics"
            ]
        return {"acc": _score(metrics)}

    scores = _cached(work / "scores.json", score)
    if qa:  # cached on their own: counted against the INT4 base's codes since 2026-12-07 (scores.json may hold older)
        scores |= _cached(work / "codes.json", lambda: qa_code_stats(load_supernet(config.model, work / "nls" / "super_adapter")[0]))
    return {"row": f"{label}, lr {lr:g}", "lr": lr, "steps": report["steps"], "time_s": report["time_s"],
            "tail_loss": _tail_loss(report["losses"]), "losses": report["losses"], **scores}  # fmt: skip


def _nncf_quantizers(model) -> dict[int, list]:
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import AsymmetricLoraNLSQuantizer, SymmetricLoraNLSQuantizer

    layers: dict[int, list] = {}
    for name, module in get_hook_storage(model).named_hooks():
        if isinstance(module, (AsymmetricLoraNLSQuantizer, SymmetricLoraNLSQuantizer)) and module.num_bits == 4:
            layers.setdefault(int(re.search(r"layers:(\d+):", name).group(1)), []).append(module)
    return layers


def _zeros(model) -> float:
    import torch

    n = z = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers." in name:
            n += m.weight.numel()
            z += int((m.weight == 0).sum())
    return z / n


def stale_extension_lock(max_age_s: float = 1800.0) -> Path | None:
    """A torch-extension build lock of NNCF's CPU quantizer left by an aborted build (no library beside it).

    Torch waits on such a lock forever, so the first FQ_LORA_NLS step would hang at 0 % CPU.
    """
    import os

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    for lock in root.glob("*/nncf/quantized_functions_cpu/*/lock"):
        if not list(lock.parent.glob("*.so")) and time.time() - lock.stat().st_mtime > max_age_s:
            return lock
    return None


def nncf_cell(label: str, task: str, steps: int, limit: int, lr: float, base: Path | None) -> dict:
    """NNCF's FQ_LORA_NLS on ``base`` (None: the original dense model), trained on the same rows and schedule."""
    work = WORK / task / f"nncf-{label}-lr{lr:g}-{steps}steps-limit{limit}"

    def run() -> dict:
        import nncf
        import torch
        from nncf.parameters import CompressionFormat, CompressWeightsMode, StripFormat
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters
        from torch.utils.data import DataLoader
        from transformers import get_linear_schedule_with_warmup

        from nncf_elastic_lora.data import load_task
        from nncf_elastic_lora.models import load_model
        from nncf_elastic_lora.pipeline import eval_splits, evaluate_model
        from nncf_elastic_lora.training import PadCollator, tokenize_examples

        config = config_for("SQFT", task, 0, steps, limit)
        if base is not None:
            config = config.model_copy(update={"model": config.model.model_copy(update={"name_or_path": str(base)})})
        t = config.bootstrapNAS.training
        torch.manual_seed(t.seed)
        model, tokenizer = load_model(config.model)
        zeros_before = _zeros(model)
        example = dict(tokenizer("The answer is", return_tensors="pt"))
        model = nncf.compress_weights(
            model,
            mode=CompressWeightsMode.INT4_ASYM,
            group_size=config.quantization.group_size,
            compression_format=CompressionFormat.FQ_LORA_NLS,
            advanced_parameters=AdvancedCompressionParameters(lora_adapter_rank=max(WIDTHS)),
            dataset=nncf.Dataset([example]),
        )
        layers = _nncf_quantizers(model)
        model.requires_grad_(False)
        adapters, scales = [], []
        for q in (q for qs in layers.values() for q in qs):
            q.enable_gradients()
            names = q.get_adapters()
            adapters += list(names.values())
            scales += [p for k, p in q.get_trainable_params().items() if k not in names]
        opt = torch.optim.AdamW([{"params": adapters, "lr": lr}, {"params": scales, "lr": lr / 10}], weight_decay=0.0)
        sched = get_linear_schedule_with_warmup(opt, math.ceil(t.warmup_ratio * steps), steps)
        rows = tokenize_examples(load_task(config.data).train, tokenizer, config.data.max_length)
        loader = DataLoader(rows, batch_size=t.per_device_train_batch_size, shuffle=True,
                            collate_fn=PadCollator(tokenizer.pad_token_id),
                            generator=torch.Generator().manual_seed(t.seed))  # fmt: skip
        losses, it, start = [], iter(loader), time.perf_counter()
        model.train()
        for step in range(steps):
            rng = random.Random(f"{t.seed}-{step}")
            for qs in layers.values():
                rank = rng.choice(WIDTHS)
                for q in qs:
                    q.set_active_rank(rank)
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapters + scales, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        elapsed = time.perf_counter() - start
        model.eval()
        median = sorted(WIDTHS)[len(WIDTHS) // 2]
        for q in (q for qs in layers.values() for q in qs):
            q.set_active_rank(median)
        model = nncf.strip(model, do_copy=False, strip_format=StripFormat.IN_PLACE, example_input=example)
        metrics = evaluate_model(model, tokenizer, config, eval_splits(config), False)[0].to_dict()["metrics"]
        trainable = sum(p.numel() for p in adapters)
        return {"row": f"NNCF FQ_LORA_NLS, {label}, lr {lr:g}", "lr": lr, "steps": steps, "time_s": elapsed,
                "tail_loss": _tail_loss(losses), "losses": losses[::5], "acc": _score(metrics),
                "zeros_before": zeros_before, "zeros_after": _zeros(model), "adapter_params": trainable,
                "quantized_layers": sum(len(qs) for qs in layers.values())}  # fmt: skip

    return _cached(work / "result.json", run)


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(cells: list[dict]) -> str:
    lines = [
        "| row | steps | train min | loss (last 20 %) | test acc (torch) | codes changed | median |Lp| / step | zeros after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        zeros = c.get("zeros_after")
        lines.append(
            f"| {c['row']} | {c['steps']} | {c['time_s'] / 60:.1f} | {c['tail_loss']:.3f} | {c['acc']:.3f} | "
            f"{_fmt(c.get('codes_changed'), '.2%')} | {_fmt(c.get('median_update_in_steps'), '.3f')} | "
            f"{_fmt(zeros, '.1%')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="basic_arithmetic")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="QA-SparsePEFT learning rates")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--no-nncf", action="store_true", help="leave out NNCF's FQ_LORA_NLS rows")
    parser.add_argument("--base-weights", default="dequantized",
                        help="QA-SparsePEFT rows per qa_base_weight, comma-separated: dequantized (SQFT's reference: "
                             "the update is added to the INT4 base's own weights), float (to the weights it was "
                             "quantized from)")
    parser.add_argument("--output", default="qa", help="writes bench/results/OUTPUT.{md,json} (default qa)")
    args = parser.parse_args()
    base_weights = args.base_weights.split(",")
    if not base_weights or any(b not in ("dequantized", "float") for b in base_weights):
        parser.error(f"--base-weights {args.base_weights!r}: give dequantized and/or float, comma-separated")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.output):
        parser.error(f"--output {args.output!r}: a file name stem (letters, digits, _ and -), not a path")
    try:
        lrs = [float(x) for x in args.lrs.split(",")]
    except ValueError:
        parser.error(f"--lrs {args.lrs!r}: give comma-separated numbers, e.g. 3e-4,1e-3")
    if args.steps < 1 or args.limit < 1 or any(lr <= 0 for lr in lrs):
        parser.error("--steps and --limit must be at least 1 and every --lrs value positive")
    lock = None if args.no_nncf else stale_extension_lock()
    if lock:
        parser.error(f"{lock} is left from an aborted build of NNCF's torch extension (no library beside it); "
                     "torch would wait on it forever: delete it, or pass --no-nncf")  # fmt: skip
    start = time.time()
    base = bases(args.task, args.steps, args.limit)
    # SQFT at every learning rate too: QA-SparsePEFT's best rate is not SQFT's default's
    cells = [library_cell("SQFT", args.task, args.steps, args.limit, lr, base["int4"]) for lr in sorted({3e-4, *lrs})]
    cells += [library_cell("SQFT + QA-SparsePEFT", args.task, args.steps, args.limit, lr, base["int4"], b)
              for b in base_weights for lr in lrs]  # fmt: skip
    if not args.no_nncf:
        cells.append(nncf_cell("dense", args.task, args.steps, args.limit, 3e-4, None))
        cells.append(nncf_cell("Wanda 50 %", args.task, args.steps, args.limit, 3e-4, base["sparse"]))
    from nncf_elastic_lora.runtime import machine_info

    cmd = f".venv/bin/python bench/qa.py --task {args.task} --steps {args.steps} --lrs {args.lrs} --limit {args.limit}"
    cmd += "".join(f" --{k} {v}" for k, v, default in (("base-weights", args.base_weights, "dequantized"),
                                                       ("output", args.output, "qa")) if v != default)  # fmt: skip
    text = "\n".join([
        "# QA-SparsePEFT's learning, and NNCF's FQ_LORA_NLS: SmolLM2-135M, Wanda 50 %, INT4 asym group 64",
        "",
        f"Command: `{cmd}`{' --no-nncf' if args.no_nncf else ''}; wall time {(time.time() - start) / 60:.0f} min "
        f"(cached cells reused). Machine: {json.dumps(machine_info())}. Task {args.task}, "
        f"batch 8, warm-up 6 %, linear decay, seed 42, test split ({args.limit} examples), one seed.",
        "",
        table(cells),
        "",
    ])  # fmt: skip
    (OUT / f"{args.output}.md").write_text(text)
    (OUT / f"{args.output}.json").write_text(json.dumps({"command": cmd, "cells": cells}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
