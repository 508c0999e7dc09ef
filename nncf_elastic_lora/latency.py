"""A latency model of this machine's OpenVINO runtime for LoNAS sub-networks (search cost ``latency``).

Decoding at small batch reads every weight once per token, so its time per token is close to linear
in the bytes the model holds, and a sub-network differs from the base only in its MLP widths (and,
with elastic heads, its KV-group count). The model is therefore ``ms per token = intercept + slope ×
(elastic weights kept, in millions)``, the elastic weights being the MLP projections' (plus, with
elastic heads, the attention projections'), fitted by least squares on sub-networks that are really
built and measured:

- **fit points**: the same width in every layer, one point per configured width, at every KV group;
  with elastic heads, one more point per smaller KV-group count at full MLP width;
- **held-out points**: random per-layer widths (and KV-group counts; seeded), never used in the fit,
  whose measured latency the fitted model predicts: their error is the model's error on the
  configurations a search actually visits. The leave-one-out error of the fit points is reported too.

Each point is the base with its MLPs (and attentions) sliced (the adapters merged or not makes no
difference to the shapes), exported through optimum-intel at the export's weight format and measured by GenAI's
``LLMPipeline`` on the export's device, in its own process
(:func:`nncf_elastic_lora.deploy.benchmark.benchmark_models`).

A line in the weights ranks sub-networks as their weights do, so NSGA-II's choice is the one a
weights cost would make; what the model adds is the unit (milliseconds on this machine, for R-NSGA-II
reference points and for reading the front) and a measured check, with its error, that the weights
are what decode time follows here. A fit whose time does not grow with the weights is refused.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .config import ModelConfig
from .deploy.benchmark import benchmark_models
from .deploy.export import export_openvino
from .elastic.channels import gated_mlps, intermediate_size, set_mlp_widths
from .elastic.heads import attentions
from .formats import LATENCY_MODEL
from .models import load_model
from .outputs import json_number, write_json

log = logging.getLogger(__name__)



@dataclass
class LatencyPoint:
    """One measured sub-network: its per-layer MLP widths (and KV groups) and decode time per token."""

    role: str  # "fit" or "holdout"
    widths: list[int]
    weights: (
        int  # elastic weights kept: the MLP projections' (+ the attention projections' with elastic heads)
    )
    measured_ms: float
    predicted_ms: float | None = None  # held-out: by the fitted model; fit: leave-one-out
    kv_groups: int | None = None  # with elastic heads

    @property
    def error(self) -> float | None:
        return None if self.predicted_ms is None else self.predicted_ms / self.measured_ms - 1


@dataclass
class LatencyModel:
    """``ms per decode step = intercept_ms + ms_per_mparam × elastic weights / 1e6`` at ``batch_size``.

    The elastic weights are the MLP projections' and, when ``kv_heads`` is set (fitted with elastic
    heads), the attention projections' of the KV groups kept (``params_per_kv_group`` each, all layers).
    """

    intercept_ms: float
    ms_per_mparam: float
    batch_size: int
    weight_format: str
    layers: list[str]  # down_proj names, in layer order
    sizes: list[int]  # the base's intermediate size per layer
    params_per_channel: list[int]  # weights one intermediate channel holds (gate row + up row + down column)
    points: list[LatencyPoint] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    kv_heads: int | None = None  # the base's KV heads per layer, when fitted with elastic heads
    params_per_kv_group: int = 0  # weights one KV group holds over all layers (q, k, v rows + o columns)

    def mlp_params(self, widths: list[int] | dict[str, int]) -> int:
        if isinstance(widths, dict):
            missing = [name for name in self.layers if name not in widths]
            if missing:
                raise ValueError(
                    f"no width given for {missing[0]} (the latency model covers {len(self.layers)} MLPs)"
                )
            widths = [widths[name] for name in self.layers]
        if len(widths) != len(self.layers):
            raise ValueError(f"{len(widths)} widths for a latency model of {len(self.layers)} MLPs")
        return sum(w * p for w, p in zip(widths, self.params_per_channel, strict=True))

    def weights(self, widths: list[int] | dict[str, int], kv_groups: int | None = None) -> int:
        """The elastic weights a sub-network keeps (``kv_groups``: None = every KV group)."""
        if self.kv_heads is None:
            return self.mlp_params(widths)
        kept = self.kv_heads if kv_groups is None else kv_groups
        if not 0 < kept <= self.kv_heads:
            raise ValueError(f"{kept} KV groups is outside [1, {self.kv_heads}] for this latency model")
        return self.mlp_params(widths) + kept * self.params_per_kv_group

    def predict_ms(self, widths: list[int] | dict[str, int], kv_groups: int | None = None) -> float:
        """Predicted decode milliseconds per step of the sub-network with these MLP widths (and KV groups)."""
        return on_line((self.intercept_ms, self.ms_per_mparam), self.weights(widths, kv_groups))

    def errors(self, role: str) -> dict[str, float | None]:
        errs = [abs(p.error) for p in self.points if p.role == role and p.error is not None]
        if not errs:
            return {"mean_abs": None, "max_abs": None}
        return {"mean_abs": float(np.mean(errs)), "max_abs": float(np.max(errs))}

    def check_fits(self, mlp_sizes: dict[str, int], kv_heads: int | None = None) -> None:
        """Refuse a super-network whose MLPs (or elastic heads) are not the ones this model was measured on."""
        check_slope(self.ms_per_mparam, self.points)
        if kv_heads != self.kv_heads:
            measured = f"with {self.kv_heads} elastic KV groups" if self.kv_heads else "without elastic heads"
            given = f"{kv_heads} elastic KV groups" if kv_heads else "no elastic heads"
            raise ValueError(
                f"the latency model was measured {measured}, this super-network has {given}; fit it with the "
                "same bootstrapNAS.elasticity.heads"
            )
        if mlp_sizes != dict(zip(self.layers, self.sizes, strict=True)):
            raise ValueError(
                "the latency model was measured on MLPs of other names or sizes than this super-network's "
                f"({len(self.layers)} layers, sizes {sorted(set(self.sizes))} against "
                f"{len(mlp_sizes)} layers, sizes {sorted(set(mlp_sizes.values()))}); fit it on this base"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "fit_error": self.errors("fit"),
            "holdout_error": self.errors("holdout"),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        path = Path(path)
        if path.is_dir():
            path = path / LATENCY_MODEL
        if not path.is_file():
            raise FileNotFoundError(
                f"no latency model at {path} (write one with `nncf-elastic-lora latency`)"
            )
        try:
            data = json.loads(path.read_text())
            data = {k: v for k, v in data.items() if k not in ("fit_error", "holdout_error")}
            points = [LatencyPoint(**_renamed(p)) for p in data.pop("points", [])]
            model = cls(**data, points=points)
            if not len(model.layers) == len(model.sizes) == len(model.params_per_channel) > 0:
                raise TypeError("layers, sizes and params_per_channel differ in length")
        except (ValueError, AttributeError, TypeError) as err:  # JSON and Unicode errors are ValueErrors
            raise ValueError(f"{path} is not a latency model written by this package ({err})") from None
        try:
            model.check_values()
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{path} is damaged: {err}; fit it again with `nncf-elastic-lora latency`"
            ) from None
        return model

    def check_values(self) -> None:
        """Refuse numbers no fit writes: NaN, inf, strings, a slope <= 0, negative or zero sizes."""
        json_number(self.intercept_ms, "intercept_ms")
        json_number(self.ms_per_mparam, "ms_per_mparam", above=0)
        json_number(self.batch_size, "batch_size", integer=True, minimum=1)
        if self.weight_format not in ("fp32", "fp16", "int8", "int4"):
            raise ValueError(f"weight_format is {self.weight_format!r}, expected fp32, fp16, int8 or int4")
        if not all(isinstance(name, str) and name for name in self.layers):
            raise ValueError("layers must be module names")
        for i, (size, per) in enumerate(zip(self.sizes, self.params_per_channel, strict=True)):
            json_number(size, f"sizes[{i}]", integer=True, minimum=1)
            json_number(per, f"params_per_channel[{i}]", integer=True, minimum=1)
        if self.kv_heads is not None:
            json_number(self.kv_heads, "kv_heads", integer=True, minimum=1)
        json_number(self.params_per_kv_group, "params_per_kv_group", integer=True, minimum=0)
        for i, p in enumerate(self.points):
            if p.role not in ("fit", "holdout"):
                raise ValueError(f"points[{i}].role is {p.role!r}, expected 'fit' or 'holdout'")
            json_number(p.weights, f"points[{i}].weights", integer=True, minimum=0)
            json_number(p.measured_ms, f"points[{i}].measured_ms", above=0)
            if p.predicted_ms is not None:
                json_number(p.predicted_ms, f"points[{i}].predicted_ms")


def _renamed(point: dict[str, Any]) -> dict[str, Any]:
    """A point as written before heads were elastic named its weights ``mlp_params``."""
    if isinstance(point, dict) and "mlp_params" in point and "weights" not in point:
        point = {**point, "weights": point["mlp_params"]}
        del point["mlp_params"]
    return point


def fit_line(params: list[int], ms: list[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope per million)`` of ``ms`` against ``params``."""
    if len(set(params)) < 2:
        raise ValueError("a latency fit needs at least two different sub-network sizes")
    slope, intercept = np.polyfit(np.asarray(params, float) / 1e6, np.asarray(ms, float), 1)
    return float(intercept), float(slope)


def on_line(line: tuple[float, float], params: int) -> float:
    """Milliseconds at ``params`` elastic weights on ``(intercept, slope per million)``."""
    return line[0] + line[1] * params / 1e6


def check_slope(slope: float, points: list[LatencyPoint]) -> None:
    """Refuse a fit in which decode time does not grow with the weights (noise swamped the widths)."""
    if slope > 0:
        return
    measured = ", ".join(f"{p.weights:,} weights: {p.measured_ms:.2f} ms" for p in points if p.role == "fit")
    raise ValueError(
        f"the fitted decode time does not grow with the elastic weights (slope {slope:.4g} ms per million; measured "
        f"{measured}): the measurements are noise; measure on a quiet machine, or raise "
        "bootstrapNAS.search.latency.repeats and new_tokens"
    )


def mlp_layout(model: nn.Module) -> tuple[list[str], list[int], list[int]]:
    """``(down_proj names, intermediate sizes, weights per intermediate channel)`` of every gated MLP."""
    names, sizes, per_channel = [], [], []
    for mlp in gated_mlps(model):
        gate, up, down = (model.get_submodule(n) for n in (mlp.gate, mlp.up, mlp.down))
        names.append(mlp.down)
        sizes.append(intermediate_size(model, mlp))
        per_channel.append(gate.in_features + up.in_features + down.out_features)
    return names, sizes, per_channel


def attention_layout(model: nn.Module) -> tuple[int, int]:
    """``(KV heads per layer, weights one KV group holds over all layers)``: q, k, v rows and o columns."""
    atts = attentions(model)
    per_group = 0
    for a in atts:
        hidden = model.get_submodule(a.q).in_features
        per_group += hidden * (a.channels_per_group + 2 * a.head_dim) + model.get_submodule(
            a.o
        ).out_features * (a.channels_per_group)
    return atts[0].num_kv_heads, per_group


def sample_widths(choices: list[list[int]], count: int, seed: int, avoid: list[list[int]]) -> list[list[int]]:
    """``count`` distinct random per-layer width configurations, none of them in ``avoid``."""
    rng, seen, out = random.Random(seed), {tuple(w) for w in avoid}, []
    for _ in range(1000 * max(count, 1)):
        if len(out) == count:
            break
        widths = [rng.choice(c) for c in choices]
        if tuple(widths) not in seen:
            seen.add(tuple(widths))
            out.append(widths)
    return out


def measure_decode_ms(ir: Path, *, label: str, batch_size: int, **settings: Any) -> float:
    """GenAI decode milliseconds per step of the IR at ``ir`` (its own process; median of the repeats)."""
    result = benchmark_models([(label, ir, "genai")], batch_sizes=[batch_size], **settings)[0]
    return float(result["batches"][0]["decode_ms_per_step"])


def _base_layout(base: nn.Module, elastic_heads: bool) -> dict[str, Any]:
    """The base's shapes as :class:`LatencyModel` fields: MLP names, sizes, weights per channel, KV groups."""
    layers, sizes, per_channel = mlp_layout(base)
    kv_heads, per_kv_group = attention_layout(base) if elastic_heads else (None, 0)
    return {
        "layers": layers,
        "sizes": sizes,
        "params_per_channel": per_channel,
        "kv_heads": kv_heads,
        "params_per_kv_group": per_kv_group,
    }


def _latency_configs(
    widths: list[list[int]], kv_groups: list[int] | None, holdout: int, seed: int
) -> list[tuple[str, list[int], int | None]]:
    """``(role, per-layer widths, KV groups kept)`` of each sub-network to measure: fit, then held out."""
    levels = min(len(c) for c in widths)
    fit = [[c[i] for c in widths] for i in range(levels)]
    held = sample_widths(widths, holdout, seed, avoid=fit)
    full = max(kv_groups) if kv_groups else None
    configs = [("fit", w, full) for w in fit]
    configs += [("fit", fit[0], c) for c in sorted(kv_groups or [], reverse=True) if c != full]
    rng = random.Random(seed)
    configs += [("holdout", w, rng.choice(kv_groups) if kv_groups else None) for w in held]
    return configs


def _measure_subnetwork(
    base: nn.Module,
    tokenizer: Any,
    model: ModelConfig,
    role: str,
    config: list[int],
    kept: int | None,
    work_dir: str | Path | None,
    export_options: dict[str, Any],
    benchmark_options: dict[str, Any],
) -> float:
    """Slice a copy of ``base`` to ``config`` (and ``kept`` KV groups), export it, measure its decode ms."""
    from .elastic.heads import set_kv_groups

    with tempfile.TemporaryDirectory(prefix=".nel-latency-", dir=work_dir) as tmp:
        sliced, ir = Path(tmp) / "sliced", Path(tmp) / "ir"
        sub = copy.deepcopy(base)
        set_mlp_widths(sub, config)
        if kept is not None:
            set_kv_groups(sub, kept)
        sub.save_pretrained(sliced)
        tokenizer.save_pretrained(sliced)
        del sub
        export_openvino(
            model.model_copy(update={"name_or_path": str(sliced)}), ir, **export_options, genai_device=None
        )
        return measure_decode_ms(
            ir,
            label=f"{role} {sorted(set(config))}" + (f" kv {kept}" if kept else ""),
            **benchmark_options,
        )


def _fit_points(
    measured: list[tuple[str, list[int], int | None, float]], per_channel: list[int], per_kv_group: int
) -> tuple[float, float, list[LatencyPoint]]:
    """``(intercept, slope, points)``: the line through the fit points, each point with its prediction
    (held out: by that line; fit: leave-one-out)."""
    params = [
        sum(w * p for w, p in zip(c, per_channel, strict=True)) + (kept or 0) * per_kv_group
        for _, c, kept, _ in measured
    ]
    fit_idx = [i for i, m in enumerate(measured) if m[0] == "fit"]
    intercept, slope = fit_line([params[i] for i in fit_idx], [measured[i][3] for i in fit_idx])
    points = []
    for i, (role, config, kept, ms) in enumerate(measured):
        if role == "fit":  # leave-one-out: predicted by a line through the other fit points
            others = [j for j in fit_idx if j != i]
            if len({params[j] for j in others}) >= 2:
                line = fit_line([params[j] for j in others], [measured[j][3] for j in others])
                predicted = on_line(line, params[i])
            else:
                predicted = None
        else:
            predicted = on_line((intercept, slope), params[i])
        points.append(LatencyPoint(role, config, params[i], ms, predicted, kept))
    return intercept, slope, points


def _fitted_model(
    measured: list[tuple[str, list[int], int | None, float]],
    layout: dict[str, Any],
    *,
    batch_size: int,
    weight_format: str,
) -> LatencyModel:
    """The latency model fitted on ``measured`` (refused when time does not grow with the weights); logged."""
    from .runtime import machine_info

    intercept, slope, points = _fit_points(
        measured, layout["params_per_channel"], layout["params_per_kv_group"]
    )
    check_slope(slope, points)
    fitted = LatencyModel(
        intercept_ms=intercept,
        ms_per_mparam=slope,
        batch_size=batch_size,
        weight_format=weight_format,
        points=points,
        machine=machine_info(),
        **layout,
    )
    log.info(
        "latency model: %.3f ms + %.4f ms per million elastic weights; held-out error %s",
        intercept,
        slope,
        fitted.errors("holdout"),
    )
    return fitted


def fit_latency_model(
    model: ModelConfig,
    *,
    widths: list[list[int]],
    kv_groups: list[int] | None = None,
    holdout: int = 2,
    batch_size: int = 1,
    weight_format: str = "fp32",
    group_size: int = 64,
    sym: bool = False,
    ratio: float = 1.0,
    group_size_fallback: str = "adjust",
    device: str = "CPU",
    properties: dict[str, Any] | None = None,
    work_dir: str | Path | None = None,
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    repeats: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> LatencyModel:
    """Measure sub-networks of ``model`` (the ordered base) and fit the latency model.

    ``widths``: the per-layer width choices (one list per decoder layer, largest first). Every layer at
    its i-th choice is a fit point; ``holdout`` random mixes are measured to report the error.
    ``kv_groups``: the KV-group counts when the heads are elastic (largest first); each smaller count
    adds a fit point at full MLP width, and the held-out mixes draw a count too.
    ``work_dir``: where each sub-network's checkpoint and IR are written while it is measured (a
    temporary folder inside it; default the system's).
    """
    if not widths or min(len(c) for c in widths) < 2:
        raise ValueError(
            "a latency model needs at least one gated MLP with at least two widths to fit a line"
        )
    from tqdm.auto import tqdm

    # Read once, on the CPU (each point slices a copy and exports it to OpenVINO, which traces on the CPU).
    base, tokenizer = load_model(model.model_copy(update={"device": "cpu"}))
    layout = _base_layout(base, elastic_heads=bool(kv_groups))
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    if len(widths) != len(layout["layers"]):
        raise ValueError(f"{len(widths)} lists of widths for a model with {len(layout['layers'])} gated MLPs")
    configs = _latency_configs(widths, kv_groups, holdout, seed)
    export_options = dict(
        weight_format=weight_format,
        group_size=group_size,
        sym=sym,
        ratio=ratio,
        group_size_fallback=group_size_fallback,
    )
    benchmark_options = dict(
        device=device,
        properties=properties or {},
        batch_size=batch_size,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        repeats=repeats,
    )
    measured: list[tuple[str, list[int], int | None, float]] = []
    for role, config, kept in tqdm(configs, desc="latency model: measure sub-networks", disable=not progress):
        ms = _measure_subnetwork(
            base, tokenizer, model, role, config, kept, work_dir, export_options, benchmark_options
        )
        measured.append((role, config, kept, ms))
    del base
    return _fitted_model(measured, layout, batch_size=batch_size, weight_format=weight_format)


def plot_latency_model(model: LatencyModel, path: str | Path) -> Path:
    """Measured decode time against the elastic weights, the fitted line, held-out points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for role, marker, colour in (("fit", "o", "#1f6feb"), ("holdout", "s", "#cf222e")):
        pts = [p for p in model.points if p.role == role]
        ax.scatter(
            [p.weights / 1e6 for p in pts],
            [p.measured_ms for p in pts],
            marker=marker,
            c=colour,
            label=role,
        )
    xs = np.array([min(p.weights for p in model.points), max(p.weights for p in model.points)]) / 1e6
    ax.plot(xs, model.intercept_ms + model.ms_per_mparam * xs, "--", c="#57606a", label="fitted")
    held, loo = model.errors("holdout")["mean_abs"], model.errors("fit")["mean_abs"]
    suffix = "".join(
        f", {name} error {100 * err:.1f} %"
        for name, err in (("held-out", held), ("leave-one-out", loo))
        if err
    )
    ax.set_title(f"decode latency, batch {model.batch_size}, {model.weight_format}{suffix}", fontsize=10)
    ax.set_xlabel(
        "MLP + attention weights kept (millions)" if model.kv_heads else "MLP weights kept (millions)"
    )
    ax.set_ylabel("ms per decode step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
