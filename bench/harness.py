"""Benchmark: our evaluator against lm-evaluation-harness on the same examples (SmolLM2-135M).

Two models: the bundled SmolLM2-135M-Instruct (dense) and one tuned model, the plain alternative of the
main job (LoRA at the maximal rank on the dense model, basic_arithmetic, from the plain cache or trained
here), applied by peft. Tasks: piqa, ARC-Easy and SST-2, the first ``--limit`` examples of each test split as our
evaluator draws them (seed 42). lm-eval evaluates those very examples through its official task
definitions (``nncf_elastic_lora.harness``: the official YAML included, only the dataset swapped), so the
accuracies must agree example by example; the table says how close they are and where they differ.

    .venv/bin/python bench/harness.py [--limit 200]

Writes bench/results/harness.{md,json}.
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

TASKS = ("piqa", "arc_easy", "sst2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from nncf_elastic_lora.config import apply_overrides
    from nncf_elastic_lora.evaluation import CausalLM, multiple_choice
    from nncf_elastic_lora.harness import compare_with_ours, harness_evaluate
    from nncf_elastic_lora.outputs import write_json, write_text
    from nncf_elastic_lora.runtime import machine_info
    from nncf_elastic_lora.stages.evaluate import evaluation_examples, load_for_eval
    from nncf_elastic_lora.stages.plain import plain_config, plain_reference

    start = time.time()
    base = main_cell_config()
    adapter = Path(plain_reference(base, progress=True, score=False)["directory"]) / "train" / "sub_adapter_heuristic"
    config = apply_overrides(base, [f"evaluation.tasks={json.dumps(list(TASKS))}", f"evaluation.limit={args.limit}"])
    examples = evaluation_examples(config)
    rows, details = [], {}
    for label, with_adapter in (("SmolLM2-135M-Instruct (dense)", None), ("plain LoRA (peft, unmerged)", adapter)):
        model, tokenizer, _ = load_for_eval(plain_config(config), with_adapter)
        theirs = harness_evaluate(model, tokenizer, tasks=list(TASKS), examples=examples, batch_size=8)
        lm = CausalLM(model, tokenizer)
        for task in TASKS:
            acc, acc_norm, preds = multiple_choice(lm, examples[task], 8)
            check = compare_with_ours(preds, theirs[task])
            details[f"{label} / {task}"] = {**check, "acc_norm_ours": acc_norm, "acc_norm_lm_eval": theirs[task]["acc_norm"]}
            norm = theirs[task]["acc_norm"]
            rows.append(f"| {label} | {task} | {check['examples']} | {acc:.3f} | {theirs[task]['acc']:.3f} | "
                        f"{acc_norm:.3f} | {'-' if norm is None else f'{norm:.3f}'} | {check['same_correctness']} | "
                        f"{check['max_abs_loglik_diff']:.1e} |")  # fmt: skip
    machine = machine_info()
    lines = [
        "# Our evaluator against lm-evaluation-harness, on the same examples: SmolLM2-135M",
        "",
        f"Command: `.venv/bin/python bench/harness.py --limit {args.limit}`; wall time {(time.time() - start) / 60:.0f} "
        f"min; {machine.get('cpu')}, lm-eval 0.4.13 (official piqa, arc_easy and glue/sst2 task YAMLs, dataset swapped "
        "for our test examples). Tuned model: the plain LoRA adapter "
        f"(`{adapter}`), applied by peft. acc_norm: each choice's log-likelihood per character, without the joining space, "
        "in both (ours divided by UTF-8 bytes with the space before this comparison, 2026-12-03); SST-2's official "
        "task reports acc only.",
        "",
        "| model | task | examples | acc ours | acc lm-eval | acc_norm ours | acc_norm lm-eval | same correctness | max abs(Δ loglik) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write_text(OUT / "harness.md", "\n".join(lines) + "\n")
    write_json(OUT / "harness.json", {"machine": machine, "limit": args.limit, "details": details})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
