"""Benchmark: OpenVINO inference of compressed SmolLM2-135M against the dense FP32 IR, in one run.

Peers, all built here from the bundled SmolLM2-135M:

- IRs: dense FP32, dense INT8 (per-channel, data-free), dense INT4 (asym, group 64, data-aware
  AWQ + scale estimation on basic_arithmetic train texts), Wanda-50% FP32 and Wanda-50% INT8;
- runtimes: OpenVINO GenAI ``LLMPipeline`` (C++ loop) and optimum-intel's Python ``generate``
  on every IR, and PyTorch eager ``generate`` on the dense and sparse checkpoints.

For each: TTFT, decode latency and tokens/s at batch 1 and 4 (medians of --repeats after a warm-up,
each model and runtime in its own process; method in ``nncf_elastic_lora/deploy/benchmark.py``), compile
time, weights on disk, peak RSS; ratios against the dense FP32 IR on GenAI; the IR's agreement with
torch (greedy tokens, f32 hint) and its basic_arithmetic test accuracy from our evaluation on the
IR itself. The physical limit: this machine's memory bandwidth (numpy, threaded read) over the
bytes of weights read per decoded token gives a bound on batch-1 tokens/s; each row reports
its fraction of that bound.

Writes bench/results/inference.json and inference.md. Run on an idle machine:

    .venv/bin/python bench/inference.py [--repeats 3] [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
WORK = OUT / "work"


def ir_variants(sparse_dir: Path) -> dict[str, tuple[str, str, dict]]:
    """label -> (directory name, source model, export.* overrides)."""
    int4 = {"weight_format": "int4", "group_size": 64, "awq": True, "scale_estimation": True}
    return {
        "dense FP32": ("ov-dense-fp32", "smollm2-135m", {"weight_format": "fp32"}),
        "dense INT8": ("ov-dense-int8", "smollm2-135m", {"weight_format": "int8"}),
        "dense INT4 (AWQ+SE)": ("ov-dense-int4", "smollm2-135m", int4),
        "Wanda-50% FP32": ("ov-wanda50-fp32", str(sparse_dir), {"weight_format": "fp32"}),
        "Wanda-50% INT8": ("ov-wanda50-int8", str(sparse_dir), {"weight_format": "int8"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--limit", type=int, default=200, help="test examples for IR accuracy (0: skip)")
    parser.add_argument("--reuse", action="store_true", help="reuse exports already in bench/results/work")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from nncf_elastic_lora.config import PipelineConfig
    from nncf_elastic_lora.deploy.benchmark import (
        bandwidth_fraction,
        benchmark_models,
        measure_memory_bandwidth,
    )
    from nncf_elastic_lora.models import bundled_smollm2_dir, cache_dir, load_model
    from nncf_elastic_lora.outputs import write_json, write_text
    from nncf_elastic_lora.pipeline import evaluate_ir, evaluate_model, export, sparsify
    from nncf_elastic_lora.report.tables import markdown_table
    from nncf_elastic_lora.runtime import machine_info

    start = time.perf_counter()
    base = {
        "data": {"task": "basic_arithmetic"},
        "evaluation": {
            "tasks": ["basic_arithmetic"],
            "limit": args.limit or 1,
            "batch_size": 16,
            "max_new_tokens": 8,
        },
        "export": {"calibration": {"num_samples": 64}, "parity": {"num_prompts": 4, "max_new_tokens": 16}},
    }
    sparse_dir = WORK / "smollm2-wanda50-v2"
    if not (sparse_dir / "report.json").is_file():
        sparsify(
            PipelineConfig.model_validate({**base, "sparsity": {"method": "wanda", "ratio": 0.5}}), sparse_dir
        )
    exports, accuracy = {}, {}
    for label, (name, model, overrides) in ir_variants(sparse_dir).items():
        ir_dir = WORK / name
        config = PipelineConfig.model_validate(
            {**base, "model": {"name_or_path": model}, "export": {**base["export"], **overrides}}
        )
        if not (args.reuse and (ir_dir / "export_report.json").is_file()):
            if ir_dir.exists():
                shutil.rmtree(ir_dir)
            export(config, ir_dir)
        exports[label] = {"dir": ir_dir, "report": json.loads((ir_dir / "export_report.json").read_text())}
        if args.limit:
            (result,) = evaluate_ir(config, ir_dir, progress=False)
            accuracy[label] = result.metrics
    torch_sources = {"dense (torch eager)": "smollm2-135m", "Wanda-50% (torch eager)": str(sparse_dir)}
    if args.limit:
        for label, model in torch_sources.items():
            config = PipelineConfig.model_validate({**base, "model": {"name_or_path": model}})
            m, tok = load_model(config.model)
            (result,) = evaluate_model(m, tok, config, progress=False)
            accuracy[label] = result.metrics
            del m
    dense_dir = bundled_smollm2_dir(cache_dir())
    runs = [(label, e["dir"], runtime) for label, e in exports.items() for runtime in ("genai", "optimum")]
    runs += [("dense (torch eager)", dense_dir, "torch"), ("Wanda-50% (torch eager)", sparse_dir, "torch")]
    settings = dict(
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        repeats=args.repeats,
        warmup=1,
    )
    results = benchmark_models(runs, **settings)
    bandwidth = measure_memory_bandwidth()
    reference = next(r for r in results if r["label"] == "dense FP32" and r["runtime"] == "genai")

    def tok_s(r, b):
        return next((x["decode_tokens_per_s"] for x in r["batches"] if x["batch_size"] == b), None)

    sizes = settings["batch_sizes"]
    first = sizes[0]
    headers = [
        "model",
        "runtime",
        "weights (MiB)",
        "compile (s)",
        f"TTFT b{first} (ms)",
        f"decode b{first} (ms/step)",
    ]
    headers += [f"tok/s b{b}" for b in sizes] + [f"× dense FP32 GenAI b{b}" for b in sizes]
    headers += ["% of bandwidth bound b1", "peak RSS (MiB)", "greedy = torch", "acc", "exact match"]
    rows = []
    for r in results:
        b1 = next(x for x in r["batches"] if x["batch_size"] == first)
        label = r["label"]
        parity = exports.get(label, {}).get("report", {}).get("parity")
        agree = None
        if parity:
            key = "greedy_identical_genai" if r["runtime"] == "genai" else "greedy_identical_optimum"
            agree = f"{parity[key]}/{parity['prompts']}"
        fraction = bandwidth_fraction(r, bandwidth["read_gb_s"])
        rows.append(
            [
                label,
                r["runtime"],
                r["weights_bytes"] / 2**20,
                r["compile_s"],
                b1["ttft_ms"],
                b1["decode_ms_per_step"],
                *(tok_s(r, b) for b in sizes),
                *(tok_s(r, b) / tok_s(reference, b) for b in sizes),
                None if fraction is None else 100 * fraction,
                r["peak_rss_mb"],
                agree,
                accuracy.get(label, {}).get("acc"),
                accuracy.get(label, {}).get("exact_match"),
            ]
        )
    machine = machine_info()
    command = "  .venv/bin/python bench/inference.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "reuse"
    )
    text = (
        "# OpenVINO inference: compressed SmolLM2-135M against the dense FP32 IR\n\n"
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, {machine.get('memory_gib')} GiB; "
        f"AMX: {machine['amx']}; OpenVINO {machine['openvino']}, GenAI {machine.get('openvino_genai')}.\n"
        f"Prompt {settings['prompt_tokens']} tokens, {settings['new_tokens']} new tokens, batch sizes {sizes}, "
        f"median of {settings['repeats']} after 1 warm-up; runtime defaults (no properties set), which the "
        "compiled dense FP32 IR reports as "
        + ", ".join(f"{k}={v}" for k, v in reference["effective_properties"].items())
        + "; every generation gets a fresh random prompt (GenAI caches prompt prefixes).\n"
        f"Memory bandwidth (numpy): read {bandwidth['read_gb_s']:.1f} GB/s, copy {bandwidth['copy_gb_s']:.1f} GB/s; "
        "the bound is read bandwidth / bytes of weights per token (the whole weight file is read once per "
        "decode step at batch 1).\n"
        f"Accuracy: basic_arithmetic test, n={args.limit}, evaluated on the IR (OpenVINO rows) or in torch.\n"
        "Greedy = torch: of 4 basic_arithmetic test prompts, how many give the same 16 greedy tokens as "
        "torch (f32 hint).\n\n"
        + markdown_table(headers, rows)
        + f"\nRerun:\n\n{command}\n\nTotal wall time {time.perf_counter() - start:.0f} s.\n"
    )
    write_json(
        OUT / "inference.json",
        {
            "machine": machine,
            "settings": settings,
            "bandwidth": bandwidth,
            "accuracy": accuracy,
            "exports": {k: v["report"] for k, v in exports.items()},
            "results": results,
            "table": {"headers": headers, "rows": rows},
        },
    )
    write_text(OUT / "inference.md", text)
    print(text)


if __name__ == "__main__":
    main()
