"""Benchmark: the training-step cost of SQFT's adapters against Shears' plain elastic LoRA.

One training step (forward, backward, AdamW step; float32) on a magnitude-50% sparse base, for:
Shears (``lora``: ``y = W x + s·B A x``), SparsePEFT (``sparsepeft``: ``y = (W + (s·B A) ⊙ M) x``,
the masked update materialised, as the SQFT reference does) and QA-SparsePEFT (``qa_sparsepeft``:
``y = FQ(W + (s·B A) ⊙ M) x`` through the INT4 base's frozen min-max scales, asymmetric, group 64).
Target modules q, k, v, up, down at rank 32 (widths [32, 24, 16]); the maximal sub-adapter is active
so every kind runs the same rank. Random token ids (batch × seq-len), the same for every kind. The
kinds run interleaved, one step each per round in a rotating order (the machine is shared: load
from other processes then falls on all kinds alike); median of ``--steps`` rounds after 2 warm-up
rounds. Memory: the bytes autograd saves for backward beyond the model's own tensors (the
materialised ``W + Lp`` of the sparse kinds shows there). Writes bench/results/sqft_step.json (one
entry per model) and sqft_step.md.

    .venv/bin/python bench/sqft_step.py [--model tiny|smollm2|both] [--steps 8] [--batch 4] [--seq-len 128]
                                        [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
KINDS = ["lora", "sparsepeft", "qa_sparsepeft"]
LABELS = {"lora": "Shears (elastic LoRA)", "sparsepeft": "SparsePEFT", "qa_sparsepeft": "QA-SparsePEFT"}
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
ALL_LINEARS = [*TARGETS, "o_proj", "gate_proj"]
RANK, WIDTHS, GROUP_SIZE = 32, [32, 24, 16], 64
# tiny-but-not-trivial: a 4-layer LLaMA, hidden 256 (SmolLM2-135M: 30 layers, hidden 576)
TINY = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4}  # fmt: skip


def _model(name: str):
    from nncf_elastic_lora.config import ModelConfig, TinyModelConfig
    from nncf_elastic_lora.models import build_tiny_llama, load_model

    if name == "tiny":
        return build_tiny_llama(ModelConfig(name_or_path="tiny-random-llama", tiny=TinyModelConfig(**TINY)))
    return load_model(ModelConfig(name_or_path="smollm2-135m"))[0]


def _minmax_int4(model) -> dict:
    """Data-free asymmetric min-max INT4 (group 64) of every linear; the model gets the dequantized weights."""
    import torch

    from nncf_elastic_lora.patterns import find_linears
    from nncf_elastic_lora.quantization import QuantizedWeight, quantize

    out = {}
    with torch.no_grad():
        for name, linear in find_linears(model, ALL_LINEARS).items():
            w = linear.weight
            g = w.float().reshape(w.shape[0], -1, GROUP_SIZE)
            lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
            scale = ((hi - lo) / 15).clamp(min=1e-6).to(torch.float16)
            zp = torch.round(-lo / scale.float()).clamp(0, 15).to(torch.uint8)
            out[name] = QuantizedWeight(quantize(w, scale, zp, GROUP_SIZE), scale, zp, GROUP_SIZE)
            w.copy_(out[name].dequantize(w.dtype))
    return out


def _build(model_name: str, kind: str):
    """A magnitude-50% base (INT4 for QA) with ``kind`` adapters attached, maximal rank active."""
    import torch

    from nncf_elastic_lora.elastic import ElasticLoraSuperNet
    from nncf_elastic_lora.sparsity import sparsify_model

    torch.manual_seed(0)
    model = _model(model_name).float()
    sparsify_model(model, method="magnitude", ratio=0.5, target_modules=ALL_LINEARS, progress=False)
    quantized = _minmax_int4(model) if kind == "qa_sparsepeft" else None
    supernet = ElasticLoraSuperNet.attach(
        model,
        target_modules=TARGETS,
        max_rank=RANK,
        alpha=2 * RANK,
        default_widths=WIDTHS,
        adapter_kind=kind,
        quantized=quantized,
    )
    supernet.activate_maximal_subnet()
    model.train()
    return model, supernet, torch.optim.AdamW(supernet.trainable_parameters(), lr=1e-4)


def _step(model, optimizer, ids, count_saved: bool = False) -> tuple[float, float, int]:
    """One training step: (seconds, loss, bytes autograd saved for backward beyond the model's own tensors)."""
    import torch

    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = [0]

    def pack(t):
        if count_saved and t.data_ptr() not in own:
            saved[0] += t.numel() * t.element_size()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item(), saved[0]


def measure(model_name: str, steps: int, batch: int, seq_len: int) -> list[dict]:
    """Time all kinds in interleaved rounds (a rotating order), so that load from other processes on a
    shared machine falls on every kind alike; the median per kind is reported."""
    import torch

    runs = {kind: _build(model_name, kind) for kind in KINDS}
    vocab = runs["lora"][0].config.vocab_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, vocab, (batch, seq_len), generator=gen) for _ in range(steps + 2)]
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    losses: dict[str, float] = {}
    saved: dict[str, int] = {}
    for i, ids in enumerate(batches):
        order = KINDS[i % 3 :] + KINDS[: i % 3]
        for kind in order:
            model, _, optimizer = runs[kind]
            elapsed, losses[kind], nbytes = _step(model, optimizer, ids, count_saved=i == 0)
            if i == 0:
                saved[kind] = nbytes
            if i >= 2:  # two warm-up rounds
                times[kind].append(elapsed)
    rows = []
    for kind in KINDS:
        _, supernet, _ = runs[kind]
        rows.append(
            {
                "kind": kind,
                "step_times_s": times[kind],
                "median_s": statistics.median(times[kind]),
                "min_s": min(times[kind]),
                "final_loss": losses[kind],
                "saved_for_backward_mb": saved[kind] / 2**20,
                "trainable_params": sum(p.numel() for p in supernet.trainable_parameters()),
                "adapted_modules": len(supernet.adapters),
                "base_params_adapted": sum(
                    a.in_features * a.out_features for a in supernet.adapters.values()
                ),
                "torch_threads": torch.get_num_threads(),
            }
        )
    shears = rows[0]["median_s"]
    for r in rows:
        r["ratio_to_shears"] = r["median_s"] / shears
    return rows


def _markdown(result: dict) -> str:
    lines = [
        "# Training step: Shears vs SparsePEFT vs QA-SparsePEFT",
        "",
        "One step = forward + backward + AdamW, float32, magnitude-50% sparse base, targets q/k/v/up/down, "
        f"rank {RANK} (maximal sub-adapter), QA: min-max INT4 asym group {GROUP_SIZE}. Median of the timed "
        "rounds after 2 warm-up rounds, kinds interleaved. Compare ratios within one run only.",
        "",
    ]
    for entry in result["models"].values():
        m = entry["machine"]
        lines += [
            f"## {entry['model']} (batch {entry['batch']} × {entry['seq_len']} tokens, {entry['steps']} steps)",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {entry['rows'][0]['torch_threads']}. "
            f"Command: `{entry['command']}`",
            "",
            "| adapter | median s/step | ratio to Shears | min s/step | trainable params | saved for backward (MB) |",
            "|---|---|---|---|---|---|",
        ]
        for r in entry["rows"]:
            lines.append(
                f"| {LABELS[r['kind']]} | {r['median_s']:.3f} | {r['ratio_to_shears']:.2f} | {r.get('min_s', float('nan')):.3f} | "
                f"{r['trainable_params']:,} | {r['saved_for_backward_mb']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["tiny", "smollm2", "both"], default="tiny")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a busy shared machine"
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "bench"))
    from sparsify import machine

    path = OUT / "sqft_step.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.setdefault("models", {})
    for model_name in ["tiny", "smollm2"] if args.model == "both" else [args.model]:
        start = time.perf_counter()
        print(f"[bench] {model_name} ...", file=sys.stderr, flush=True)
        entry = {"model": model_name, "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps}
        entry["rows"] = measure(model_name, args.steps, args.batch, args.seq_len)
        entry["command"] = (
            f".venv/bin/python bench/sqft_step.py --model {model_name} --steps {args.steps} "
            f"--batch {args.batch} --seq-len {args.seq_len}"
            + (f" --threads {args.threads}" if args.threads else "")
        )
        entry["machine"] = machine()
        entry["wall_s"] = time.perf_counter() - start
        result["models"][model_name + (f"-t{args.threads}" if args.threads else "")] = entry
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    text = _markdown(result)
    (OUT / "sqft_step.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
