"""Benchmark: what ordering the MLP channels (and KV groups) by importance buys at the same width (LoNAS, no training).

SmolLM2's MLPs are sliced to each width twice, keeping the first channels in the checkpoint's order
and after :func:`~nncf_elastic_lora.elastic.channels.order_mlp_channels` (calibration windows of the
task's train split); both are scored on the task's held-out test split: multiple-choice accuracy and
the mean log-likelihood per gold answer token. No adapter is trained, so the figures isolate the
choice of channels.

``--kv-groups 2`` does the same for the attention heads: every attention keeps that many whole KV groups
(full MLPs), in the checkpoint's order and after :func:`~nncf_elastic_lora.elastic.heads.order_kv_groups`;
written to ``lonas_order_heads.md`` (``--fractions ''`` skips the MLP part).

    .venv/bin/python bench/lonas_order.py [--task basic_arithmetic] [--limit 200] [--fractions 0.875,0.75,0.625,0.5]
                                          [--kv-groups 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"


def positive_counts(text: str) -> str:
    """``--kv-groups``: empty, or comma-separated positive integers."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not all(x.isdigit() and int(x) > 0 for x in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="basic_arithmetic")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--fractions", default="0.875,0.75,0.625,0.5")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument(
        "--kv-groups",
        default="",
        type=positive_counts,
        help="KV-group counts to compare, e.g. 2,1 (SmolLM2 has 3)",
    )
    args = parser.parse_args()
    fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    kv_counts = [int(x) for x in args.kv_groups.split(",") if x.strip()]

    import torch

    from nncf_elastic_lora.config import DataConfig, ModelConfig
    from nncf_elastic_lora.data import load_task
    from nncf_elastic_lora.elastic.channels import (
        gated_mlps,
        intermediate_size,
        order_mlp_channels,
        set_mlp_widths,
    )
    from nncf_elastic_lora.elastic.heads import order_kv_groups, set_kv_groups
    from nncf_elastic_lora.evaluation import CausalLM, mean_token_loglik, multiple_choice
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.runtime import machine_info
    from nncf_elastic_lora.sparsity import calibration_batches

    start = time.time()
    torch.manual_seed(0)
    data = DataConfig(task=args.task, splits={"train": 1000, "validation": 50, "test": args.limit})
    task = load_task(data)
    test = task.test[: args.limit]
    original, tokenizer = load_model(ModelConfig(name_or_path="smollm2-135m"))
    size = intermediate_size(original, gated_mlps(original)[0])
    batches = calibration_batches(task.train, tokenizer, args.calibration_samples, 128, 0)
    machine = machine_info()["cpu"]

    def score(model) -> dict[str, float]:
        lm = CausalLM(model, tokenizer)
        acc, _, _ = multiple_choice(lm, [e for e in test if e.choices], 16)
        loglik = mean_token_loglik(lm, [(e.prompt, e.target) for e in test], 16)
        return {"acc": acc, "answer_loglik_per_token": loglik}

    full = score(original)
    if kv_counts:
        heads_ordered = copy.deepcopy(original)
        heads_report = order_kv_groups(heads_ordered, batches, tuple(kv_counts))
        kv_heads = original.config.num_key_value_heads
        head_rows = [{"kv_groups": kv_heads, "original": full, "ordered": None}]
        for kv in kv_counts:
            row = {"kv_groups": kv}
            for label, model in (("original", original), ("ordered", heads_ordered)):
                sliced = copy.deepcopy(model)
                set_kv_groups(sliced, kv)
                row[label] = score(sliced)
            head_rows.append(row)
            print(json.dumps(row))
        del heads_ordered
        lines = [
            "# LoNAS: KV-group order at the same head count (SmolLM2-135M, no training)\n",
            f"Command: `.venv/bin/python bench/lonas_order.py --task {args.task} --limit {args.limit} --fractions '' "
            f"--kv-groups {args.kv_groups}`; machine: {machine}.\n",
            f"Every attention keeps that many whole KV groups (a KV head with its {original.config.num_attention_heads // kv_heads} "
            f"query heads), MLPs at full width; test split of {args.task} ({len(test)} examples). Importance kept "
            "by the ordered groups (mean over layers): "
            + ", ".join(
                f"{kv} of {kv_heads}: {o:.1%} vs {u:.1%} unordered"
                for kv, o, u in zip(
                    kv_counts, heads_report.kept_ordered, heads_report.kept_original, strict=True
                )
            )
            + ".\n",
        ]
        text = "\n".join(lines + table("KV groups", head_rows, lambda r: f"{r['kv_groups']} of {kv_heads}"))
        write("lonas_order_heads", text, {"rows": head_rows, "ordering": heads_report.to_dict()})
    if not fractions:
        return
    ordered = copy.deepcopy(original)
    report = order_mlp_channels(ordered, batches)
    rows = [{"fraction": 1.0, "width": size, "original": full, "ordered": None}]
    for f in fractions:
        width = round(f * size)
        row = {"fraction": f, "width": width}
        for label, model in (("original", original), ("ordered", ordered)):
            sliced = copy.deepcopy(model)
            set_mlp_widths(sliced, [width] * len(gated_mlps(sliced)))
            row[label] = score(sliced)
        rows.append(row)
        print(json.dumps(row))

    lines = [
        "# LoNAS: channel order at the same MLP width (SmolLM2-135M, no training)\n",
        f"Command: `.venv/bin/python bench/lonas_order.py --task {args.task} --limit {args.limit} --fractions "
        f"{args.fractions}`; machine: {machine}; {(time.time() - start) / 60:.0f} min.\n",
        f"Every decoder layer's MLP sliced to the width; test split of {args.task} ({len(test)} examples). "
        "Importance kept by the ordered prefixes (mean over layers): "
        + ", ".join(
            f"{f:.1%}: {o:.1%} vs {u:.1%} unordered"
            for f, o, u in zip(report.fractions, report.kept_ordered, report.kept_original, strict=True)
        )
        + ".\n",
    ]
    text = "\n".join(lines + table("width", rows, lambda r: f"{r['width']} ({r['fraction']:.1%})"))
    write("lonas_order", text, {"rows": rows, "ordering": report.to_dict()})


def table(what: str, rows: list[dict], label) -> list[str]:
    """Markdown rows: each size in the checkpoint's order against the importance order."""
    lines = [
        f"| {what} | acc, checkpoint order | acc, importance order | answer log-lik/token, checkpoint order | "
        "importance order |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        o, d = r["original"], r["ordered"] or r["original"]
        lines.append(
            f"| {label(r)} | {o['acc']:.3f} | {d['acc']:.3f} | "
            f"{o['answer_loglik_per_token']:.3f} | {d['answer_loglik_per_token']:.3f} |"
        )
    return lines


def write(name: str, text: str, data: dict) -> None:
    (OUT / f"{name}.md").write_text(text + "\n")
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(text)


if __name__ == "__main__":
    main()
