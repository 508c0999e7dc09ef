"""Benchmark: what ordering the MLP channels by importance buys at the same width (LoNAS, no training).

SmolLM2's MLPs are sliced to each width twice, keeping the first channels in the checkpoint's order
and after :func:`~nncf_elastic_lora.elastic.channels.order_mlp_channels` (calibration windows of the
task's train split); both are scored on the task's held-out test split: multiple-choice accuracy and
the mean log-likelihood per gold answer token. No adapter is trained, so the figures isolate the
choice of channels.

    .venv/bin/python bench/lonas_order.py [--task basic_arithmetic] [--limit 200] [--fractions 0.875,0.75,0.625,0.5]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="basic_arithmetic")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--fractions", default="0.875,0.75,0.625,0.5")
    parser.add_argument("--calibration-samples", type=int, default=64)
    args = parser.parse_args()

    import torch

    from nncf_elastic_lora.config import DataConfig, ModelConfig
    from nncf_elastic_lora.data import load_task
    from nncf_elastic_lora.elastic.channels import gated_mlps, intermediate_size, order_mlp_channels
    from nncf_elastic_lora.evaluation import CausalLM, mean_token_loglik, multiple_choice
    from nncf_elastic_lora.extract import set_mlp_widths
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
    ordered = copy.deepcopy(original)
    batches = calibration_batches(task.train, tokenizer, args.calibration_samples, 128, 0)
    report = order_mlp_channels(ordered, batches)

    def score(model) -> dict[str, float]:
        lm = CausalLM(model, tokenizer)
        acc, _, _ = multiple_choice(lm, [e for e in test if e.choices], 16)
        loglik = mean_token_loglik(lm, [(e.prompt, e.target) for e in test], 16)
        return {"acc": acc, "answer_loglik_per_token": loglik}

    rows = [{"fraction": 1.0, "width": size, "original": score(original), "ordered": None}]
    for f in [float(x) for x in args.fractions.split(",")]:
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
        f"{args.fractions}`; machine: {machine_info()['cpu']}; {(time.time() - start) / 60:.0f} min.\n",
        f"Every decoder layer's MLP sliced to the width; test split of {args.task} ({len(test)} examples). "
        "Importance kept by the ordered prefixes (mean over layers): "
        + ", ".join(
            f"{f:.1%}: {o:.1%} vs {u:.1%} unordered"
            for f, o, u in zip(report.fractions, report.kept_ordered, report.kept_original, strict=True)
        )
        + ".\n",
        "| width | acc, checkpoint order | acc, importance order | answer log-lik/token, checkpoint order | "
        "importance order |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        o, d = r["original"], r["ordered"] or r["original"]
        lines.append(
            f"| {r['width']} ({r['fraction']:.1%}) | {o['acc']:.3f} | {d['acc']:.3f} | "
            f"{o['answer_loglik_per_token']:.3f} | {d['answer_loglik_per_token']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    (OUT / "lonas_order.md").write_text(text)
    (OUT / "lonas_order.json").write_text(json.dumps({"rows": rows, "ordering": report.to_dict()}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
