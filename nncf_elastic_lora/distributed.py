"""Many processes (``torchrun`` / ``accelerate launch``): who is who, what only the main process does,
and how an evaluation is split into shards whose results equal a single process's.

The launchers describe the job in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``); accelerate's :class:`~accelerate.PartialState` joins its process group (gloo on CPU,
NCCL on CUDA), which the Hugging Face Trainer then reuses for DDP. Outside a launcher every function
here is a no-op, so single-process code pays nothing.

- Outputs are claimed (locked, marked) and written by the main process only; the others learn whether
  the claim succeeded and fail with the same message if not (:func:`main_process_first`).
- An evaluation splits its *batches* round-robin over the processes and gathers the per-request
  results: every batch is the one a single process would form (same members, same padding), so the
  gathered scores are bit-identical to a single-process run (:func:`shard`, :func:`gather`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def is_launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` or ``accelerate launch``."""
    return world_size() > 1


def check_training_launch() -> None:
    """Refuse sharded-parameter launchers for ``train``, saying which launchers work.

    The adapter checkpoints are read from the live (unsharded) adapter weights; FSDP and DeepSpeed ZeRO
    shard them, and accelerate's FSDP plugin refuses to start without a GPU anyway. Only the adapters
    train, so DDP costs each process one frozen copy of the base and nothing more.
    """
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise ValueError(
                f"`train` does not run under {name} ({variable} is set): it shards the adapter weights that "
                "checkpoints and the super-adapter are written from. Launch with DDP instead: "
                "`accelerate launch --multi_gpu --num_processes N -m nncf_elastic_lora train ...` (also on CPU, "
                "where it uses gloo) or `torchrun --nproc_per_node N -m nncf_elastic_lora train ...`; only the "
                'adapters train, so each process holds one frozen copy of the base (docs/cli.md, "Many processes")'
            )


def has_accelerator() -> bool:
    """A CUDA or XPU device is there (else training and the process group run on CPU)."""
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def init_processes() -> None:
    """Join the launcher's process group (gloo on CPU) through accelerate; nothing without a launcher."""
    if not is_launched():
        return
    import torch.distributed as dist
    from accelerate import PartialState

    if not dist.is_initialized():
        PartialState(cpu=not has_accelerator())
    if dist.get_world_size() != world_size():
        raise RuntimeError(
            f"the process group has {dist.get_world_size()} processes but WORLD_SIZE is {world_size()}"
        )


def _active() -> bool:
    if not is_launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process."""
    if not _active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: T) -> list[T]:
    """Every process's ``value``, in rank order."""
    if not _active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def shard(items: Sequence[T]) -> list[tuple[int, T]]:
    """This process's share of ``items`` (round-robin), each with its index in ``items``."""
    if not _active():
        return list(enumerate(items))
    import torch.distributed as dist

    me, n = dist.get_rank(), dist.get_world_size()
    return [(i, item) for i, item in enumerate(items) if i % n == me]


def gather(local: dict[int, T]) -> dict[int, T]:
    """The union of every process's ``{index: result}`` (each index computed by exactly one process)."""
    if not _active():
        return local
    merged: dict[int, T] = {}
    for part in all_gather(local):
        merged.update(part)
    return merged


def _same_error(cls: type, message: str) -> BaseException:
    """An exception of ``cls`` with ``message``, for a process that did not raise it itself."""
    try:
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # noqa: BLE001 - a class whose constructor wants more than a message
        pass
    return RuntimeError(message)


@contextmanager
def shared_outcome() -> Iterator[None]:
    """Run the block (work the main process alone does); every process then shares its outcome.

    If the block raised on the main process, the others raise an error of the same class with the same
    message instead of waiting in a later collective for a process that has already stopped.
    """
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others are told
        error = exc
    outcome = broadcast(None if error is None else (type(error), str(error)))
    if error is not None:
        raise error
    if outcome is not None:
        raise _same_error(*outcome)


@contextmanager
def main_process_first(claim: AbstractContextManager[Any]) -> Iterator[None]:
    """Enter ``claim`` (an output claim: check, lock, prepare) on the main process only.

    Every process waits for the outcome; if the claim failed, the others raise the same error class with
    the same message, so a refused output ends the whole job with one clear error instead of a hang.
    """
    if not _active():
        with claim:
            yield
        return
    entered = False
    with shared_outcome():
        if is_main_process():
            claim.__enter__()
            entered = True
    if not entered:
        yield
        return
    try:
        yield
    except BaseException as exc:
        if not claim.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        claim.__exit__(None, None, None)
