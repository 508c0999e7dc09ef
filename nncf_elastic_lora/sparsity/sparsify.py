"""Sparsify a model: Wanda (layer by layer, on calibration data) or magnitude."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..architecture import in_head, output_head_names
from ..blockwise import BlockRunner
from ..patterns import find_linears
from .magnitude import magnitude_mask
from .masks import parse_pattern
from .wanda import InputNormStat, wanda_mask


@dataclass
class SparsityReport:
    method: str
    ratio: float
    pattern: str
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    targeted_params: int = 0
    zeroed_params: int = 0
    model_params: int = 0
    time_s: float = 0.0
    peak_rss_mb: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return self.zeroed_params / max(self.targeted_params, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "sparsity": self.sparsity,
            "model_sparsity": self.zeroed_params / max(self.model_params, 1),
        }


def _apply(name: str, linear: torch.nn.Linear, mask: torch.Tensor, report: SparsityReport) -> None:
    with torch.no_grad():
        linear.weight[mask.to(linear.weight.device)] = 0
    zeros = int((linear.weight == 0).sum())
    report.layers[name] = {
        "shape": list(linear.weight.shape),
        "zeros": zeros,
        "sparsity": zeros / linear.weight.numel(),
    }


def _wanda_blocks(
    targets: dict[str, torch.nn.Linear],
    runner: BlockRunner,
    ratio: float,
    n_m: tuple[int, int] | None,
    report: SparsityReport,
    progress: bool,
) -> None:
    """Wanda block by block: statistics from the pruned blocks before, prune, recompute the outputs."""
    for index, prefix, layer in tqdm(runner, total=len(runner), desc="wanda: layers", disable=not progress):
        in_layer = {n: m for n, m in targets.items() if n.startswith(prefix)}
        stats = {n: InputNormStat(m.in_features) for n, m in in_layer.items()}
        handles = [m.register_forward_hook(stats[n]) for n, m in in_layer.items()]
        try:
            runner.run(index, layer)
        finally:
            for h in handles:
                h.remove()
        for name, linear in in_layer.items():
            _apply(name, linear, wanda_mask(linear.weight, stats[name].sq_sum, ratio, n_m), report)
        # Recompute the layer's outputs with its pruned weights: the next layer calibrates on them.
        runner.advance(runner.run(index, layer))


@torch.no_grad()
def sparsify_model(
    model: torch.nn.Module,
    *,
    method: str = "wanda",
    ratio: float = 0.5,
    pattern: str = "unstructured",
    target_modules: list[str],
    calibration: list[torch.Tensor] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> SparsityReport:
    """Zero weights of the targeted linear layers in place and report what was done.

    Wanda processes decoder layers in order: each layer's statistics come from the outputs of the
    already-pruned layers before it, with the layer's own attention mask and position embeddings
    (see :func:`~nncf_elastic_lora.blockwise.capture_layer_inputs`), and only one layer's activations
    are held at a time. ``device`` (default: where the model is) is where the layers run: a model
    kept in CPU memory moves one decoder block at a time to it (:class:`~nncf_elastic_lora.blockwise.BlockRunner`).
    """
    start = time.perf_counter()
    n_m = parse_pattern(pattern)
    targets = find_linears(model, target_modules)
    report = SparsityReport(method=method, ratio=ratio if n_m is None else n_m[0] / n_m[1], pattern=pattern)
    if method == "magnitude":
        for name, linear in tqdm(targets.items(), desc="magnitude", disable=not progress):
            _apply(name, linear, magnitude_mask(linear.weight, ratio, n_m), report)
    elif method == "wanda":
        if not calibration:
            raise ValueError("Wanda needs calibration batches")
        # Equal-length windows stack into batches: same statistics, far fewer layer calls.
        batches = [torch.cat(calibration[i : i + batch_size]) for i in range(0, len(calibration), batch_size)]
        was_training = model.training
        model.eval()
        try:
            runner = BlockRunner(
                model, batches, device, modules=list(targets), what="Wanda (it prunes decoder-layer linears only)"
            )
            _wanda_blocks(targets, runner, ratio, n_m, report, progress)
        finally:
            model.train(was_training)
        report.calibration = {
            "num_samples": len(calibration),
            "seq_len": int(calibration[0].shape[-1]),
            "tokens": int(sum(c.numel() for c in calibration)),
        }
    else:
        raise ValueError(f"unknown sparsity method {method!r}; allowed: 'wanda', 'magnitude'")
    report.targeted_params = sum(m.weight.numel() for m in targets.values())
    report.zeroed_params = sum(v["zeros"] for v in report.layers.values())
    report.model_params = sum(p.numel() for p in model.parameters())
    report.time_s = time.perf_counter() - start
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


def layer_sparsity(model: torch.nn.Module, target_modules: list[str]) -> dict[str, float]:
    """Fraction of exact zeros in each targeted linear's weight."""
    return {n: float((m.weight == 0).float().mean()) for n, m in find_linears(model, target_modules).items()}


def linear_sparsity(model: torch.nn.Module) -> float:
    """Fraction of zeros over the weights of every linear layer except the head and adapters."""
    zeros = total = 0
    heads = output_head_names(model)  # lm_head, embed_out (GPT-NeoX), ...
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and not in_head(name, heads):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / max(total, 1)
