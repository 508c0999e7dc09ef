"""Where torch stages run and in what dtype (``model.device``, ``model.dtype``), and what a stage cost.

``model.device``: ``auto`` takes CUDA if there is one (under a launcher, the process's ``LOCAL_RANK``
GPU), else an Intel XPU, else the CPU; or an explicit ``cpu``, ``cuda``, ``cuda:1``, ``xpu:0``.
``model.dtype``: ``auto`` is bfloat16 on an accelerator (float16 on a GPU without bfloat16) and
float32 on the CPU, where this project measured bfloat16 training about 30x slower. A device that is
not here, or a dtype it cannot run, is refused before any work with the list of what is available.

:class:`ResourceMeter` measures one stage: wall time, this process's peak resident memory (the peak
is reset when the stage starts, through ``/proc/self/clear_refs``), the accelerator's peak memory.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from .process_memory import peak_rss_bytes, reset_peak_rss

DEVICE_SPEC = re.compile(r"^(auto|cpu|(cuda|xpu|mps)(:\d+)?)$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device that is not here, or a dtype it cannot run; nothing was computed or written."""


def _count(kind: str) -> int:
    backend = getattr(torch, kind, None)
    try:
        return int(backend.device_count()) if backend is not None and backend.is_available() else 0
    except (RuntimeError, AssertionError):  # a driver that is installed but broken
        return 0


def available_devices() -> list[str]:
    """Every torch device this process can use: ``cpu`` and each CUDA, XPU or MPS device."""
    found = ["cpu"]
    for kind in ("cuda", "xpu"):
        found += [f"{kind}:{i}" for i in range(_count(kind))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def _local_rank() -> int:
    """This process's launcher rank on its machine; 0 outside a launcher (some tools set LOCAL_RANK=-1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    return max(int(os.environ.get("LOCAL_RANK", "0")), 0)


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device ``spec`` names, checked to be here (:class:`DeviceError` otherwise)."""
    if not isinstance(spec, str) or not DEVICE_SPEC.match(spec):
        raise DeviceError(
            f"model.device: {spec!r} is not a device; allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'xpu', 'xpu:N', 'mps'"
        )
    available = available_devices()
    if spec == "auto":
        for kind in ("cuda", "xpu"):
            n = _count(kind)
            if n:
                return torch.device(kind, _local_rank() % n)
        return torch.device("mps") if "mps" in available else torch.device("cpu")
    kind, _, index = spec.partition(":")
    if index and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DeviceError(
            f"model.device: {spec!r} names one device, but this process is one of several (WORLD_SIZE="
            f"{os.environ.get('WORLD_SIZE')}): each takes its LOCAL_RANK device; use 'auto' or '{kind}'"
        )
    if kind in ("cpu", "mps"):
        if kind not in available:
            raise DeviceError(f"model.device: {spec!r} is not available here; available: {', '.join(available)}")
        return torch.device(kind)
    n = _count(kind)
    wanted = int(index) if index else (_local_rank() % n if n else 0)
    if wanted >= n:
        what = f"{n} {kind.upper()} device(s)" if n else f"no {kind.upper()} device"
        build = "" if n or kind != "cuda" else f" (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        raise DeviceError(
            f"model.device: {spec!r} is not available here: this machine has {what}{build}; "
            f"available: {', '.join(available)}"
        )
    return torch.device(kind, wanted)


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The dtype ``spec`` names on ``device`` (``auto``: bfloat16 on an accelerator, float32 on the CPU)."""
    if spec == "auto":
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if _runs_bfloat16(device) else torch.float16
    if spec not in DTYPES:
        raise DeviceError(f"model.dtype: {spec!r} is not a dtype; allowed: 'auto', {', '.join(map(repr, DTYPES))}")
    dtype = DTYPES[spec]
    if dtype is torch.bfloat16 and not _runs_bfloat16(device):
        raise DeviceError(
            f"model.dtype: 'bfloat16' cannot run on {device} ({_device_name(device)} has no bfloat16 support); "
            "use 'float16' or 'float32', or 'auto'"
        )
    return dtype


def _runs_bfloat16(device: torch.device) -> bool:
    if device.type == "cuda":  # natively from Ampere (compute capability 8) on; older GPUs only emulate it
        return torch.cuda.get_device_capability(device)[0] >= 8
    return True  # the CPU (slowly, without AVX-512 BF16 or AMX), XPU and recent MPS


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)


@dataclass(frozen=True)
class Placement:
    """Where a model's stages run (``device``) and the dtype its weights are loaded in."""

    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def accelerated(self) -> bool:
        return self.device.type != "cpu"


def placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """The checked :class:`Placement` of ``model.device`` and ``model.dtype``."""
    where = resolve_device(device)
    return Placement(where, resolve_dtype(dtype, where))


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (timings of asynchronous accelerators are otherwise wrong)."""
    backend = getattr(torch, device.type, None)
    if device.type == "cpu" or backend is None or not hasattr(backend, "synchronize"):
        return
    if device.type == "mps":  # one device, and its synchronize takes no argument
        backend.synchronize()
    else:
        backend.synchronize(device)


def set_current(device: torch.device) -> None:
    """Make ``device`` its backend's current device (CUDA, XPU), as libraries that say just 'cuda' assume."""
    backend = getattr(torch, device.type, None)
    if device.index is not None and backend is not None and hasattr(backend, "set_device"):
        backend.set_device(device)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums of squares over many tokens, where the device has it (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def empty_cache(device: torch.device) -> None:
    """Give the accelerator's cached blocks back (after a block moved off it)."""
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and backend is not None and hasattr(backend, "empty_cache"):
        backend.empty_cache()


class ResourceMeter:
    """What a block of work cost: ``with ResourceMeter(device) as m: ...; m.record()``.

    ``peak_rss_mib`` is this process's peak resident memory during the block (since the process
    started where the peak cannot be reset, said by ``peak_rss_since``); ``peak_accelerator_mib``
    the peak memory torch allocated on ``device`` (None on the CPU).
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.reset = False
        self.start = 0.0
        self.seconds = 0.0
        self.peak_rss = 0
        self.peak_accelerator: int | None = None

    def _backend(self) -> Any:
        if self.device is None or self.device.type == "cpu":
            return None
        backend = getattr(torch, self.device.type, None)
        return backend if backend is not None and hasattr(backend, "max_memory_allocated") else None

    def __enter__(self) -> ResourceMeter:
        self.reset = reset_peak_rss()
        backend = self._backend()
        if backend is not None:
            backend.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device is not None:
            synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        self.peak_rss = peak_rss_bytes()
        backend = self._backend()
        self.peak_accelerator = int(backend.max_memory_allocated(self.device)) if backend is not None else None

    def record(self) -> dict[str, Any]:
        """The figures as a JSON-able dict (MiB, seconds)."""
        mib = 2**20
        return {
            "wall_s": round(self.seconds, 3),
            "peak_rss_mib": round(self.peak_rss / mib, 1),
            "peak_rss_since": "stage start" if self.reset else "process start",
            "peak_accelerator_mib": None if self.peak_accelerator is None else round(self.peak_accelerator / mib, 1),
            "device": None if self.device is None else str(self.device),
        }
