"""Benchmark: what a runtime LoRA adapter (OpenVINO GenAI) costs against the merged and the in-graph IR.

One LoRA adapter on SmolLM2-135M-Instruct (the plain alternative's: LoRA at the maximal rank on the dense
model, trained by ``run``'s plain reference on basic_arithmetic, reused from the plain cache or trained
here), shipped three ways at INT8 and at INT4 weights:

- **merged**: the adapter merged into the weights, compressed data-free (``optimum-cli`` style);
- **in-graph**: the base compressed, the adapter an FP32 low-rank branch in the IR (our ``export``);
- **runtime adapter**: the compressed base IR plus a GenAI adapter file (``export-genai``), applied by
  ``LLMPipeline`` in ``MODE_DYNAMIC`` (what lets one base serve many adapters); the base alone beside it.

Each export of a runtime adapter is checked against the in-graph IR (greedy tokens, log-probability per
token). Decode tokens/s at batch 1 and 4 through GenAI, every IR in its own process, two rounds in
alternating order pooled (medians), ratios against the merged IR of the same precision, GenAI's own TPOT
beside ours. Writes bench/results/genai_adapters.{md,json}. Run on an idle machine:

    .venv/bin/python bench/genai_adapters.py [--repeats 5] [--formats int8,int4]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))
from plain import main_cell_config  # noqa: E402

WORK = OUT / "genai_adapters"


def _exports(config, adapter: Path, fmt: str, prompts: list[str]) -> dict[str, tuple[Path, Path | None]]:
    from nncf_elastic_lora.deploy.export import export_openvino
    from nncf_elastic_lora.deploy.genai_adapters import export_genai_adapters

    genai, graph = WORK / f"genai_{fmt}", WORK / f"in_graph_{fmt}"
    if not (genai / "genai_adapters.json").is_file():
        export_genai_adapters(config.model, genai, {"plain": adapter}, weight_format=fmt, check_prompts=prompts,
                              check_tokens=16, overwrite=True)  # fmt: skip
    if not (graph / "export_report.json").is_file():
        export_openvino(config.model, graph, adapter=adapter, weight_format=fmt, genai_device=None, overwrite=True)
    return {"graph": (graph, None), "base": (genai, None),
            "runtime": (genai, genai / "adapters" / "plain.safetensors")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", default="int8,int4")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from nncf_elastic_lora.data import load_task
    from nncf_elastic_lora.deploy.benchmark import benchmark_models
    from nncf_elastic_lora.runtime import machine_info
    from nncf_elastic_lora.stages.plain import plain_reference

    start = time.time()
    config = main_cell_config()
    reference = plain_reference(config, progress=True, score=False)  # the plain LoRA adapter and IRs, from the cache
    adapter = Path(reference["directory"]) / "train" / "sub_adapter_heuristic"
    prompts = [e.prompt for e in load_task(config.data).test[:4]]
    formats = args.formats.split(",")
    models, checks = [], {}
    for fmt in formats:
        paths = _exports(config, adapter, fmt, prompts)
        merged = Path(reference["irs"][fmt]["path"])
        checks[fmt] = json.loads((paths["base"][0] / "genai_adapters.json").read_text())["adapters"][0]["check"]
        models += [(f"merged {fmt}", merged, "genai"), (f"in-graph adapter {fmt}", paths["graph"][0], "genai"),
                   (f"base {fmt} + runtime adapter", *paths["runtime"][:1], "genai", paths["runtime"][1]),
                   (f"base {fmt} alone", paths["base"][0], "genai")]  # fmt: skip
    results = benchmark_models(models, rounds=args.rounds, prompt_tokens=128, new_tokens=64, batch_sizes=[1, 4],
                               repeats=args.repeats, warmup=1)  # fmt: skip
    write(results, checks, formats, args, time.time() - start, machine_info(), adapter)


def write(results, checks, formats, args, wall_s, machine, adapter) -> None:
    from nncf_elastic_lora.outputs import write_json, write_text

    by = {r["label"]: r for r in results}
    lines = [
        "# Runtime LoRA adapters (OpenVINO GenAI) against merged and in-graph IRs: SmolLM2-135M",
        "",
        f"Command: `.venv/bin/python bench/genai_adapters.py --repeats {args.repeats} --formats {args.formats} "
        f"--rounds {args.rounds}`; wall time {wall_s / 60:.0f} min. Machine: {machine.get('cpu')}, "
        f"{machine.get('logical_cores')} logical cores, AVX-512 {machine.get('avx512')}, AMX {machine.get('amx')}, "
        f"OpenVINO {machine.get('openvino')}, GenAI {machine.get('openvino_genai')}.",
        "",
        f"Adapter: `{adapter}` (the plain reference's LoRA at the maximal rank on the dense model). GenAI decode, "
        f"128-token prompts, 64 new tokens, medians of {args.repeats} repeats x {args.rounds} rounds; each IR in its "
        "own process. Ratios: against the merged IR of the same precision, same run.",
        "",
        "| IR | weights MiB | decode tok/s b1 | x merged b1 | decode tok/s b4 | x merged b4 | GenAI TPOT b1 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt in formats:
        merged = {b["batch_size"]: b["decode_tokens_per_s"] for b in by[f"merged {fmt}"]["batches"]}
        for label in (f"merged {fmt}", f"in-graph adapter {fmt}", f"base {fmt} + runtime adapter", f"base {fmt} alone"):
            r = by[label]
            s = {b["batch_size"]: b for b in r["batches"]}
            tpot = s[1].get("genai", {}).get("tpot_ms", {})
            lines.append(
                f"| {label} | {r['weights_bytes'] / 2**20:.1f} | {s[1]['decode_tokens_per_s']:.1f} | "
                f"{s[1]['decode_tokens_per_s'] / merged[1]:.2f} | {s[4]['decode_tokens_per_s']:.1f} | "
                f"{s[4]['decode_tokens_per_s'] / merged[4]:.2f} | "
                f"{tpot.get('mean', float('nan')):.2f} ± {tpot.get('std', float('nan')):.2f} |"
            )
    lines += ["", "Check of each runtime adapter against the in-graph IR (4 test prompts, 16 greedy tokens):", ""]
    for fmt, c in checks.items():
        lines.append(f"- {fmt}: greedy identical on {c['greedy_identical']}/{c['prompts']} prompts, "
                     f"max |Δ log p| per token {c['max_logprob_diff_per_token']:.2e} (tolerance {c['tolerance']})")  # fmt: skip
    write_text(OUT / "genai_adapters.md", "\n".join(lines) + "\n")
    write_json(OUT / "genai_adapters.json", {"machine": machine, "checks": checks, "results": results})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
