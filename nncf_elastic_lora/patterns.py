"""Module-name patterns, as the Shears/LoNAS configs write them.

A pattern is one of:

- ``{re}<regex>``: a regular expression that must match the whole module name;
  ``{*}`` inside it stands for one name component (a layer index, say);
- a name with ``{*}`` wildcards, e.g. ``model.layers.{*}.mlp.up_proj``;
- a plain name, matching that module or any module whose name ends with ``.<name>`` (as peft's
  ``target_modules`` do), e.g. ``q_proj``.

Old NNCF scope strings (``PeftModelForCausalLM/LoraModel[base_model]/LlamaForCausalLM[model]/
LlamaModel[model]/ModuleList[layers]/LlamaDecoderLayer[{*}]/LlamaAttention[self_attn]/Linear[q_proj]/
ModuleDict[lora_A]/NNCFLinear[default]/linear_0``) are translated to module names of the plain
model (``model.layers.{*}.self_attn.q_proj``): the peft wrappers and the adapter's own sub-modules
are dropped, since our adapters sit on the base linear itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

_SCOPE_PART = re.compile(r"\[([^\]]+)\]")
_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "base_layer", "lora_dropout")


def is_nncf_scope(pattern: str) -> bool:
    return "/" in pattern and "[" in pattern


def translate_nncf_scope(scope: str) -> str:
    """An NNCF scope string -> a module-name pattern with ``{*}`` wildcards."""
    body = scope[4:] if scope.startswith("{re}") else scope
    parts = _SCOPE_PART.findall(body)
    if not parts:
        raise ValueError(f"not an NNCF scope string: {scope!r}")
    if parts[:2] == ["base_model", "model"]:  # PeftModel -> LoraModel -> the wrapped model
        parts = parts[2:]
    for i, part in enumerate(parts):
        if part in _ADAPTER_PARTS:
            parts = parts[:i]
            break
    return ".".join(parts)


def compile_pattern(pattern: str, capture: bool = False) -> re.Pattern[str]:
    """The regex of a pattern; with ``capture``, each ``{*}`` is a capture group (its layer index, say)."""
    if is_nncf_scope(pattern):
        pattern = translate_nncf_scope(pattern)
    wildcard = r"([^.]+)" if capture else r"[^.]+"
    if pattern.startswith("{re}"):
        regex = pattern[4:].replace("{*}", wildcard)
    elif "{*}" in pattern:
        regex = wildcard.join(re.escape(p) for p in pattern.split("{*}"))
    else:
        regex = rf"(?:.*\.)?{re.escape(pattern)}"
    return re.compile(regex)


def matches(name: str, patterns: Iterable[str | re.Pattern[str]]) -> bool:
    return any((p if isinstance(p, re.Pattern) else compile_pattern(p)).fullmatch(name) for p in patterns)


def find_linears(model: torch.nn.Module, patterns: Iterable[str]) -> dict[str, torch.nn.Linear]:
    """The ``nn.Linear`` modules whose names match any pattern; a pattern matching nothing is an error."""
    compiled = {p: compile_pattern(p) for p in patterns}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    found: dict[str, torch.nn.Linear] = {}
    for raw, regex in compiled.items():
        hits = {n: m for n, m in linears.items() if regex.fullmatch(n)}
        if not hits:
            example = next(iter(linears), "<none>")
            raise ValueError(
                f"module pattern {raw!r} (regex {regex.pattern!r}) matches no linear layer; "
                f"linear layers are named like {example!r}"
            )
        found.update(hits)
    return {n: m for n, m in linears.items() if n in found}
