"""One renderer for ``report.json``: the same blocks become ``report.md`` and the console summary.

:func:`blocks` turns a run's report into titled blocks of facts (label, value) and tables, each fact
formatted once; :func:`to_markdown` and :func:`print_summary` only lay them out. A stage's section
of the report (``report["sparsity"]``, ``report["export"]``, ...) has one block function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..evaluation import TaskResult, results_table
from .tables import markdown_table, print_table

Table = tuple[list[str], list[list[Any]]]


@dataclass
class Block:
    """A titled part of the summary: facts as ``[label, value]`` rows, a table, a closing note."""

    title: str
    facts: list[list[str]] = field(default_factory=list)
    table: Table | None = None
    note: str = ""
    console: bool = True  # also printed on the terminal (the data splits are for the file only)
    marked: int | None = None  # the table row that is what the run ships: bold in markdown


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def accuracy_block(report: dict[str, Any]) -> Block:
    results = {label: [TaskResult.from_dict(r) for r in rs] for label, rs in report["evaluation"].items()}
    headers, rows = results_table(results)
    return Block("Accuracy", table=(list(headers), rows))


def sparsity_block(s: dict[str, Any], report: dict[str, Any]) -> Block:
    return Block(
        "Sparsity",
        [
            ["method", f"{s['method']} {s['pattern']} at ratio {s['ratio']}"],
            ["zeros in the targeted weights", _pct(s["sparsity"])],
            ["zeros in all parameters", _pct(s["model_sparsity"])],
        ],
    )


def quantization_block(q: dict[str, Any], report: dict[str, Any]) -> Block:
    kind = "symmetric" if q["sym"] else "asymmetric"
    return Block(
        "INT4 base",
        [
            ["quantization", f"NNCF {kind} INT4, group size {q['group_size']}, {len(q['modules'])} linear layers"],
            ["every zero of the base kept", str(q["zeros_kept"])],
        ],
    )


def training_block(t: dict[str, Any], report: dict[str, Any]) -> Block:
    params, space = t["adapter_params"], t["search_space"]
    return Block(
        "Training",
        [
            ["algorithm / steps", f"{t['algorithm']}, {t['steps']} steps"],
            ["final loss / median step (s)", f"{t['train_loss']:.4f} / {t['step_time_median_s']:.2f}"],
            ["trainable parameters", f"{t['trainable_params']:,}"],
            [
                "adapter parameters maximal / heuristic / minimal",
                f"{params['maximal']:,} / {params['heuristic']:,} / {params['minimal']:,}",
            ],
            ["search space", f"{space['groups']} groups, {space['size']:.3g} sub-adapters"],
        ],
    )


def search_block(s: dict[str, Any], report: dict[str, Any]) -> Block:
    facts = [
        ["algorithm", str(s["algorithm"])],
        ["chosen quality / cost", f"{s['chosen_quality']:.4f} / {s['chosen_cost']:.4g}"],
        ["evaluations (new)", f"{s['evaluations_used']} ({s['new_evaluations']})"],
    ]
    floor = s.get("floor")
    if floor:
        who = floor["select"].removeprefix("cheapest_above_")
        who += " INT4" if floor.get("precision") == "int4" else ""  # scored on the run's INT4 grid
        outcome = "the cheapest at or above it" if floor["reached"] else "none reached it: the best one ships"
        facts.append([f"floor ({who}'s validation quality)", f"{floor['quality']:.4f}: {outcome}"])
    return Block("Search", facts)


def extract_block(x: dict[str, Any], report: dict[str, Any]) -> Block:
    share = f"{x['params'] / x['params_before']:.1%} of {x['params_before']:,}"
    facts = [
        ["extracted checkpoint", str(report["artifacts"].get("extracted_model"))],
        ["extracted parameters", f"{x['params']:,} ({share})"],
        ["extracted MLP widths per layer", ", ".join(str(w) for w in x["mlp_widths"]) or "unchanged"],
    ]
    if x.get("kv_groups"):
        facts.append(["extracted KV groups per attention", f"{x['kv_groups']} of {x['kv_heads']}"])
    return Block("Extracted sub-network (LoNAS)", facts)


def merge_block(m: dict[str, Any], report: dict[str, Any]) -> Block:
    return Block(
        "Merged model",
        [
            ["merged checkpoint", str(report["artifacts"].get("merged_model"))],
            ["merge", f"{m['adapter_kind']} sub-adapter merged into {m['precision']} weights"],
            ["zeros in the linear layers (base)", f"{_pct(m['sparsity'])} ({_pct(m['base_sparsity'])})"],
            ["every zero of the base kept", str(m["zeros_kept"])],
            ["new zeros where the update cancelled a weight", f"{m['new_zeros']:,}"],
        ],
    )


def export_facts(export_report: dict[str, Any]) -> list[list[str]]:
    """Rows ``[what, value]`` about an exported IR: weights, zeros, agreement with torch."""
    e = export_report
    facts = [["OpenVINO IR weights", f"{e['weight_format']}, {e['size_bytes']['model_bin'] / 2**20:.1f} MiB"]]
    if e.get("ir_sparsity") is not None:
        facts.append(["zeros in the IR's MatMul weights", _pct(e["ir_sparsity"])])
    if e.get("sparse_kernels"):  # the zeros only pay where OpenVINO's CPU sparse-weight kernels can run
        failing = e["sparse_kernels"]["failing"]
        facts.append(["OpenVINO CPU sparse-weight kernels",
                      "can run" if not failing else "cannot run here: " + ", ".join(failing) + " not met"])  # fmt: skip
    if e.get("parity"):
        p = e["parity"]
        facts += [
            ["max |logit diff| vs torch (f32)", f"{p['logits_max_abs_diff']:.3g}"],
            ["identical greedy: optimum-intel", f"{p['greedy_identical_optimum']}/{p['prompts']}"],
            ["identical greedy: GenAI", f"{p.get('greedy_identical_genai', '-')}/{p['prompts']}"],
        ]
    return facts


def export_block(e: dict[str, Any], report: dict[str, Any]) -> Block:
    return Block("OpenVINO IR", [["IR directory", str(report["artifacts"].get("openvino"))], *export_facts(e)])


def _genai_tpot(row: dict[str, Any], batch: int) -> str | None:
    """GenAI's own TPOT (mean ± std over the repeats) of ``row`` at ``batch``, flagged where ours differs > 5 %."""
    tpot = {int(b): v for b, v in row.get("genai_tpot_ms", {}).items()}.get(batch)
    if tpot is None:
        return None
    flagged = " (differs from ours: " + ", ".join(row["genai_disagree"]) + ")" if row.get("genai_disagree") else ""
    return f"{tpot['mean']:.2f} ± {tpot['std']:.2f}{flagged}"


def benchmark_block(bench: dict[str, Any], report: dict[str, Any]) -> Block:
    """The shipped IR against the dense references: size, accuracy, decode speed and its ratio."""
    # Batch sizes are int keys in memory and strings once the report went through JSON (a resumed run).
    rows = [
        {**r, **{k: {int(b): v for b, v in r[k].items()} for k in ("decode_tokens_per_s", "speedup")}}
        for r in bench["rows"]
    ]
    sizes = sorted({b for r in rows for b in r["decode_tokens_per_s"]})
    ref = rows[1]["label"] if len(rows) > 1 else rows[0]["label"]
    headers = ["IR", "weights (MiB)", rows[0]["metric"] or "score"]
    headers += [h for b in sizes for h in (f"decode tok/s b{b}", f"x {ref} b{b}")]
    headers.append(f"GenAI TPOT b{sizes[0]} (ms/token)")
    table = [
        [
            ("shipped " if r["shipped"] else "") + r["label"],
            r["weights_bytes"] / 2**20,
            r["score"],
            *(v for b in sizes for v in (r["decode_tokens_per_s"].get(b), r["speedup"].get(b))),
            _genai_tpot(r, sizes[0]),
        ]
        for r in rows
    ]
    m, shipped = bench["machine"], rows[0]
    cpu = f"{m.get('cpu')}, {m.get('logical_cores')} logical cores, AVX-512 {m.get('avx512')}, AMX {m.get('amx')}"
    verdict = ""
    if 1 in shipped["speedup"]:
        faster = [
            r["label"] for r in rows[1:] if r["decode_tokens_per_s"].get(1, 0) > shipped["decode_tokens_per_s"][1]
        ]
        verdict = f"At batch 1 the shipped IR decodes at {shipped['speedup'][1]:.2f}x the {ref}."
        if faster:
            verdict += f" Faster than the shipped IR: {', '.join(faster)}."
        verdict += "\n\n"
    note = (
        f"{verdict}OpenVINO GenAI LLMPipeline, {report.get('config', {}).get('benchmark', {}).get('rounds', 1)} "
        "round(s) in alternating order pooled, medians of our wall-clock timing (GenAI's own TPOT, from its "
        f"perf_metrics, beside them), measured in this run on {cpu} "
        f"(OpenVINO {m.get('openvino')}). Compare speeds only within one run. Plot: accuracy_vs_speed.png"
    )
    marked = next((i for i, r in enumerate(rows) if r["shipped"]), None)
    title = "Speed: the shipped IR against dense exports of the original model"
    return Block(title, table=(headers, table), note=note, marked=marked)


def plain_block(p: dict[str, Any], report: dict[str, Any]) -> Block:
    """The plain alternative (LoRA on the dense model, merged, exported) and the verdict against it."""
    t = p["train"]
    facts = [
        ["what", "LoRA at the maximal rank on the original dense model, same data, steps, learning rate and seed; "
                 "merged; exported data-free"],
        ["trained", f"{t.get('steps')} steps, final loss {t.get('train_loss'):.4g}" if t.get("train_loss") is not None
         else f"{t.get('steps')} steps"],
        ["computed", "reused from the cache (same inputs)" if p["reused"] else "in this run"],
        ["folder", p["directory"]],
    ]
    if p.get("scored_on"):
        again = p.get("rescored")
        facts.append(["scored on", p["scored_on"] + (f" (the cached {', '.join(again)} IR scored again here: it was "
                                                     "scored on another machine class)" if again else "")])
    for fmt, ir in p["irs"].items():
        if ir.get("size_bytes"):
            facts.append([f"{fmt} IR weights", f"{ir['size_bytes']['model_bin'] / 2**20:.1f} MiB"])
    verdict = (p.get("verdict") or {}).get("line", "No verdict: the shipped IR or the plain one was not scored.")
    others = "".join(f" Against its {fmt} export: {v['line']}" for fmt, v in (p.get("other_verdicts") or {}).items())
    return Block("The plain alternative", facts, note=f"**Verdict.** {verdict}{others}")


def _times_block(report: dict[str, Any]) -> Block:
    resources = report.get("stage_resources") or {}
    headers = ["stage", "seconds", "peak RSS MiB", "peak accelerator MiB", "disk written MiB"]
    rows = []
    for stage, seconds in report["stage_time_s"].items():
        r = resources.get(stage) or {}
        if r.get("reused"):
            rows.append([stage, seconds, "reused", "reused", "reused"])
        else:
            rows.append([stage, seconds, r.get("peak_rss_mib"), r.get("peak_accelerator_mib"), r.get("disk_written_mib")])
    note = "Peak RSS is this process's peak during the stage (reset at its start); accelerator memory is torch's peak allocation."
    return Block("Time and memory per stage", table=(headers, rows), note=note if resources else "")


def _data_block(report: dict[str, Any]) -> Block:
    headers = ["task", "seed", "available", "train", "validation", "test"]
    rows = [[n, r["seed"], r["available"], *r["sizes"].values()] for n, r in report["data"].items()]
    return Block("Data splits", table=(headers, rows), console=False)


# report.json's stage sections and their blocks, in the order they are shown.
SECTION_BLOCKS: tuple[tuple[str, Callable[[dict[str, Any], dict[str, Any]], Block]], ...] = (
    ("sparsity", sparsity_block),
    ("quantization", quantization_block),
    ("training", training_block),
    ("search", search_block),
    ("extract", extract_block),
    ("export", export_block),
    ("merge", merge_block),
    ("benchmark", benchmark_block),
    ("plain", plain_block),
)


def blocks(report: dict[str, Any]) -> list[Block]:
    """Every block of a run's ``report.json``, in order; sections of stages that did not run are left out."""
    out = [accuracy_block(report)]
    out += [make(report[key], report) for key, make in SECTION_BLOCKS if report.get(key)]
    return [*out, _times_block(report), _data_block(report)]


def to_markdown(report: dict[str, Any]) -> str:
    """``report.md``."""
    text = "# nncf-elastic-lora run\n"
    for block in blocks(report):
        text += f"\n## {block.title}\n\n"
        if block.facts:
            text += markdown_table(["", "value"], block.facts)
        if block.table is not None:
            headers, rows = block.table
            if block.marked is not None:  # "shipped X" -> "**shipped** X"
                first, *rest = rows[block.marked]
                word, _, label = str(first).partition(" ")
                rows = [*rows[: block.marked], [f"**{word}** {label}", *rest], *rows[block.marked + 1 :]]
            text += ("\n" if block.facts else "") + markdown_table(headers, rows)
        if block.note:
            text += f"\n{block.note}\n"
    return text


def print_summary(report: dict[str, Any]) -> None:
    """The console summary of a run: the same blocks as ``report.md``."""
    for block in blocks(report):
        if not block.console:
            continue
        if block.facts:
            print_table(block.title, ["", "value"], block.facts)
        if block.table is not None:
            print_table(block.title if not block.facts else "", *block.table)
        if block.note:
            print(block.note)
