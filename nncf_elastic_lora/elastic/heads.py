"""LoNAS Mode B, attention: whole key-value groups of every decoder layer, scored, ordered, masked, sliced.

With grouped-query attention, key-value head ``k`` serves query heads ``k·g … k·g + g - 1`` (``g`` =
query heads per KV head; transformers' ``repeat_kv``). A **KV group** is one KV head with its ``g``
query heads: rows ``k·g·d …`` of ``q_proj`` (``d`` = head dim), rows ``k·d …`` of ``k_proj`` and
``v_proj``, columns ``k·g·d …`` of ``o_proj``. Dropping whole groups keeps GQA valid (every kept query
head keeps its KV head) and never splits one: the unit of everything here is the group.

- **Ordering** (:func:`order_kv_groups`): groups are permuted most important first, the same permutation
  on q/k/v rows and o columns, so the layer computes the same function (RoPE and attention act per
  head alike). Importance of a group: Wanda's score summed over its ``o_proj`` input columns,
  ``Σ_j Σ_i |W_o[i, j]| · ‖a_j‖₂`` (``a`` = the attention output, ``o_proj``'s input).
- **Elastic count in the super-network**: a :class:`~nncf_elastic_lora.elastic.channels.ChannelMask`
  on ``o_proj`` zeroes the columns of the dropped groups, which is exactly the sliced attention.
- **Extraction** (:func:`set_kv_groups`): the kept groups as smaller q/k/v/o linears and a config with
  ``num_attention_heads``, ``num_key_value_heads`` and an explicit ``head_dim``. The count is one for
  every layer: a plain Hugging Face config, and one KV-cache shape, which optimum-intel's export and
  GenAI's stateful pipeline assume for all layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .channels import (
    OrderingReport,
    base_linear,
    input_sq_sums,
    layer_modules,
    permute_columns,
    permute_rows,
    sliced_linear,
)

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")  # LLaMA, Mistral, Qwen, Gemma style


@dataclass(frozen=True)
class Attention:
    """Module names and head layout of one decoder layer's attention."""

    layer: int
    name: str
    q: str
    k: str
    v: str
    o: str
    head_dim: int
    num_heads: int
    num_kv_heads: int

    @property
    def queries_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def channels_per_group(self) -> int:
        """``o_proj`` input columns (= ``q_proj`` output rows) of one KV group."""
        return self.queries_per_group * self.head_dim

    def q_rows(self, groups: torch.Tensor | list[int]) -> torch.Tensor:
        """``q_proj`` rows (``o_proj`` columns) of these KV groups, in their order."""
        return _blocks(groups, self.channels_per_group)

    def cuts(self, kv_groups: int) -> dict[str, dict[str, int]]:
        """What keeping the first ``kv_groups`` groups keeps of each projection: ``{name: {"rows"|"cols": n}}``."""
        width, kv_width = kv_groups * self.channels_per_group, kv_groups * self.head_dim
        return {
            self.q: {"rows": width},
            self.k: {"rows": kv_width},
            self.v: {"rows": kv_width},
            self.o: {"cols": width},
        }

    def kv_rows(self, groups: torch.Tensor | list[int]) -> torch.Tensor:
        """``k_proj`` / ``v_proj`` rows of these KV groups, in their order."""
        return _blocks(groups, self.head_dim)


def _blocks(groups: torch.Tensor | list[int], size: int) -> torch.Tensor:
    groups = torch.as_tensor(groups, dtype=torch.long)
    return (groups[:, None] * size + torch.arange(size)[None, :]).reshape(-1)


def attentions(model: nn.Module) -> list[Attention]:
    """Every decoder layer's attention, in layer order.

    Raises:
        ValueError: a layer has no module with ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``
            linears, or its head layout cannot be read (naming the layer).
    """
    config = getattr(model, "config", None)
    found = []
    layers = layer_modules(
        model,
        ATTENTION_PROJECTIONS,
        what="attention with separate projections",
        hint="Head elasticity (bootstrapNAS.elasticity.heads) needs LLaMA-style attention",
    )
    for i, prefix, module in layers:
        head_dim = getattr(module, "head_dim", None) or getattr(config, "head_dim", None)
        q, k = (base_linear(getattr(module, p)) for p in ("q_proj", "k_proj"))
        if not head_dim or q.out_features % head_dim or k.out_features % head_dim:
            raise ValueError(
                f"decoder layer {i}: cannot read its head layout (head_dim {head_dim}, q_proj "
                f"{q.out_features} and k_proj {k.out_features} outputs)"
            )
        heads, kv = q.out_features // head_dim, k.out_features // head_dim
        if heads % kv:
            raise ValueError(f"decoder layer {i}: {heads} query heads do not divide into {kv} KV groups")
        _check_no_per_head_parameters(prefix, module, head_dim)
        found.append(
            Attention(i, prefix, *(f"{prefix}.{p}" for p in ATTENTION_PROJECTIONS), head_dim, heads, kv)
        )
    return found


def _check_no_per_head_parameters(name: str, module: nn.Module, head_dim: int) -> None:
    """Refuse an attention holding weights other than the projections' that span its heads (OLMo-2's q/k
    norms over all heads, Cohere's per-head norms): they would not follow a permutation or a slice.
    A norm shared by every head (Qwen3's ``q_norm`` of ``head_dim``) is fine."""
    projections = tuple(f"{p}." for p in ATTENTION_PROJECTIONS)
    for pname, param in module.named_parameters():
        if pname.startswith(projections) or tuple(param.shape) == (head_dim,):
            continue
        raise ValueError(
            f"{name}.{pname} ({tuple(param.shape)}) spans the attention's heads beside its projections; "
            "ordering or slicing KV groups would not carry it along, so this architecture's heads cannot be "
            "elastic (drop bootstrapNAS.elasticity.heads)"
        )


def uniform_attentions(model: nn.Module) -> list[Attention]:
    """:func:`attentions`, refusing layers of different layouts (one KV-group count must fit every layer)."""
    atts = attentions(model)
    layouts = {(a.num_heads, a.num_kv_heads, a.head_dim) for a in atts}
    if len(layouts) > 1:
        raise ValueError(
            f"bootstrapNAS.elasticity.heads: the layers' attentions differ ({sorted(layouts)} as (heads, KV heads, "
            "head dim)); one KV-group count for every layer needs one layout"
        )
    return atts


# ---------------------------------------------------------------------- importance and order


def kv_group_importance(o_weight: torch.Tensor, input_sq_sum: torch.Tensor, att: Attention) -> torch.Tensor:
    """Wanda's score of ``o_proj``'s input columns summed per KV group (``input_sq_sum``: ``Σ_t a_tj²``)."""
    per_column = o_weight.abs().float().sum(0) * input_sq_sum.float().to(o_weight.device).sqrt()
    return per_column.reshape(att.num_kv_heads, att.channels_per_group).sum(1)


@torch.no_grad()
def permute_kv_groups(model: nn.Module, att: Attention, order: torch.Tensor | list[int]) -> None:
    """Reorder an attention's KV groups (each with its query heads); the layer computes the same function."""
    if any(hasattr(model.get_submodule(n), "scale") for n in (att.q, att.k, att.v, att.o)):
        raise ValueError(
            f"{att.name}: an INT4 (qa_sparsepeft) layer's quantization groups run along its input channels; "
            "order the heads before quantizing the base"
        )
    order = torch.as_tensor(order, dtype=torch.long)
    if sorted(order.tolist()) != list(range(att.num_kv_heads)):
        raise ValueError(
            f"{att.name}: {order.tolist()} is not a permutation of its {att.num_kv_heads} KV groups"
        )
    device = base_linear(model.get_submodule(att.o)).weight.device
    q_rows, kv_rows = att.q_rows(order).to(device), att.kv_rows(order).to(device)
    permute_rows(model.get_submodule(att.q), q_rows)
    permute_rows(model.get_submodule(att.k), kv_rows)
    permute_rows(model.get_submodule(att.v), kv_rows)
    permute_columns(model.get_submodule(att.o), q_rows)


@torch.no_grad()
def order_kv_groups(
    model: nn.Module,
    batches: list[torch.Tensor],
    kept: tuple[int, ...],
    device: torch.device | str | None = None,
    sums: list[torch.Tensor] | None = None,
) -> OrderingReport:
    """Score every attention's KV groups on ``batches`` and permute them most important first (in place).

    ``sums``: the o projections' input statistics already measured, in :func:`attentions` order. The
    report gives, per kept count in ``kept``, the share of the total importance the first groups
    keep (mean over layers), ordered and in the checkpoint's order; its ``fractions`` are ``kept``
    over the layers' KV groups.
    """
    atts = attentions(model)
    if sums is None:  # o_proj's input: the attention output
        sums = input_sq_sums(model, [a.o for a in atts], batches, device)
    ordered: list[list[float]] = [[] for _ in kept]
    original: list[list[float]] = [[] for _ in kept]
    for a, sq in zip(atts, sums, strict=True):
        score = kv_group_importance(base_linear(model.get_submodule(a.o)).weight, sq, a)
        order = torch.argsort(score, descending=True, stable=True)
        total = float(score.sum()) or 1.0
        for n, count in enumerate(kept):
            ordered[n].append(float(score[order[:count]].sum()) / total)
            original[n].append(float(score[:count].sum()) / total)
        permute_kv_groups(model, a, order)
    size = atts[0].num_kv_heads
    return OrderingReport(
        [c / size for c in kept],
        [sum(v) / len(v) for v in ordered],
        [sum(v) / len(v) for v in original],
    )


# ---------------------------------------------------------------------- slicing


@torch.no_grad()
def slice_attention(model: nn.Module, att: Attention, kv_groups: int) -> None:
    """Replace an attention's (plain, merged) linears by its first ``kv_groups`` KV groups."""
    parent = model.get_submodule(att.name)
    for module in (model.get_submodule(n) for n in (att.q, att.k, att.v, att.o)):
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{att.name}: merge the adapters before slicing (found {type(module).__name__})")
    if not 0 < kv_groups <= att.num_kv_heads:
        raise ValueError(f"{att.name}: {kv_groups} KV groups is outside [1, {att.num_kv_heads}]")
    for name, cut in att.cuts(kv_groups).items():
        setattr(parent, name.rpartition(".")[2], sliced_linear(model.get_submodule(name), **cut))
    for attr, value in (("num_heads", kv_groups * att.queries_per_group), ("num_key_value_heads", kv_groups)):
        if isinstance(getattr(parent, attr, None), int):  # older attention classes keep the counts
            setattr(parent, attr, value)


def set_kv_groups(model: nn.Module, kv_groups: int) -> None:
    """Keep the first ``kv_groups`` KV groups of every layer's attention and record the counts in its config."""
    atts = attentions(model)
    config = getattr(model, "config", None)
    if config is not None:
        check_config_rebuilds(model, kv_groups)  # before anything is sliced: a refusal changes nothing
    for att in atts:
        slice_attention(model, att, kv_groups)
    if config is not None:
        record_kv_groups(config, atts[0], kv_groups)


def record_kv_groups(config: Any, att: Attention, kv_groups: int) -> None:
    """Write the head counts of ``kv_groups`` KV groups into a Hugging Face config."""
    config.head_dim = att.head_dim  # no longer hidden_size / num_attention_heads
    config.num_attention_heads = kv_groups * att.queries_per_group
    config.num_key_value_heads = kv_groups


def check_config_rebuilds(model: nn.Module, kv_groups: int) -> None:
    """The config recording ``kv_groups`` must rebuild the sliced attentions: an architecture that ignores
    ``head_dim`` (computing ``hidden_size / num_attention_heads``) would not. Needs only a meta model."""
    import copy

    from transformers import AutoModelForCausalLM

    atts = attentions(model)
    config = copy.deepcopy(model.config)
    record_kv_groups(config, atts[0], kv_groups)
    try:
        with torch.device("meta"):
            rebuilt = AutoModelForCausalLM.from_config(config)
    except Exception:  # remote code or an architecture transformers lacks: loading will tell
        return
    for a in atts:
        for name, cut in a.cuts(kv_groups).items():
            shape = tuple(base_linear(model.get_submodule(name)).weight.shape)
            want = (cut["rows"], shape[1]) if "rows" in cut else (shape[0], cut["cols"])
            got = tuple(rebuilt.get_submodule(name).weight.shape)
            if want != got:
                raise ValueError(
                    f"{type(model).__name__} builds {name} as {got} from a config with num_attention_heads="
                    f"{config.num_attention_heads}, num_key_value_heads={config.num_key_value_heads}, "
                    f"head_dim={config.head_dim}, not the sliced {want}: this architecture does not read "
                    "head_dim from its config, so its heads cannot be elastic (drop bootstrapNAS.elasticity.heads)"
                )
