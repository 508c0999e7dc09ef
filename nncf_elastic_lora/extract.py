"""LoNAS extraction: a sub-network of a Mode B super-network as a physically smaller model.

The sub-adapter is merged at its ranks (the base is dense in LoNAS, so merging loses nothing) and
every gated MLP keeps the first ``width`` intermediate channels (the most important ones once the
channels were ordered). What is saved:

- the same width in every layer: a plain Hugging Face checkpoint (``intermediate_size`` = the width),
  which ``AutoModelForCausalLM`` and ``optimum-cli export openvino`` load as they are;
- per-layer widths: ``intermediate_size`` is the widest layer's and ``config.json`` gains
  ``intermediate_size_per_layer`` (one entry per decoder layer, the convention of DeciLM's
  ``num_key_value_heads_per_layer``); :func:`nncf_elastic_lora.models.load_model` builds the model
  with those widths before reading the weights. Stock ``from_pretrained`` refuses the shapes.

With elastic heads (``bootstrapNAS.elasticity.heads``) every attention keeps its first ``kv_groups``
KV groups, the same count in every layer, so ``num_attention_heads``, ``num_key_value_heads`` and an
explicit ``head_dim`` describe it in a plain config.

On an INT4 base (QA-SparsePEFT or FQ-LoRA, :func:`extract_int4_subnet`) the merge writes the codes the
trained forward computed, under the base's frozen scales (QA-SparsePEFT) or the trained ones (FQ-LoRA),
and the slices keep whole quantization groups (every width is a multiple of ``down_proj``'s group size,
checked when the super-network is built): the extracted model is an INT4 checkpoint whose codes, scales
and zero points are the super-network's.
"""

from __future__ import annotations

import torch
from torch import nn

from .elastic.channels import gated_mlps, set_mlp_widths
from .elastic.heads import attentions, set_kv_groups
from .elastic.supernet import ElasticLoraSuperNet, SubnetConfig
from .merge import check_finite, merge_qa, plain_model
from .quantization import QuantizedWeight


def extract_subnet(supernet: ElasticLoraSuperNet, config: SubnetConfig | None = None) -> nn.Module:
    """The sub-network at ``config`` (default: the active one) as a plain, smaller Hugging Face model.

    Merges each adapter at its rank and slices each MLP to its width. The super-network is spent: its
    model is modified in place (load it again for another sub-network).
    """
    if supernet.kind.int4_trained:
        raise ValueError(
            f"a {supernet.kind.value} super-network merges into INT4 codes: use extract_int4_subnet"
        )
    config = config or supernet.get_active_config()
    supernet.validate_config(config)
    with torch.no_grad():  # one module at a time, into its own weight: no second copy of the adapted weights
        for name, rank in supernet.module_ranks(config).items():
            layer = supernet.adapters[name]
            merged = layer.merged_weight(rank)
            check_finite(name=name, tensors={"merged weight": merged})
            layer.base_layer.weight.copy_(merged)
            del merged
    widths, kv_groups = supernet.mlp_widths(config), supernet.kv_groups(config)
    _remove_masks(supernet)
    model = plain_model(supernet.model, {}, inplace=True)
    if widths:
        set_mlp_widths(model, [widths[m.down] for m in gated_mlps(model)])
    if kv_groups is not None:
        set_kv_groups(model, kv_groups)
    return model


def _remove_masks(supernet: ElasticLoraSuperNet) -> None:
    for masks in (supernet.channel_masks, supernet.head_masks):
        for mask in masks.values():
            mask.remove()
        masks.clear()


def slice_quantized(
    q: QuantizedWeight, *, rows: int | None = None, cols: int | None = None
) -> QuantizedWeight:
    """The first ``rows`` output rows or ``cols`` input columns of an INT4 weight (whole groups only)."""
    if cols is not None and cols % q.group_size:
        raise ValueError(f"{cols} input columns cut through INT4 groups of {q.group_size}")
    out = slice(None, rows)
    groups = slice(None, None if cols is None else cols // q.group_size)
    return QuantizedWeight(
        codes=q.codes[out, :cols].clone(),
        scale=q.scale[out, groups].clone(),
        zero_point=None if q.zero_point is None else q.zero_point[out, groups].clone(),
        group_size=q.group_size,
        bits=q.bits,
    )


def extract_int4_subnet(
    supernet: ElasticLoraSuperNet, config: SubnetConfig | None = None
) -> tuple[nn.Module, dict[str, QuantizedWeight]]:
    """A QA-SparsePEFT or FQ-LoRA sub-network as a smaller INT4 model: ``(model with dequantized weights, codes)``.

    The codes are those of :func:`~nncf_elastic_lora.merge.merge_qa` (the trained forward's), sliced
    with the MLPs; the dict covers every module the base quantized. The super-network is spent.
    """
    config = config or supernet.get_active_config()
    supernet.validate_config(config)
    widths, kv_groups = supernet.mlp_widths(config), supernet.kv_groups(config)
    _remove_masks(supernet)
    model, quantized = merge_qa(supernet=supernet, config=config, inplace=True)
    if kv_groups is not None:
        for a in attentions(model):
            for name, cut in a.cuts(kv_groups).items():
                if name in quantized:
                    quantized[name] = slice_quantized(quantized[name], **cut)
        set_kv_groups(model, kv_groups)
    if widths:
        mlps = gated_mlps(model)
        for m in mlps:
            width = widths[m.down]
            for name, cut in ((m.gate, "rows"), (m.up, "rows"), (m.down, "cols")):
                if name in quantized:
                    quantized[name] = slice_quantized(quantized[name], **{cut: width})
        set_mlp_widths(model, [widths[m.down] for m in mlps])
    return model, quantized
