"""Benchmark: sub-adapter selection on the Shears SmolLM2 super-adapter (the Shears paper's Table 6, our scale).

For the NLS super-adapter trained on basic_arithmetic over Wanda-50% SmolLM2-135M (made by
bench/nls_vs_lora.py, or trained here when missing), compares the maximal, heuristic and minimal
sub-adapters with the ones chosen by hill-climbing and NSGA-II **on the validation split**, and
reports their held-out **test** accuracy, the evaluations each search used and its wall time. Each
search has its own evaluation log, so its counts are its own. Writes bench/results/search.{json,md}
and the searches' plots bench/results/search_<algorithm>.png.

    .venv/bin/python bench/search.py [--budget 30] [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
WORK = OUT / "work"
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=int, default=30, help="evaluations per search")
    parser.add_argument("--limit", type=int, default=200, help="test examples")
    parser.add_argument(
        "--steps", type=int, default=250, help="NLS steps if the super-adapter must be trained"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite search.md from search.json")
    args = parser.parse_args()
    if args.render:
        render(json.loads((OUT / "search.json").read_text()))
        return

    from nls_vs_lora import _config
    from sparsify import machine

    from nncf_elastic_lora.config import apply_overrides
    from nncf_elastic_lora.pipeline import eval_splits, evaluate_subnets, load_supernet, search

    base = WORK / "smollm2-wanda50"
    super_adapter = WORK / "basic_arithmetic-nls" / "super_adapter"
    if not (super_adapter / "elastic_lora.json").is_file():
        print(
            "[bench] training the NLS super-adapter (bench/nls_vs_lora.py child) ...",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "nls_vs_lora.py"),
                "--tasks",
                "basic_arithmetic",
                "--steps",
                str(args.steps),
                "--limit",
                str(args.limit),
            ],
            check=True,
        )
    config = _config("basic_arithmetic", "nls", args.steps, args.limit)
    config = apply_overrides(
        config,
        [
            f"model.name_or_path={base}",
            "bootstrapNAS.search.metric=loss",
            "bootstrapNAS.search.subset_size=50",
            f"bootstrapNAS.search.num_evals={args.budget}",
            "bootstrapNAS.search.population=8",
        ],
    )
    rows: dict[str, dict] = {}
    chosen: dict[str, dict[str, int]] = {}
    for algorithm in ("hill_climbing", "NSGA2"):
        out = WORK / f"search-{algorithm}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"[bench] search: {algorithm} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        report = search(
            apply_overrides(config, [f"bootstrapNAS.search.algorithm={algorithm}"]),
            out,
            super_adapter,
            progress=False,
        )
        rows[algorithm] = {
            "evaluations": report["evaluations_used"],
            "measured": report["new_evaluations"],
            "wall_s": time.perf_counter() - start,
            "validation_quality": report["chosen_quality"],
            "adapter_params": report["chosen_cost"],
        }
        chosen[algorithm] = report["chosen"]
        shutil.copy(out / "search.png", OUT / f"search_{algorithm}.png")
        reference = report["reference"]
    supernet, tokenizer = load_supernet(config.model, super_adapter)
    named = {
        "maximal": supernet.get_maximal_config(),
        "heuristic": supernet.get_heuristic_config(),
        "hill_climbing": chosen["hill_climbing"],
        "NSGA2": chosen["NSGA2"],
        "minimal": supernet.get_minimal_config(),
    }
    print("[bench] test accuracy of the five sub-adapters ...", file=sys.stderr, flush=True)
    tests = evaluate_subnets(supernet, tokenizer, config, named, eval_splits(config), progress=False)
    for name in ("maximal", "heuristic", "minimal"):
        rows[name] = {
            "evaluations": 0,
            "measured": 0,
            "wall_s": 0.0,
            "validation_quality": reference[name]["quality"],
            "adapter_params": reference[name]["cost"],
        }
    for name, results in tests.items():
        rows[name]["test"] = results[0]["metrics"]
        rows[name]["n_test"] = results[0]["n"]
    command = f".venv/bin/python bench/search.py --budget {args.budget} --limit {args.limit}"
    result = {
        "command": command,
        "machine": machine(),
        "rows": rows,
        "chosen": chosen,
        "budget": args.budget,
        "limit": args.limit,
        "groups": len(supernet.groups),
    }
    (OUT / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    render(result)


def render(result: dict) -> None:
    """bench/results/search.md from the measured search.json."""
    rows = result["rows"]
    lines = [
        "# Sub-adapter search on the Shears SmolLM2 super-adapter (basic_arithmetic, Wanda 50%)",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. Command: `{result['command']}`",
        "",
        f"Chosen on the validation split (50 examples, log-likelihood per answer token; budget {result['budget']} "
        f"evaluations per search, the maximal and minimal reference points included); reported on the held-out "
        f"test split (n={result['limit']}). Search space: {result['groups']} groups x widths [32, 24, 16]. "
        "Plots: `search_hill_climbing.png`, `search_NSGA2.png`.",
        "",
        "| sub-adapter | adapter params | validation log-lik/token | configurations measured | wall (s) | "
        "test acc | test acc_norm | test exact match |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("maximal", "heuristic", "hill_climbing", "NSGA2", "minimal"):
        r = rows[name]
        t = r["test"]
        lines.append(
            f"| {name} | {r['adapter_params']:,.0f} | {r['validation_quality']:.4f} | {r['measured']} | "
            f"{r['wall_s']:.0f} | {t['acc']:.3f} | {t['acc_norm']:.3f} | {t.get('exact_match', 0):.3f} |"
        )
    (OUT / "search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
