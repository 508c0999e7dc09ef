"""Merges that keep what the base was compressed for: its zeros (SparsePEFT) and its INT4 grid (QA).

- :func:`merge_sparse` / :func:`merged_model`: ``W + Lp`` at a sub-network configuration, with
  ``Lp = (s · B A) ⊙ (W ≠ 0)``, so the merged weight has the base's zeros, position for position.
- :func:`merge_qa`: the INT4 codes ``quantize(W + Lp)`` under the base's frozen scales and zero
  points, the very codes the QA-SparsePEFT forward computed during training, bit for bit.
- :func:`merge_adapter_from_dirs`: the same from a base model and a sub-adapter folder written by
  :meth:`~nncf_elastic_lora.elastic.ElasticLoraSuperNet.save_sub_adapter`, after checking that the
  adapter was trained on this base (and, for QA, through these scales); :func:`merge_to_directory`
  also writes the result, atomically.

Every merge works on copies unless asked otherwise, checks each merged tensor for NaN/Inf and
checks that every zero of the base is still zero; a failure names the module and nothing is written.
The weights, per module, come from the same pure functions as the trained forward
(:mod:`nncf_elastic_lora.elastic.lora`), which is what makes the merges exact.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import check_adapter_fits
from .elastic.lora import (
    ADAPTER_LAYERS,
    AdapterKind,
    ElasticLoraLinear,
    FQLoraLinear,
    QASparsePeftLinear,
    check_dequantized_base,
    check_float_source,
    qa_codes,
    sparse_merged_weight,
    trains_on_float_weights,
)
from .elastic.supernet import (
    SEARCH_SPACE_FILE,
    SUB_ADAPTER_FILE,
    ElasticLoraSuperNet,
    SubnetConfig,
    check_adapter_provenance,
)
from .formats import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGE_REPORT, QUANTIZER_PREFIX
from .outputs import json_number, save_checkpoint
from .quantization import QuantizedWeight, dequantize

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_QUANTIZER_KEY = re.compile(
    rf"^(?:base_model\.model\.)?(?P<module>.+)\.{re.escape(QUANTIZER_PREFIX)}(?P<key>\w+)$"
)


class MergeError(ValueError):
    """A merge that would not give the trained model (NaN, a lost zero, another base)."""


@dataclass
class MergeResult:
    """A merged model and, for QA-SparsePEFT, the INT4 codes of every quantized module."""

    model: nn.Module
    kind: AdapterKind
    quantized: dict[str, QuantizedWeight] | None = None
    report: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- per-module maths and checks


def check_finite(*, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Raise naming ``name`` (and the tensor) when any tensor holds NaN or Inf."""
    for what, t in tensors.items():
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise MergeError(
                f"module {name!r}: {what} holds {bad} NaN/Inf value(s); the adapter is broken "
                "(diverged training or a corrupt file): nothing was merged"
            )


def check_zeros_kept(*, name: str, base: torch.Tensor, merged: torch.Tensor) -> int:
    """Raise when a zero of ``base`` is not zero in ``merged``; return how many *new* zeros appeared
    (an update that cancels a weight exactly, or a QA code that rounds onto the zero point)."""
    base_zero = base == 0
    lost = int((merged[base_zero] != 0).sum())
    if lost:
        raise MergeError(
            f"module {name!r}: the merge fills {lost} of the base's {int(base_zero.sum())} zeros; the "
            "update was not masked by the base's sparsity (was the adapter trained on another base?)"
        )
    return int(((merged == 0) & ~base_zero).sum())


def merge_module(
    *,
    name: str,
    weight: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scaling: float,
    quantized: QuantizedWeight | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """One module's merge: ``(merged weight in the base's dtype, INT4 codes or None, new zeros)``.

    ``quantized`` given: QA-SparsePEFT (``weight`` must be its dequantisation; only the scales,
    zero points, group size and bits are read); else SparsePEFT.
    """
    check_finite(name=name, tensors={"lora_A": a, "lora_B": b})
    mask = weight != 0
    merged = sparse_merged_weight(weight, a, b, scaling, mask)
    check_finite(name=name, tensors={"merged weight": merged})
    codes = None
    if quantized is not None:
        codes = qa_codes(merged, quantized)
        merged = dequantize(codes, quantized.scale, quantized.zero_point, quantized.group_size)
    merged = merged.to(weight.dtype)
    check_finite(name=name, tensors={"merged weight": merged})  # e.g. float32 -> float16 overflow
    return merged, codes, check_zeros_kept(name=name, base=weight, merged=merged)


def _with_codes(q: QuantizedWeight, codes: torch.Tensor) -> QuantizedWeight:
    return QuantizedWeight(
        codes=codes.detach().cpu(),
        scale=q.scale.detach().cpu().clone(),
        zero_point=None if q.zero_point is None else q.zero_point.detach().cpu().clone(),
        group_size=q.group_size,
        bits=q.bits,
    )


def _on(q: QuantizedWeight, device: torch.device) -> QuantizedWeight:
    zp = None if q.zero_point is None else q.zero_point.to(device)
    fw = None if q.float_weight is None else q.float_weight.to(device)
    return QuantizedWeight(q.codes.to(device), q.scale.to(device), zp, q.group_size, q.bits, fw)


def plain_model(model: nn.Module, weights: dict[str, torch.Tensor], inplace: bool) -> nn.Module:
    """``model`` with every elastic adapter replaced by its base ``nn.Linear`` holding ``weights``."""
    out = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for name, w in weights.items():
            linear = out.get_submodule(name)
            if isinstance(linear, ElasticLoraLinear):
                linear = linear.base_layer
            linear.weight.copy_(w)
    wrapped = [n for n, m in out.named_modules() if isinstance(m, ElasticLoraLinear)]
    for name in wrapped:
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, out.get_submodule(name).base_layer)
    return out


# ---------------------------------------------------------------------- from a live super-network


def _require_kind(supernet: ElasticLoraSuperNet, kind: AdapterKind, entry: str) -> None:
    if supernet.kind is kind:
        return
    hint = {
        AdapterKind.LORA: "a plain lora adapter fills the base's zeros when merged: ship it unmerged "
        "(Shears), or merge it with peft's merge_and_unload",
        AdapterKind.SPARSEPEFT: "use merge_sparse / merged_model",
        AdapterKind.QA_SPARSEPEFT: "use merge_qa (it merges into the INT4 grid)",
        AdapterKind.FQ_LORA: "use merge_qa (it merges into the trained INT4 grid)",
        AdapterKind.FQ_SPARSEPEFT: "use merge_qa (it merges into the trained INT4 grid)",
    }[supernet.kind]
    raise MergeError(
        f"{entry} merges {kind.value} adapters, this super-network's are {supernet.kind.value}: {hint}"
    )


def merge_fq_module(*, name: str, layer: FQLoraLinear, rank: int) -> tuple[torch.Tensor, QuantizedWeight]:
    """One ``fq_lora`` / ``fq_sparsepeft`` module's merge: ``(dequantized weight in the base's dtype, codes under
    the trained grid)``.

    The codes are those of the trained ``FQ(W + update)``; the scales are the trained ones, in float16. A masked
    (``fq_sparsepeft``) module whose merge is not zero at a pruned position is refused.
    """
    a, b = layer.lora_weights(rank)
    check_finite(name=name, tensors={"lora_A": a, "lora_B": b, **layer.quantizer_state()})
    with torch.no_grad():
        q = layer.grid
        q.codes = layer.codes(rank)
        merged = q.dequantize(layer.base_layer.weight.dtype)
    check_finite(name=name, tensors={"merged weight": merged})
    lost = layer.lost_zeros(merged)
    if lost:
        raise MergeError(
            f"module {name!r}: the merged INT4 weight is not zero at {lost} pruned positions (a trained range "
            "without a zero code?); the fq_sparsepeft merge must keep the base's zeros"
        )
    return merged, _with_codes(q, q.codes)


def _merge_live(supernet: ElasticLoraSuperNet, config: SubnetConfig | None):
    config = config or supernet.get_active_config()
    supernet.validate_config(config)
    weights, codes, new_zeros = {}, {}, 0
    with torch.no_grad():
        for name, rank in supernet.module_ranks(config).items():
            layer = supernet.adapters[name]
            if isinstance(layer, FQLoraLinear):  # codes under its trained grid: a QuantizedWeight per module
                weights[name], codes[name] = merge_fq_module(name=name, layer=layer, rank=rank)
                continue
            a, b = layer.lora_weights(rank)
            q = layer.grid if isinstance(layer, QASparsePeftLinear) else None
            weights[name], c, n = merge_module(
                name=name, weight=layer.base_layer.weight, a=a, b=b, scaling=layer.scaling, quantized=q
            )
            new_zeros += n
            if c is not None:
                codes[name] = c
    return config, weights, codes, new_zeros


def merge_sparse(
    *, supernet: ElasticLoraSuperNet, config: SubnetConfig | None = None
) -> dict[str, torch.Tensor]:
    """``{module name: W + Lp}`` of a SparsePEFT super-network at ``config`` (default: the active one).

    New tensors in the base's dtype; the model is not touched.
    """
    _require_kind(supernet, AdapterKind.SPARSEPEFT, "merge_sparse")
    return _merge_live(supernet, config)[1]


def merged_model(
    *, supernet: ElasticLoraSuperNet, config: SubnetConfig | None = None, inplace: bool = False
) -> nn.Module:
    """A plain HF model (adapters removed, ``nn.Linear``s restored) with ``W + Lp`` merged at ``config``.

    ``save_pretrained`` writes it as a standard checkpoint with the base's sparsity. A copy unless
    ``inplace`` (then the live model is unwrapped and ``supernet`` is spent).
    """
    weights = merge_sparse(supernet=supernet, config=config)
    return plain_model(supernet.model, weights, inplace)


def merge_qa(
    *, supernet: ElasticLoraSuperNet, config: SubnetConfig | None = None, inplace: bool = False
) -> tuple[nn.Module, dict[str, QuantizedWeight]]:
    """A QA-SparsePEFT, FQ-LoRA or FQ-SparsePEFT merge: ``(plain model with dequantized weights, {module:
    QuantizedWeight})``.

    The codes are those the trained forward computed: ``quantize(W + Lp)`` with the base's frozen scales and
    zero points (QA-SparsePEFT), or under the trained scales (FQ kinds, which carry them in their entries); the returned dict covers every module the base quantized (the
    non-adapted ones keep their codes), so it describes the whole merged INT4 model.
    """
    if not supernet.kind.int4_trained:
        _require_kind(supernet, AdapterKind.QA_SPARSEPEFT, "merge_qa")
    _, weights, codes, _ = _merge_live(supernet, config)
    assert supernet.quantized is not None  # attach() requires it for this kind
    return plain_model(supernet.model, weights, inplace), _all_quantized(supernet.quantized, codes)


def _all_quantized(
    base: dict[str, QuantizedWeight], merged: dict[str, torch.Tensor | QuantizedWeight]
) -> dict[str, QuantizedWeight]:
    """Every module the base quantized: merged ones with their new codes (fq_lora: and grid), others as they were."""
    out = {}
    for name, q in base.items():
        new = merged.get(name)
        out[name] = (
            new if isinstance(new, QuantizedWeight) else _with_codes(q, q.codes if new is None else new)
        )
    return out


# ---------------------------------------------------------------------- from disk


def read_sub_adapter_record(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The sub-adapter's :data:`SUB_ADAPTER_FILE` (kind, scaling, fingerprints), or None for a plain peft folder."""
    path = Path(adapter_dir) / SUB_ADAPTER_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        AdapterKind.parse(record["adapter_kind"])
        json_number(record["scaling"], "scaling", above=0)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path.resolve()} is not a valid sub-adapter record ({exc}); re-create the adapter"
        ) from None
    return record


def peft_scaling(peft_config: dict[str, Any], name: str, rank: int) -> float:
    """peft's ``lora_alpha / r`` for module ``name`` (pattern keys match a module name's end)."""
    if peft_config.get("use_rslora") or peft_config.get("use_dora"):
        raise ValueError(
            "rsLoRA/DoRA adapters are not sparse-preserving LoRA adapters; cannot merge them here"
        )

    def lookup(patterns: dict[str, Any], default: Any) -> Any:
        for key, value in (patterns or {}).items():
            if re.match(rf"(.*\.)?(?:{key})$", name):
                return value
        return default

    alpha = lookup(peft_config.get("alpha_pattern"), peft_config["lora_alpha"])
    return float(alpha) / rank


def _load_adapter_tensors(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(adapter_dir / ADAPTER_WEIGHTS).items():
        m = _PEFT_KEY.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["which"]] = tensor
    incomplete = sorted(n for n, p in pairs.items() if set(p) != {"A", "B"})
    if incomplete:
        raise ValueError(f"adapter {adapter_dir.resolve()}: {incomplete[0]!r} lacks lora_A or lora_B weights")
    return {n: (p["A"], p["B"]) for n, p in pairs.items()}


def check_not_channel_sliced(adapter: str | Path) -> None:
    """Refuse a LoNAS (Mode B) sub-adapter with sliced MLPs: as a peft folder it would run at full width."""
    record = read_sub_adapter_record(adapter) or {}
    widths, sizes = record.get("mlp_widths") or {}, record.get("mlp_sizes") or {}
    sliced = [m for m, w in widths.items() if w < sizes.get(m, w)]
    kv_groups, kv_heads = record.get("kv_groups"), record.get("kv_heads")
    if kv_groups is not None and kv_heads is not None and kv_groups < kv_heads:
        raise MergeError(
            f"{adapter} is a LoNAS sub-network that keeps {kv_groups} of {kv_heads} KV groups per attention: "
            "applied as a peft adapter it would run with every head. Extract it (`nncf-elastic-lora extract "
            "--subnet <this folder>`) and export the extracted model with --model"
        )
    if sliced:
        raise MergeError(
            f"{adapter} is a LoNAS sub-network whose MLPs are narrower than the base's ({len(sliced)} layers, e.g. "
            f"{sliced[0]} at {widths[sliced[0]]} of {sizes[sliced[0]]} channels): applied as a peft adapter it "
            "would run at full width. Extract it (`nncf-elastic-lora extract --subnet <this folder>`) and export "
            "the extracted model with --model"
        )


def adapter_base_weight(adapter_dir: str | Path) -> str | None:
    """The ``base_weight`` an adapter folder records (:func:`~nncf_elastic_lora.elastic.lora.trains_on_float_weights`):
    from its sub-adapter record, else (a super-adapter folder) from its search space; None where neither does."""
    record = read_sub_adapter_record(adapter_dir)
    if record is not None:
        return record.get("base_weight")
    spec = Path(adapter_dir) / SEARCH_SPACE_FILE
    try:
        data = json.loads(spec.read_text()) if spec.is_file() else {}
    except ValueError:
        return None  # loading the folder says what is wrong with it
    return data.get("base_weight") if isinstance(data, dict) else None


def adapter_trains_on_float(adapter_dir: str | Path, kind: AdapterKind | str, qa_default: str) -> bool:
    """Whether the adapter folder ``adapter_dir`` of ``kind`` trained on its INT4 base's float source weights
    (:func:`~nncf_elastic_lora.elastic.lora.trains_on_float_weights`), as the folder records
    (:func:`adapter_base_weight`); a QA folder that records none (a plain peft folder) trained on ``qa_default``."""
    recorded = adapter_base_weight(adapter_dir)
    if recorded is None and AdapterKind.parse(kind) is AdapterKind.QA_SPARSEPEFT:
        recorded = qa_default
    try:
        return trains_on_float_weights(kind, {"base_weight": recorded})
    except ValueError as exc:
        raise MergeError(f"adapter {Path(adapter_dir).resolve()}: {exc}") from None


def _trained_weight(name: str, q: QuantizedWeight, on_float: bool, adapter_dir: Path) -> QuantizedWeight:
    """``q`` as the adapter trained through it: its float source kept where it trained on it (refused when it is
    missing, as the merge would round another weight than the trained one), dropped where it did not."""
    if not on_float:
        return QuantizedWeight(q.codes, q.scale, q.zero_point, q.group_size, q.bits)
    if q.float_weight is None:
        raise MergeError(
            f"{adapter_dir} was trained on the float weights its INT4 base was quantized from, but none were "
            f"loaded for {name!r}: load the base with its float source "
            "(nncf_elastic_lora.stages.evaluate.base_quantized_weights(..., float_source=True))"
        )
    return q


def merge_adapter_from_dirs(
    *,
    model: nn.Module | str | Path,
    adapter_dir: str | Path,
    adapter_kind: AdapterKind | str | None = None,
    quantized: dict[str, QuantizedWeight] | None = None,
    base_fingerprint: str | None = None,
    inplace: bool = False,
) -> MergeResult:
    """Merge a saved sub-adapter into ``model`` (a loaded base, or its checkpoint folder).

    The adapter's kind comes from its :data:`SUB_ADAPTER_FILE` (``adapter_kind`` may confirm it, or
    name it for a plain peft folder without one). Refused with a clear error, before anything is
    merged: an adapter that does not fit the model, one recorded for another base than
    ``base_fingerprint``, a QA adapter without ``quantized`` or trained through other scales, a base
    weight that is not the dequantisation of ``quantized``, NaN/Inf, a lost zero.
    """
    adapter_dir = Path(adapter_dir)
    if not isinstance(model, nn.Module):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model), torch_dtype=torch.float32)
    check_adapter_fits(model, adapter_dir)
    check_not_channel_sliced(adapter_dir)
    record = read_sub_adapter_record(adapter_dir)
    kind = _resolve_kind(adapter_dir, record, adapter_kind)
    check_adapter_provenance(
        adapter_dir,
        kind=kind,
        recorded_base=(record or {}).get("base_fingerprint"),
        recorded_scales=(record or {}).get("scales_fingerprint"),
        base_fingerprint=base_fingerprint,
        quantized=quantized,
    )
    # a folder recording no base weight trained as its caller loaded the base: on float weights if all are given
    given = bool(quantized) and all(q.float_weight is not None for q in quantized.values())
    on_float = kind.int4_trained and adapter_trains_on_float(adapter_dir, kind, "float" if given else "dequantized")
    if kind.trains_ranges:
        weights, codes, ranks = _merge_fq_from_dir(model, adapter_dir, kind, record, quantized, on_float)
        zeros_lost = new_zeros = 0
        for name, merged in weights.items():  # what the update did to the INT4 base's zeros (fq_lora: not masked;
            # fq_sparsepeft: kept the sparse model's, checked per module, but may move weights that had rounded to 0)
            base_zero = model.get_submodule(name).weight == 0
            zeros_lost += int((base_zero & (merged != 0)).sum())
            new_zeros += int((~base_zero & (merged == 0)).sum())
    else:
        weights, codes, ranks, new_zeros, zeros_lost = _merge_masked_from_dir(
            model, adapter_dir, kind, record, quantized, on_float
        )
    qweights = None
    if kind.int4_trained:
        assert quantized is not None
        qweights = _all_quantized(quantized, codes)
    report = {
        "adapter": str(adapter_dir.resolve()),
        "adapter_kind": kind.value,
        "modules_merged": len(weights),
        "module_ranks": ranks,
        "base_zeros": sum(int((model.get_submodule(n).weight == 0).sum()) for n in weights),
        "new_zeros": new_zeros,
        "zeros_lost": zeros_lost,
        "base_fingerprint": base_fingerprint,
        "scales_fingerprint": (record or {}).get("scales_fingerprint"),
    }
    return MergeResult(plain_model(model, weights, inplace), kind, qweights, report)


def _merge_masked_from_dir(
    model: nn.Module,
    adapter_dir: Path,
    kind: AdapterKind,
    record: dict[str, Any] | None,
    quantized: dict[str, QuantizedWeight] | None,
    on_float: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int], int, int]:
    """A SparsePEFT / QA-SparsePEFT sub-adapter's merge: ``(weights, codes, ranks, new zeros, zeros lost)``, the
    zeros counted against the base ``model`` holds (for QA on the float weights: the INT4 base's)."""
    peft_config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    weights, codes, ranks, new_zeros, zeros_lost = {}, {}, {}, 0, 0
    masked = _load_adapter_tensors(adapter_dir)
    if on_float:  # a module at rank 0 (not in the folder) still re-rounds its float weight, as the forward did
        for name, rank in (record or {}).get("module_ranks", {}).items():
            if rank == 0 and name not in masked:
                linear = model.get_submodule(name)
                masked[name] = (torch.zeros(0, linear.in_features), torch.zeros(linear.out_features, 0))
    with torch.no_grad():
        for name, (a, b) in sorted(masked.items()):
            linear = model.get_submodule(name)
            w = linear.weight
            rank = ranks[name] = int(a.shape[0])
            scaling = float(record["scaling"]) if record else peft_scaling(peft_config, name, max(rank, 1))
            q = None
            if kind is AdapterKind.QA_SPARSEPEFT:
                q = (quantized or {}).get(name)
                if q is None:
                    raise MergeError(f"module {name!r} is adapted but the quantized weights do not cover it")
                check_dequantized_base(w, q, name)
                q = _on(_trained_weight(name, q, on_float, adapter_dir), w.device)
                if q.float_weight is not None:  # no layer is built here to check it (FQLoraLinear checks its own)
                    check_float_source(q.float_weight, q, name)
            a, b = a.to(w.device), b.to(w.device)
            trained = q.float_weight.to(w) if q is not None and q.float_weight is not None else w
            weights[name], c, n = merge_module(name=name, weight=trained, a=a, b=b, scaling=scaling, quantized=q)
            if trained is not w:  # the zeros the masked update kept are the float weight's: count the INT4 base's
                base_zero = w == 0
                zeros_lost += int((base_zero & (weights[name] != 0)).sum())
                n = int((~base_zero & (weights[name] == 0)).sum())
            new_zeros += n
            if c is not None:
                codes[name] = c
    return weights, codes, ranks, new_zeros, zeros_lost


def _merge_fq_from_dir(
    model: nn.Module,
    adapter_dir: Path,
    kind: AdapterKind,
    record: dict[str, Any] | None,
    quantized: dict[str, QuantizedWeight] | None,
    on_float: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, QuantizedWeight], dict[str, int]]:
    """An ``fq_lora`` / ``fq_sparsepeft`` sub-adapter's merge: each module rebuilt as the trained layer (its ranges
    from the folder), on its float source weights where it trained on them (``on_float``)."""
    from safetensors.torch import load_file

    if record is None:
        raise MergeError(f"adapter {adapter_dir.resolve()}: an {kind.value} adapter needs its {SUB_ADAPTER_FILE}")
    pairs, ranges = _load_adapter_tensors(adapter_dir), {}
    for key, tensor in load_file(adapter_dir / ADAPTER_WEIGHTS).items():
        m = _QUANTIZER_KEY.match(key)
        if m:
            ranges.setdefault(m["module"], {})[m["key"]] = tensor
    weights, qweights, ranks = {}, {}, {}
    for name in sorted(ranges):
        q = (quantized or {}).get(name)
        if q is None:
            raise MergeError(f"module {name!r} is adapted but the quantized weights do not cover it")
        linear = model.get_submodule(name)
        a, b = pairs.get(name, (torch.zeros(0, linear.in_features), torch.zeros(linear.out_features, 0)))
        rank = ranks[name] = int(a.shape[0])
        trained = _on(_trained_weight(name, q, on_float, adapter_dir), linear.weight.device)
        # around a copy: the layer puts its float source into its base linear, and the model's must stay the INT4
        # base (the caller's, unless inplace; and what the merge report counts zeros against)
        layer = ADAPTER_LAYERS[kind](copy.deepcopy(linear), max(rank, 1), float(record["scaling"]) * max(rank, 1),
                                     quantized=trained, name=name)  # fmt: skip
        state = layer.quantizer_state()
        if set(ranges[name]) != set(state):
            raise MergeError(
                f"adapter {adapter_dir.resolve()}: {name!r} has quantizer tensors {sorted(ranges[name])}, "
                f"expected {sorted(state)} (an adapter of a symmetric base on an asymmetric one, or the reverse?)"
            )
        with torch.no_grad():
            layer.lora_A.weight[:rank].copy_(a)
            layer.lora_B.weight[:, :rank].copy_(b)
            for key, tensor in state.items():
                tensor.copy_(ranges[name][key])
        weights[name], qweights[name] = merge_fq_module(name=name, layer=layer, rank=rank)
    return weights, qweights, ranks


def _resolve_kind(
    adapter_dir: Path, record: dict[str, Any] | None, adapter_kind: AdapterKind | str | None
) -> AdapterKind:
    recorded = AdapterKind.parse(record["adapter_kind"]) if record else None
    given = AdapterKind.parse(adapter_kind) if adapter_kind is not None else None
    if recorded and given and recorded is not given:
        raise ValueError(f"adapter {adapter_dir.resolve()} is a {recorded.value} adapter, not {given.value}")
    kind = recorded or given
    if kind is None:
        raise ValueError(
            f"adapter {adapter_dir.resolve()} has no {SUB_ADAPTER_FILE} (not written by save_sub_adapter): "
            "say which kind it is (bootstrapNAS.training.adapter_kind, one of "
            f"{[k.value for k in AdapterKind if k is not AdapterKind.LORA]})"
        )
    if kind is AdapterKind.LORA:
        raise MergeError(
            f"adapter {adapter_dir.resolve()} is a plain lora adapter: merging it fills the base's zeros; "
            "ship it unmerged (Shears) or merge it with peft's merge_and_unload"
        )
    return kind


def merge_to_directory(
    *,
    model: nn.Module | str | Path,
    adapter_dir: str | Path,
    output: str | Path,
    adapter_kind: AdapterKind | str | None = None,
    quantized: dict[str, QuantizedWeight] | None = None,
    base_fingerprint: str | None = None,
    tokenizer: Any = None,
    write_quantized: Callable[[Path, dict[str, QuantizedWeight]], None] | None = None,
    describe: Callable[[MergeResult], dict[str, Any]] | None = None,
    inplace: bool | None = None,
    save_dtype: torch.dtype | None = None,
) -> MergeResult:
    """:func:`merge_adapter_from_dirs`, then write the merged checkpoint to ``output`` in one rename.

    ``inplace`` merges into ``model`` itself instead of a copy (default: only a model loaded here from
    a path), so a caller that loaded the model for the merge holds one copy, not two. ``save_dtype``
    writes a float merge in the base's own dtype (the merge itself runs in ``model``'s, e.g. float32);
    an INT4 merge keeps float32, whose dequantized weights equal its codes exactly.

    ``write_quantized(folder, qweights)`` writes a QA merge's INT4 codes beside the checkpoint (e.g. a
    wrapper of ``nncf_elastic_lora.int4.save_quantized_weights``); it is required for QA adapters.
    ``describe(result)`` returns extra fields for ``merge_report.json``, written in the same rename.
    Every check runs before the output is created, so a refused merge writes nothing.
    """
    result = merge_adapter_from_dirs(
        model=model,
        adapter_dir=adapter_dir,
        adapter_kind=adapter_kind,
        quantized=quantized,
        base_fingerprint=base_fingerprint,
        inplace=not isinstance(model, nn.Module) if inplace is None else inplace,
    )
    if save_dtype is not None and result.quantized is None:
        result.model.to(save_dtype)
    if result.quantized is not None and write_quantized is None:
        raise ValueError("a qa_sparsepeft merge needs write_quantized= to store its INT4 codes")

    def finish(tmp: Path) -> None:  # after the model is saved, before the report is written
        if result.quantized is not None:
            write_quantized(tmp, result.quantized)
        if describe is not None:  # the caller's facts go into the same atomic write as the merge
            result.report.update(describe(result))

    save_checkpoint(output, result.model, tokenizer, verb="merge", reports={MERGE_REPORT: result.report}, extra=finish)
    return result


__all__ = [
    "MergeError",
    "MergeResult",
    "check_finite",
    "check_zeros_kept",
    "merge_adapter_from_dirs",
    "merge_module",
    "merge_qa",
    "merge_sparse",
    "merge_to_directory",
    "merged_model",
    "read_sub_adapter_record",
]
