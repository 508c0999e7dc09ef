"""Benchmark: every artifact the package ships against the plain alternative, measured in the same run.

The plain alternative is what a user without this package does: LoRA on the dense model with peft,
merged, exported like ``optimum-cli export openvino --weight-format int8`` (or ``int4``). Every `run`
already trains it (from the plain cache when its inputs were seen), evaluates it on the same test split
and benchmarks it beside the shipped IR; this script runs `run` itself per recipe × task × seed and
collects those rows from each ``report.json``:

- **SQFT + SparsePEFT, INT8**: ``configs/sqft_sparsepeft_smollm2.json`` (Wanda 50 %, masked NLS, merged);
- **SQFT + QA-SparsePEFT, INT4**: ``configs/sqft_qa_sparsepeft_smollm2.json`` (merged into the INT4 codes);
- **FQ-LoRA, INT4**: ``configs/fq_lora_smollm2.json`` (NNCF's FQ+LoRA on the dense model: the INT4 scales
  train with the elastic adapter; merged into INT4 codes under the trained scales); **FQ-LoRA all linears**:
  the same with every decoder linear adapted (o_proj and gate_proj too, as NNCF's example does), and so
  every INT4 scale trained; its plain LoRA adapts all seven linears as well; **FQ-LoRA fixed rank**: no NLS,
  the rank-32 adapter trained alone (NNCF's FQ_LORA without the elastic rank), as the plain LoRA is trained;
  **FQ-LoRA g192**: on an INT4 base of 192-channel groups, which OpenVINO's CPU plugin decoded slightly faster
  than groups of 64 at batch 1 (``bench/int4_layout.py``); the plain INT4 peer stays at group 64;
- **LoNAS heuristic** and **LoNAS searched** (NSGA-II on MACs, select ``cheapest_above_plain``: the cheapest
  sub-network whose validation loss is no worse than the plain LoRA's), each with and without in-place
  distillation, at INT8 and INT4: ``configs/lonas_smollm2.json`` with the overrides named in the table (the
  searched and INT4 cells start from the finished training of their heuristic recipe);
- **LoNAS + FQ-LoRA heuristic, INT4**: ``configs/lonas_fq_lora_smollm2.json`` (channels ordered, INT4 base, NLS
  over MLP widths × ranks through FQ(W + s·BA) with training scales; the heuristic sub-network, MLPs at 75 %,
  extracted as INT4 codes under the trained scales); **searched**: NSGA-II, select ``auto`` (the cheapest
  sub-network at least as good as the plain LoRA on validation, the plain LoRA there rounded to the run's INT4
  grid as every candidate is).

Every recipe keeps the shipped configs' data, learning rate, rank and batch (the untuned baselines are not
evaluated, and one dense INT8 IR is the benchmark's reference: the table needs neither); seeds change the training
seed (the splits stay, so accuracy differences pair example by example); ``--steps`` sets the steps per
task for the recipes and the plain alternative alike. The plain exports are INT8 and INT4 in every run,
so each artifact has its peer of the same precision.

Columns: test accuracy of the shipped IR and of the plain IR of the same precision (mean ± std over
seeds), the mean paired difference, IR weights MiB, GenAI decode tokens/s at batch 1 and 4, and the
ratio to the plain IR of the same precision (mean over seeds of the ratio measured in each run). Goal of
issue 21: a row at ≥ 1.25× the plain alternative's batch-1 speed with accuracy not below it.

    .venv/bin/python bench/plain.py [--tasks basic_arithmetic,piqa] [--seeds 3]
                                    [--steps basic_arithmetic=250,piqa=100] [--recipes all]
                                    [--interleaved ROUNDS [--speed-seed 0]] [--report-only]

Each run lives in ``bench/results/plain/<task>/<recipe>/seed<k>/`` and resumes (rerun to continue);
a cell that has no report yet is shown as not run, unless the committed ``plain.json`` holds its row (a fresh
clone has no run folders): that row is shown again, counted as "kept" in the seeds column. Writes ``bench/results/plain.{md,json}``.
Run on an idle machine: the speeds are measured inside each run.

In-run ratios carry the drift of a shared machine between one IR's turn and the next (same-shape INT8 IRs have
read 0.87-1.26x each other within a run). ``--interleaved ROUNDS`` therefore also measures, per task, the shipped
IR of every finished seed-``--speed-seed`` cell together with the plain INT8 and INT4 IRs it was compared with,
in one benchmark: every IR once per round, in reverse order every other round, pooled over ROUNDS rounds
(``nncf-elastic-lora benchmark --rounds``). The table's "interleaved" columns read that pass; it is kept in
``bench/results/plain/<task>/interleaved_seed<k>.json`` and measured again only when its set of IRs (or an IR's
weights) changes, so run it once the cells are done, on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from sqft import _mean_std, parse_steps  # noqa: E402

from nncf_elastic_lora.runtime import machine_class  # noqa: E402

OUT = ROOT / "bench" / "results"
WORK = OUT / "plain"
LONAS = "lonas_smollm2"
# every decoder linear adapted (and, for FQ-LoRA, every INT4 scale trained), the plain LoRA too
ALL_LINEARS = ('bootstrapNAS.training.target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", '
               '"up_proj", "down_proj"]')  # fmt: skip
ALL_LINEAR_GROUPS = ('bootstrapNAS.elasticity.width.overwrite_groups=[["model.layers.{*}.self_attn.q_proj", '
                     '"model.layers.{*}.self_attn.k_proj", "model.layers.{*}.self_attn.v_proj", '
                     '"model.layers.{*}.self_attn.o_proj"], ["model.layers.{*}.mlp.gate_proj", '
                     '"model.layers.{*}.mlp.up_proj"], ["model.layers.{*}.mlp.down_proj"]]')  # fmt: skip
SEARCHED = ["bootstrapNAS.search.algorithm=NSGA2", "bootstrapNAS.search.select=cheapest_above_plain"]
DISTILL = "bootstrapNAS.training.distillation.enabled=true"
INT4 = "export.weight_format=int4"
# label -> (config, overrides, shipped precision)
# (in the order they run and the tables list them: the previous main job, the INT4 adapters, then LoNAS, each
# variant beside the one it varies, so a recipe that shares training runs after the one it shares it with)
RECIPES: dict[str, tuple[str, list[str], str]] = {
    "SQFT + SparsePEFT": ("sqft_sparsepeft_smollm2", [], "int8"),
    "FQ-LoRA": ("fq_lora_smollm2", [], "int4"),
    # INT4 groups of 192 channels (a divisor of both SmolLM2 widths, 576 and 1536): fewer scales to apply per
    # decoded token; plain exports at batch 1: 1.25-1.27x INT8, 1.07-1.08x group 64 (about 2 standard errors),
    # a tie at batch 4 (bench/results/int4_layout.md)
    "FQ-LoRA g192": ("fq_lora_smollm2", ["quantization.group_size=192"], "int4"),
    "FQ-LoRA all linears": ("fq_lora_smollm2", [ALL_LINEARS, ALL_LINEAR_GROUPS], "int4"),
    "FQ-LoRA fixed rank": ("fq_lora_smollm2", ["bootstrapNAS.training.algorithm=lora",
                                               'bootstrapNAS.elasticity.width={"default_widths": [32]}'], "int4"),
    "SQFT + QA-SparsePEFT": ("sqft_qa_sparsepeft_smollm2", [], "int4"),
    # QA-SparsePEFT's mask inside FQ-LoRA's trainable quantiser: the scales train, the pruned zeros stay
    "SQFT + FQ-SparsePEFT": ("sqft_fq_sparsepeft_smollm2", [], "int4"),
    "LoNAS heuristic": (LONAS, [], "int8"),
    "LoNAS heuristic + distillation": (LONAS, [DISTILL], "int8"),
    "LoNAS heuristic INT4": (LONAS, [INT4], "int4"),
    "LoNAS heuristic + distillation INT4": (LONAS, [DISTILL, INT4], "int4"),
    "LoNAS searched": (LONAS, SEARCHED, "int8"),
    "LoNAS searched + distillation": (LONAS, [DISTILL, *SEARCHED], "int8"),
    "LoNAS searched INT4": (LONAS, [*SEARCHED, INT4], "int4"),
    "LoNAS searched + distillation INT4": (LONAS, [DISTILL, *SEARCHED, INT4], "int4"),
    "LoNAS + FQ-LoRA heuristic": ("lonas_fq_lora_smollm2", [], "int4"),
    # select 'auto' (the default) is 'cheapest_above_plain' under NSGA-II: the cheapest sub-network whose
    # validation loss is no worse than the plain LoRA's
    "LoNAS + FQ-LoRA searched": ("lonas_fq_lora_smollm2", ["bootstrapNAS.search.algorithm=NSGA2"], "int4"),
}
# recipe -> the recipe it differs from only after training (search, export): its cell starts from that
# recipe's finished training of the same task and seed rather than training the same super-network again
SHARES_TRAINING = {
    "LoNAS searched": "LoNAS heuristic",
    "LoNAS heuristic INT4": "LoNAS heuristic",
    "LoNAS + FQ-LoRA searched": "LoNAS + FQ-LoRA heuristic",
    "LoNAS searched INT4": "LoNAS heuristic",
    "LoNAS searched + distillation": "LoNAS heuristic + distillation",
    "LoNAS heuristic + distillation INT4": "LoNAS heuristic + distillation",
    "LoNAS searched + distillation INT4": "LoNAS heuristic + distillation",
}
# what a finished cell no longer needs (the table reads report.json, the interleaved pass the IRs, a cell that shares
# the training its nls/ adapters and bases): checkpoints to resume from, the merged and extracted torch models the
# IR was exported from; about 1 GB a cell
INTERMEDIATES = ("nls/checkpoints", "merged_model", "extracted_model")
# what a run writes up to its training: the stage results and their folders
TRAINING_STAGES = ("sparsify", "quantize_base", "reorder", "train", "eval_subnets", "reference_int8",
                   "eval_reference_int8")  # fmt: skip
TRAINING_DIRS = ("sparse_model", "int4_model", "ordered_model", "nls", "reference")
BASE_SEED = 42
KV_NOTE = ("† The shipped IR carried optimum-intel's float-export mark `KV_CACHE_PRECISION=f16` (exact-codes INT4 "
           "IRs exported before 2026-12-07, night): it ran with an f16 KV cache where the plain IRs used the "
           "runtime's default (u8 on these CPUs), which alone made the same IR 1.07 ± 0.03× faster at batch 1 on "
           "the AVX2 machine (20 paired rounds, docs/benchmarks.md); its speeds and scores are not like for like "
           "with the plain ones'. Exports now drop the mark, as optimum-intel does for the weights it compresses.")


def slug(label: str) -> str:
    return label.lower().replace(" + ", "_").replace(" ", "_")


# The main job's cell (basic_arithmetic, 250 steps, seed 0): other benches reuse its cached plain reference.
MAIN_CELL = ("SQFT + SparsePEFT", "basic_arithmetic", 0, 250)


def main_cell_config():
    """The config of :data:`MAIN_CELL`: its plain reference (LoRA on the dense model) is in the plain cache."""
    return recipe_config(*MAIN_CELL)


def recipe_config(recipe: str, task: str, seed: int, steps: int):
    """The shipped config of ``recipe`` on ``task`` with training seed ``BASE_SEED + seed``."""
    from nncf_elastic_lora.config import apply_overrides, load_config

    name, overrides, _ = RECIPES[recipe]
    config = load_config(ROOT / "configs" / f"{name}.json")
    return apply_overrides(config, [
        f"data.task={task}",
        f'evaluation.tasks=["{task}"]',
        f"bootstrapNAS.training.max_steps={steps}",
        f"bootstrapNAS.training.seed={BASE_SEED + seed}",
        'plain.weight_formats=["int8", "int4"]',
        # the table reads the shipped and plain rows only: skip the untuned models (dense, sparse, INT4 base)
        # and keep one dense reference IR (~7 min a cell)
        "evaluation.baseline=false",
        'benchmark.references=["int8"]',
        *overrides,
    ])  # fmt: skip


def run_cell(recipe: str, task: str, seed: int, steps: int, keep: bool = False) -> dict[str, Any]:
    """One `run` (resumed if interrupted); its report.json. A cell this call finishes loses its
    :data:`INTERMEDIATES` unless ``keep``."""
    from nncf_elastic_lora.pipeline import run_pipeline

    out = WORK / task / slug(recipe) / f"seed{seed}"
    report = out / "report.json"
    config = recipe_config(recipe, task, seed, steps)
    if not report.exists():
        if not out.exists() and recipe in SHARES_TRAINING:
            seed_from_training(WORK / task / slug(SHARES_TRAINING[recipe]) / f"seed{seed}", out, config)
        run_pipeline(config, out, resume=True, progress=False)
        if not keep:
            for name in INTERMEDIATES:
                shutil.rmtree(out / name, ignore_errors=True)
    done = json.loads(report.read_text())
    # a cell finished before the recipe changed (its config file, say) is not this recipe's result
    differ = training_differences(done["config"], config.model_dump(mode="json"))
    if differ:
        raise SystemExit(f"{out}: finished with other {', '.join(differ)} than recipe {recipe!r} now has; move the "
                         "folder away (to keep it) or delete it, and run again")  # fmt: skip
    return done


def training_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The config sections (``model_dump(mode="json")``) that make runs ``a`` and ``b`` train, or measure their
    training, differently: all but the search, the benchmark's settings and the shipped IR's weight format."""
    from nncf_elastic_lora.config import with_added_options
    from nncf_elastic_lora.outputs import config_differences

    after_training = ("bootstrapNAS.search.", "benchmark.", "export.weight_format")
    sections = set()
    # an option added since ``a`` ran holds the value that reproduces what it ran with
    a, b = with_added_options(a), with_added_options(b)
    for key in config_differences(a, b):
        if key.startswith("benchmark.references") or not key.startswith(after_training):
            parts = key.split(".")
            sections.add(".".join(parts[:2]) if parts[0] in ("bootstrapNAS", "benchmark") else parts[0])
    return sorted(sections)


def seed_from_training(source: Path, out: Path, config: Any) -> None:
    """Start ``out`` from the finished run ``source`` when it trained as ``config`` would (hard links: stages
    replace files, never edit them).

    Only a finished ``source`` (its report.json holds its config) whose config differs from ``config`` in the
    search, the benchmark's settings or the shipped weight format alone is used; otherwise the cell trains
    itself. The run then resumes: the copied stages are reused where their input fingerprints still match,
    and the stages after training run anew. An FQ-LoRA base records its float source by path, in
    ``source``: keep that folder while ``out`` is in use (a changed or missing source is an error, not a
    silent fallback).
    """
    import os
    import shutil

    if not (source / "report.json").is_file() or not (source / "stages" / "train.json").is_file():
        return
    differ = training_differences(json.loads((source / "report.json").read_text())["config"],
                                  config.model_dump(mode="json"))  # fmt: skip
    if differ:
        print(f"{out}: training not reused from {source}, which ran with other {', '.join(differ)}", flush=True)
        return
    tmp = out.with_name(out.name + ".seeding")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "stages").mkdir(parents=True)
    for name in TRAINING_STAGES:
        if (source / "stages" / f"{name}.json").is_file():
            os.link(source / "stages" / f"{name}.json", tmp / "stages" / f"{name}.json")
    for name in TRAINING_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, tmp / name, copy_function=os.link)
    tmp.rename(out)
    print(f"{out}: training reused from {source}", flush=True)


def plain_label(row: dict[str, Any]) -> str:
    """``plain INT8 (<plain cache key>)``: recipes whose plain LoRA differs (all linears) have their own peers."""
    fmt = "INT8" if row["label"].endswith("int8 IR") else "INT4"
    return f"plain {fmt} ({Path(row['path']).parent.name})"


def speed_irs(task: str, recipes: list[str], seed: int) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The IRs of the interleaved pass: ``{label: IR folder}`` (each finished seed-``seed`` cell's shipped IR,
    labelled by its recipe, and the plain IRs it was compared with) and ``{recipe: {"INT8"|"INT4": plain label}}``."""
    irs: dict[str, str] = {}
    peers: dict[str, dict[str, str]] = {}
    for recipe in recipes:
        report = WORK / task / slug(recipe) / f"seed{seed}" / "report.json"
        if not report.is_file():
            continue
        for row in json.loads(report.read_text())["benchmark"]["rows"]:
            if row["shipped"]:
                irs[recipe] = row["path"]
            elif row["plain"]:
                label = plain_label(row)
                irs[label] = row["path"]
                peers.setdefault(recipe, {})[label.split()[1]] = label
    return irs, peers


def _fingerprint(irs: dict[str, str]) -> dict[str, list]:
    """Per IR: its folder, and its weights file's size and change time (a re-exported IR is measured anew)."""
    out = {}
    for label, path in irs.items():
        stat = (Path(path) / "openvino_model.bin").stat()
        out[label] = [path, stat.st_size, stat.st_mtime_ns]
    return out


def interleaved_speeds(task: str, irs: dict[str, str], seed: int, rounds: int | None,
                       repeats: int = 3) -> dict[str, Any] | None:  # fmt: skip
    """The interleaved pass over ``irs`` on ``task``: measured when ``rounds`` is given and the kept pass was of
    other IRs or settings; otherwise the kept pass, or None. ``{"irs", "rounds", "repeats", "machine",
    "results": {label: benchmark result}}``."""
    path = WORK / task / f"interleaved_seed{seed}.json"
    kept = json.loads(path.read_text()) if path.is_file() else None
    fingerprint = _fingerprint(irs)
    if rounds is None or not irs:
        if kept is None:
            return None
        # only what was measured of the IRs as they are now: a re-exported IR's old figures are not its own
        same = {label for label, f in kept["irs"].items() if fingerprint.get(label) == f}
        return {**kept, "results": {k: v for k, v in kept["results"].items() if k in same}}
    if kept and (kept["irs"], kept["rounds"], kept["repeats"]) == (fingerprint, rounds, repeats):
        return kept
    from nncf_elastic_lora.deploy.benchmark import benchmark_models
    from nncf_elastic_lora.runtime import machine_info

    print(f"{task}: interleaved benchmark of {len(irs)} IRs, {rounds} rounds x {repeats} runs", flush=True)
    b = recipe_config(*MAIN_CELL).benchmark
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    measured = benchmark_models([(label, ir, "genai") for label, ir in irs.items()], rounds=rounds, repeats=repeats,
                                batch_sizes=[1, 4], prompt_tokens=b.prompt_tokens, new_tokens=b.new_tokens,
                                warmup=b.warmup)  # fmt: skip
    result = {"irs": fingerprint, "seed": seed, "rounds": rounds, "repeats": repeats, "started": started,
              "machine": machine_info(), "results": dict(zip(irs, measured, strict=True))}  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def interleaved_cells(recipe: str, peers: dict[str, str], speeds: dict[str, Any] | None) -> list[str]:
    """The table's interleaved cells of ``recipe``: its batch-1 speed over its plain INT8 and INT4 IRs', ± the
    ratio's standard error, from one pass; ``-`` where the pass did not measure the pair."""
    from int4_layout import ratio_with_se

    results = (speeds or {}).get("results", {})
    cells = []
    for fmt in ("INT8", "INT4"):
        peer = peers.get(fmt)
        if recipe not in results or peer not in results:
            cells.append("-")
            continue
        ratio, se = ratio_with_se(results[recipe], results[peer], 1)
        cells.append(f"{ratio:.2f}" + (f" ± {se:.2f}" if se is not None else ""))
    return cells


def cell_row(report: dict[str, Any], precision: str) -> dict[str, Any]:
    """Shipped and same-precision plain figures from one report."""
    rows = report["benchmark"]["rows"]
    shipped = next(r for r in rows if r["shipped"])
    plain = next(r for r in rows if r["plain"] and r["label"].endswith(f"{precision} IR"))
    verdict = report["plain"]["verdict"] or {}
    speed = {int(b): v for b, v in shipped["decode_tokens_per_s"].items()}
    peer = {int(b): v for b, v in plain["decode_tokens_per_s"].items()}
    return {
        "acc": shipped["score"], "plain_acc": plain["score"], "mib": shipped["weights_bytes"] / 2**20,
        "plain_mib": plain["weights_bytes"] / 2**20, "tok_s": speed, "plain_tok_s": peer,
        "ratio": {b: speed[b] / peer[b] for b in speed if peer.get(b)},
        "difference": verdict.get("difference"), "stderr": verdict.get("stderr"), "verdict": verdict.get("line"),
        "plain_reused": report["plain"]["reused"], "kv_cache": shipped_kv_cache(report, shipped),
        # the verdict's batch-1 ratio where the run paired the two IRs round by round (benchmark.paired_rounds)
        "paired_b1": (verdict.get("speedup") or {}).get("1") if verdict.get("paired_rounds") else None,
        "paired_b1_se": (verdict.get("speedup_stderr") or {}).get("1") if verdict.get("paired_rounds") else None,
        # against the plain export of the other format (an INT4 artifact against plain INT8, and back)
        "other": {fmt: {"plain_acc": v["plain_score"], "difference": v["difference"],
                        "ratio_b1": (v.get("speedup") or {}).get("1"), "paired": bool(v.get("paired_rounds"))}
                  # read from JSON: keys are strings
                  for fmt, v in (report["plain"].get("other_verdicts") or {}).items()},
    }  # fmt: skip


def shipped_kv_cache(report: dict[str, Any], shipped: dict[str, Any]) -> str | None:
    """The KV cache precision the shipped IR asked the runtime for (``"f16"``: optimum-intel's float-export mark,
    which exact-codes INT4 IRs kept until 2026-12-07 while the plain exports had the runtime's default), else
    ``"default"``; None when neither the report nor the IR can tell."""
    from nncf_elastic_lora.deploy.ir import ir_runtime_options

    options = (report.get("export") or {}).get("runtime_options")
    xml = Path(shipped["path"]) / "openvino_model.xml"
    if options is None and xml.is_file():
        options = ir_runtime_options(xml)
    return None if options is None else options.get("KV_CACHE_PRECISION", "default")


def _int_batches(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from JSON, its per-batch figures keyed by int again, as :func:`cell_row` makes them."""
    per_batch = ("tok_s", "plain_tok_s", "ratio")
    return {k: {int(b): x for b, x in v.items()} if k in per_batch else v for k, v in row.items()}


def _other(rows: list[dict[str, Any]]) -> str:
    """``INT8: 0.580 ± 0.010, -0.7, 1.18x`` per other plain format the cells compared with; the batch-1 ratio
    says, as :func:`_b1_ratio` does, how many of its runs paired the two IRs round by round."""
    parts = []
    for fmt in sorted({f for r in rows for f in r.get("other", {})}):
        cells = [r["other"][fmt] for r in rows if fmt in r.get("other", {})]
        timed = [c for c in cells if c["ratio_b1"] is not None]
        parts.append(f"{fmt.upper()}: {_mean_std([c['plain_acc'] for c in cells])}, "
                     f"{_mean([100 * c['difference'] for c in cells], '+.1f')}, "
                     f"{_mean([c['ratio_b1'] for c in timed])}x{_paired_note([c.get('paired') for c in timed])}")  # fmt: skip
    return "; ".join(parts) or "-"


def _b1_ratio(rows: list[dict[str, Any]]) -> str:
    """The mean batch-1 ratio to the plain IR: each run's paired ratio where it measured one, else its pooled
    medians' ratio; says how many rows are paired."""
    mean = _mean([r["paired_b1"] if r.get("paired_b1") is not None else r["ratio"][1] for r in rows])
    return mean + _paired_note([r.get("paired_b1") is not None for r in rows])


def _paired_note(flags: list[bool | None]) -> str:
    """`` (paired)`` when every averaged ratio was paired round by round, `` (1 of 3 paired)`` when some were."""
    paired = sum(bool(f) for f in flags)
    return "" if not paired else " (paired)" if paired == len(flags) else f" ({paired} of {len(flags)} paired)"


def _mean(values: list[float], spec: str = ".2f") -> str:
    return format(statistics.fmean(values), spec) if values else "-"


def table(task: str, cells: dict[str, list[dict[str, Any]]], seeds: int, interleaved: dict[str, list[str]],
          speeds: dict[str, Any] | None = None, machine: str = "") -> list[str]:  # fmt: skip
    """The markdown table of ``task`` on one machine class: ``cells`` holds that machine's rows per recipe,
    ``interleaved`` each recipe's interleaved cells (:func:`interleaved_cells`) from the pass ``speeds``."""
    lines = [
        f"### {task}" + (f" · {machine}" if machine else ""),
        "",
        "| artifact | precision | seeds run | test acc (IR) | plain acc (same precision) | paired diff (points) "
        "| IR MiB (plain) | tok/s b1 | × plain b1 | tok/s b4 | × plain b4 | vs plain of the other format: acc, paired "
        "diff, × b1 | interleaved b1: × plain INT8 | interleaved b1: × plain INT4 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe, rows in cells.items():
        precision = RECIPES[recipe][2].upper()
        if not rows:
            lines.append(f"| {recipe} | {precision} | 0 / {seeds} | not run | | | | | | | | | | |")
            continue
        diffs = [100 * r["difference"] for r in rows if r["difference"] is not None]
        kept, of = sum(bool(r.get("kept")) for r in rows), max(seeds, 1 + max(r["seed"] for r in rows))
        marked = sum(r.get("kv_cache") == "f16" for r in rows)
        precision += "" if not marked else " †" if marked == len(rows) else f" († {marked} of {len(rows)})"
        lines.append(
            f"| {recipe} | {precision} | {len(rows)} / {of}{f' ({kept} kept)' if kept else ''} | "
            f"{_mean_std([r['acc'] for r in rows])} | "
            f"{_mean_std([r['plain_acc'] for r in rows])} | {_mean(diffs, '+.1f')} | "
            f"{_mean([r['mib'] for r in rows], '.1f')} ({_mean([r['plain_mib'] for r in rows], '.1f')}) | "
            f"{_mean([r['tok_s'][1] for r in rows], '.1f')} | {_b1_ratio(rows)} | "
            f"{_mean([r['tok_s'][4] for r in rows if 4 in r['tok_s']], '.1f')} | "
            f"{_mean([r['ratio'][4] for r in rows if 4 in r['ratio']])} | {_other(rows)} | "
            f"{' | '.join(interleaved.get(recipe, ['-', '-']))} |"
        )
    if any(r.get("kv_cache") == "f16" for rows in cells.values() for r in rows):
        lines += ["", KV_NOTE]
    if speeds:
        lines += ["", f"Interleaved: seed-{speeds['seed']} IRs, {speeds['rounds']} rounds × {speeds['repeats']} "
                      f"runs, started {speeds['started']} on {machine_class(speeds['machine'])}."]  # fmt: skip
    return [*lines, ""]


def recipe_rows(task: str, recipe: str, seeds: int, steps: int, kept: list[dict[str, Any]], *, here: str,
                report_only: bool, keep: bool) -> list[dict[str, Any]]:  # fmt: skip
    """``recipe``'s rows on ``task``, one per seed and machine class: from each finished run here (a missing one
    is run unless ``report_only``, or unless ``kept`` holds its seed measured on this machine class, ``here``),
    and the ``kept`` rows (the committed ``plain.json``'s) of the other seeds and machines, marked ``kept``."""
    committed = {(r["seed"], r["machine"]): r for r in kept}
    rows = []
    for seed in range(seeds):
        done = (WORK / task / slug(recipe) / f"seed{seed}" / "report.json").exists()
        if done or not (report_only or (seed, here) in committed):
            report = run_cell(recipe, task, seed, steps, keep=keep)
            rows.append({"seed": seed, "machine": machine_class(report["benchmark"]["machine"]),
                         **cell_row(report, RECIPES[recipe][2])})  # fmt: skip
    fresh = {(r["seed"], r["machine"]) for r in rows}
    rows += [{**_int_batches(r), "kept": True} for key, r in committed.items() if key not in fresh]
    return sorted(rows, key=lambda r: (r["machine"], r["seed"]))


def _as_kept(entry: dict[str, Any]) -> dict[str, Any]:
    """A task's committed results, its rows marked kept and keyed by int batch size again."""
    cells = {recipe: [{**_int_batches(r), "kept": True} for r in rows] for recipe, rows in entry["cells"].items()}
    return {**entry, "cells": cells}


def task_results(task: str, recipes: list[str], args: argparse.Namespace, steps: int, before: dict[str, Any],
                 here: str) -> dict[str, Any]:  # fmt: skip
    """``task``'s entry of plain.json: every recipe's rows (``recipes`` read from their runs, run where missing
    unless --report-only; the others as ``before``, the committed entry, holds them), and one interleaved pass
    per machine class with the cells it gives each recipe."""
    cells = _as_kept(before)["cells"] if before else {}
    for recipe in recipes:
        cells[recipe] = recipe_rows(task, recipe, args.seeds, steps, before.get("cells", {}).get(recipe, []),
                                    here=here, report_only=args.report_only, keep=args.keep_intermediates)  # fmt: skip
    cells = {recipe: cells[recipe] for recipe in RECIPES if recipe in cells}
    irs, peers = speed_irs(task, list(cells), args.speed_seed)
    # one interleaved pass per machine class: this machine's replaces the committed one of its class
    passes, shown = dict(before.get("interleaved", {})), dict(before.get("interleaved_cells", {}))
    speeds = interleaved_speeds(task, irs, args.speed_seed, args.interleaved)
    if speeds:
        label = machine_class(speeds["machine"])
        passes[label] = speeds
        shown[label] = {r: interleaved_cells(r, peers.get(r, {}), speeds) for r in cells}
    return {"cells": cells, "interleaved": passes, "interleaved_cells": shown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="basic_arithmetic,piqa")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", default="basic_arithmetic=250,piqa=100")
    parser.add_argument("--recipes", default="all", help=f"comma-separated, or 'all': {', '.join(RECIPES)}")
    parser.add_argument("--report-only", action="store_true", help="tabulate the runs that finished; run none")
    parser.add_argument("--interleaved", type=int, metavar="ROUNDS",
                        help="also measure the finished cells' IRs of --speed-seed in one interleaved benchmark per "
                             "task, over ROUNDS rounds (kept and reused while its IRs stay the same)")
    parser.add_argument("--speed-seed", type=int, default=0, help="the seed whose IRs --interleaved measures")
    parser.add_argument("--keep-intermediates", action="store_true",
                        help=f"keep a finished cell's {', '.join(INTERMEDIATES)} (deleted by default: ~1 GB a cell)")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    recipes = list(RECIPES) if args.recipes == "all" else args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown {unknown}; choose from {list(RECIPES)} or 'all'")
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: need at least 1")
    if args.interleaved is not None and args.interleaved < 1:
        parser.error(f"--interleaved {args.interleaved}: need at least 1 round")
    if not 0 <= args.speed_seed < args.seeds:
        parser.error(f"--speed-seed {args.speed_seed}: choose one of the seeds run, 0 to {args.seeds - 1}")
    steps = parse_steps(args.steps, tasks)
    committed = json.loads((OUT / "plain.json").read_text())["results"] if (OUT / "plain.json").is_file() else {}
    from nncf_elastic_lora.runtime import machine_info

    here = machine_class(machine_info())
    start = time.time()
    # plain.json accumulates: the tasks and recipes this command does not name keep their committed rows
    results = {task: _as_kept(entry) for task, entry in committed.items()}
    for task in tasks:
        results[task] = task_results(task, recipes, args, steps[task], committed.get(task, {}), here)
    text = []
    for task, entry in results.items():
        cells, shown, passes = entry["cells"], entry["interleaved_cells"], entry["interleaved"]
        for machine in sorted({r["machine"] for rows in cells.values() for r in rows} or {here}):
            mine = {recipe: [r for r in rows if r["machine"] == machine] for recipe, rows in cells.items()}
            text += table(task, mine, args.seeds, shown.get(machine, {}), passes.get(machine), machine)
    cmd = (f".venv/bin/python bench/plain.py --tasks {args.tasks} --seeds {args.seeds} --steps {args.steps} "
           f"--recipes '{args.recipes}'" + (f" --interleaved {args.interleaved}" if args.interleaved else "")
           + (f" --speed-seed {args.speed_seed}" if args.speed_seed else ""))
    head = [
        "# Shipped artifacts against the plain alternative (LoRA on the dense model → merge → INT8 / INT4 IR)",
        "",
        f"Latest command: `{cmd}`; wall time {(time.time() - start) / 60:.0f} min (finished runs reused); the tables "
        "hold every row plain.json has gathered, whichever command ran it. "
        f"This run's machine: {json.dumps(machine_info())}. SmolLM2-135M-Instruct, test split of each task; "
        "speeds: OpenVINO GenAI decode, measured inside each run beside that run's plain IRs; ratios are the mean "
        "over seeds of each run's own ratio, at batch 1 the run's paired one where it measured it ('paired': every "
        "IR loaded in one process, one generation each per round, 20 rounds, the ratio taken round by round; "
        "else the pooled medians'). One table per task and machine class (these machines differ: AVX2 "
        "only, or AVX-512 with BF16), each row from runs on its table's machine class: compare speeds only within "
        "a table, as ratios. 'kept': rows read back from plain.json (a recipe or task this command did not name, or a "
        "run folder that is not on this machine). "
        "Interleaved columns: one benchmark per task of the seed's shipped and plain IRs, every IR once per round "
        "in alternating order, pooled; ratio ± its standard error.",
        "",
    ]
    (OUT / "plain.md").write_text("\n".join(head + text))
    (OUT / "plain.json").write_text(json.dumps({"command": cmd, "results": results}, indent=1))
    print("\n".join(head + text))


if __name__ == "__main__":
    main()
