"""PEFT LoRA folders: check that one is readable and fits a base model before loading it.

peft loads a mismatched adapter with a ``size mismatch`` RuntimeError deep in ``load_state_dict``
(or silently skips modules it cannot find); this reads only the safetensors header and names the
first module that does not fit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .formats import ADAPTER_CONFIG, ADAPTER_WEIGHTS

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors header; reading it fails when the file is cut short."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)


def adapter_shapes(directory: str | Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{module name: {"A": shape, "B": shape}}`` from the adapter's safetensors header."""
    directory = Path(directory)
    config, weights = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config.is_file():
        raise FileNotFoundError(f"{directory.resolve()} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    try:
        json.loads(config.read_text())
    except ValueError as exc:
        raise ValueError(f"{config.resolve()} is not valid JSON ({exc}); re-create the adapter") from None
    if not weights.is_file():
        raise FileNotFoundError(f"{weights.resolve()} is missing; the adapter folder is incomplete")
    try:
        shapes = tensor_shapes(weights)
    except Exception as exc:  # safetensors raises its own error types for a cut or corrupt header
        raise ValueError(
            f"{weights.resolve()} cannot be read ({str(exc).splitlines()[0]}); the file is truncated "
            "or corrupt: re-create the adapter"
        ) from None
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        m = _KEY.match(key)
        if m:
            out.setdefault(m["module"], {})[m["which"]] = shape
    return out


def check_adapter_fits(model: torch.nn.Module, directory: str | Path) -> None:
    """Raise a ValueError naming the first adapted module that is missing from ``model`` or has other sizes."""
    modules = dict(model.named_modules())
    for name, shapes in adapter_shapes(directory).items():
        module = modules.get(name)
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if module is None or in_f is None:
            raise ValueError(
                f"adapter {Path(directory).resolve()} adapts {name!r}, which the base model has no linear "
                "layer of; was it trained on another base model?"
            )
        want = {"A": (in_f, 1), "B": (out_f, 0)}
        for which, (size, dim) in want.items():
            shape = shapes.get(which)
            if shape is not None and (len(shape) != 2 or shape[dim] != size):
                side = "in" if which == "A" else "out"
                raise ValueError(
                    f"adapter {Path(directory).resolve()} does not fit the base model: {name}.lora_{which} has "
                    f"shape {list(shape)}, but the base layer has {side}_features={size}; "
                    "was it trained on another base model?"
                )
