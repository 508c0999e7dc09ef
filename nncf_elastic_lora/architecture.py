"""Where a causal LM keeps its decoder blocks and its output head, read from the model itself.

Models name these differently (LLaMA ``model.layers``, GPT-NeoX ``gpt_neox.layers``, MPT
``transformer.blocks``, GPT-2 ``transformer.h``; heads ``lm_head`` or ``embed_out``), so nothing
here assumes a name: the blocks are the list whose length the config declares, the head is what
``get_output_embeddings()`` returns.
"""

from __future__ import annotations

import torch

# Config attributes that hold the number of decoder blocks, by model family.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def layer_count(model: torch.nn.Module) -> int | None:
    """The number of decoder blocks the model's (text) config declares, or None if it declares none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):  # multimodal models keep the LM's settings in a sub-config
        config = config.get_text_config()
    for key in LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _is_block_list(module: torch.nn.Module, count: int) -> bool:
    """A ModuleList of ``count`` modules of one class, holding weights."""
    return (
        isinstance(module, torch.nn.ModuleList)
        and len(module) == count
        and len({type(m) for m in module}) == 1
        and any(True for _ in module.parameters())
    )


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """``(name, blocks)``: the model's decoder blocks, found by structure, not by name.

    The blocks are a ``ModuleList`` of same-class modules whose length is the config's layer count
    (``num_hidden_layers``, ``n_layer``, ...). Should several lists qualify (a vision tower of the
    same depth, say), the one with the most parameters is the language model's. Raises ValueError,
    naming the model class, when the config declares no layer count or no list qualifies.
    """
    model_class = type(model).__name__
    count = layer_count(model)
    if count is None:
        raise ValueError(
            f"{model_class}: cannot find the decoder blocks: the model has no config declaring the number "
            f"of layers (one of {', '.join(LAYER_COUNT_KEYS)})"
        )
    found = [(name, m) for name, m in model.named_modules() if _is_block_list(m, count)]
    if not found:
        lists = [f"{n} ({len(m)})" for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
        raise ValueError(
            f"{model_class}: no list of {count} same-class decoder blocks found (the config declares "
            f"{count} layers); module lists in the model: {', '.join(lists) or 'none'}"
        )
    return max(found, key=lambda item: _param_count(item[1]))


def output_head_names(model: torch.nn.Module) -> set[str]:
    """Module name(s) of the output head (``get_output_embeddings()``), e.g. ``{"lm_head"}``.

    All names under which the head is registered; empty when the model reports no head.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return set()
    return {name for name, m in model.named_modules(remove_duplicate=False) if m is head}


def in_head(name: str, head_names: set[str] | frozenset[str]) -> bool:
    """Whether module ``name`` is the head or inside it (a LoRA wrapper's ``lm_head.base_layer``, say)."""
    return any(name == head or name.startswith(head + ".") for head in head_names)
