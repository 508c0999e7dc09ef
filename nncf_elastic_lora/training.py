"""NLS training: the Hugging Face Trainer plus a callback that activates a random sub-adapter per step.

Neural Low-rank adapter Search (Shears) trains every sub-adapter of the super-adapter at once by
activating a randomly sampled configuration for each optimizer step. The sample for step ``k`` is
drawn from ``Random(f"{seed}-{k}")``: the same for every micro-batch of the step (the callback
fires once per optimizer step, before gradient accumulation), unchanged during gradient
checkpointing's recompute (nothing switches between forward and backward), identical on every
process under ``accelerate launch`` without communication, and the same after a resume.
Plain LoRA is this loop with the maximal configuration fixed, so the two compare fairly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import resource
import shutil
import statistics
import time
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from . import distributed
from .adapters import tensor_shapes
from .config import DistillationConfig, NLSTrainingConfig
from .data import Example
from .devices import set_current
from .distillation import distillation_loss_sum, target_logits
from .elastic import ElasticLoraSuperNet
from .formats import ADAPTER_WEIGHTS
from .outputs import check_free_space, is_disk_full, tensor_bytes

log = logging.getLogger(__name__)


Row = dict[str, list[int]]


@dataclass(frozen=True)
class TokenizeStats:
    """What fitting the examples into ``max_length`` tokens changed (recorded in the train report)."""

    max_length: int
    examples: int  # examples given
    dropped: int  # the prompt alone fills max_length: no target token left, so the example is left out
    target_truncated: int  # kept, but the answer or its EOS was cut off


def tokenize_examples_with_stats(
    examples: list[Example], tokenizer: Any, max_length: int
) -> tuple[list[Row], TokenizeStats]:
    """Prompt + target + EOS cut to ``max_length``, loss on the target only (prompt labels are -100),
    and how many examples lost their target entirely (dropped) or in part (target_truncated)."""
    rows, dropped, truncated = [], 0, 0
    for e in examples:
        prompt = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(e.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(prompt) >= max_length:
            dropped += 1  # nothing to learn from this example
            continue
        if len(prompt) + len(target) > max_length:
            truncated += 1
        ids = (prompt + target)[:max_length]
        labels = ([-100] * len(prompt) + target)[:max_length]
        rows.append({"input_ids": ids, "labels": labels})
    stats = TokenizeStats(max_length, len(examples), dropped, truncated)
    if not rows:
        raise ValueError(
            f"no training example fits in data.max_length={max_length} tokens: every prompt fills it; "
            "raise data.max_length"
        )
    return rows, stats


def warn_if_cut(stats: TokenizeStats) -> None:
    """A WARNING when max_length changed the training data: silently learning from cut answers misleads."""
    if stats.dropped or stats.target_truncated:
        log.warning(
            "data.max_length=%d changed %d of %d training examples: %d dropped (the prompt alone fills "
            "max_length), %d with the answer or its EOS cut off; raise data.max_length to keep them whole",
            stats.max_length,
            stats.dropped + stats.target_truncated,
            stats.examples,
            stats.dropped,
            stats.target_truncated,
        )


def tokenize_examples(examples: list[Example], tokenizer: Any, max_length: int) -> list[Row]:
    """Prompt + target + EOS, with the loss on the target only (prompt labels are -100).

    Examples whose prompt fills ``max_length`` are left out, longer ones are cut; a WARNING counts both.
    """
    rows, stats = tokenize_examples_with_stats(examples, tokenizer, max_length)
    warn_if_cut(stats)
    return rows


class PadCollator:
    """Right-pads a batch; padded labels are -100."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(r["input_ids"]),
                torch.tensor(r["labels"]),
                1,
            )
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def step_config(supernet: ElasticLoraSuperNet, seed: int, step: int) -> dict[str, int]:
    """The sub-adapter NLS trains at optimizer step ``step``."""
    return supernet.sample_config(random.Random(f"{seed}-{step}"))


class NLSCallback(TrainerCallback):
    """Activates one sub-adapter per optimizer step (NLS) or keeps the maximal one (plain LoRA).

    Every step's configuration is recorded (``steps``); under a launcher the processes compare their
    records when training ends (:func:`compare_across_processes`): DDP averages gradients of whatever
    each process ran, so processes that activated different sub-adapters would train garbage silently.
    """

    def __init__(self, supernet: ElasticLoraSuperNet, algorithm: str, seed: int, record: bool = False):
        self.supernet, self.algorithm, self.seed = supernet, algorithm, seed
        self.step_times: list[float] = []
        self.history: list[dict[str, int]] = []  # the configuration of each step, when recording
        self.steps: list[tuple[int, tuple[int, ...]]] = []  # (global step, widths) of each step
        self.digests: list[str] = []  # per process, at the end: SHA-256 of its ``steps``
        self.record = record
        self._t0 = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.supernet.activate_maximal_subnet()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.algorithm == "nls":
            self.supernet.activate_config(step_config(self.supernet, self.seed, state.global_step))
        active = self.supernet.get_active_config()
        self.steps.append((state.global_step, tuple(active.values())))
        if self.record:
            self.history.append(active)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter() - self._t0)

    def on_train_end(self, args, state, control, **kwargs):
        self.supernet.activate_maximal_subnet()
        self.digests = compare_across_processes(self.steps)


def steps_digest(steps: list[tuple[int, tuple[int, ...]]]) -> str:
    """A SHA-256 of the (step, configuration) sequence a process trained."""
    return hashlib.sha256(json.dumps(steps).encode()).hexdigest()


def compare_across_processes(steps: list[tuple[int, tuple[int, ...]]]) -> list[str]:
    """Every process's digest of its steps (one entry without a launcher).

    Raises:
        RuntimeError: the processes trained different sub-adapters at some step (named).
    """
    digests = distributed.all_gather(steps_digest(steps))
    if len(set(digests)) > 1:
        records = distributed.all_gather(steps)
        first = next(
            (i for i in range(min(map(len, records))) if len({str(r[i]) for r in records}) > 1),
            min(map(len, records)),
        )
        raise RuntimeError(
            f"the {len(records)} training processes activated different sub-adapters from optimizer step "
            f"{first} on ({[r[first] if first < len(r) else None for r in records]}); "
            "every process must sample with the same bootstrapNAS.training.seed"
        )
    return digests


# Checkpoints are saved into ".tmp-checkpoint-N/checkpoint-N" and renamed to "checkpoint-N" once complete,
# so a kill mid-save never leaves a "checkpoint-N" to resume from. The prefix keeps these directories out of
# the Trainer's "checkpoint-*" globs (rotation, best checkpoint) and the regex below names only our own.
STAGING_PREFIX = ".tmp-"
_STAGING_RE = re.compile(rf"^{re.escape(STAGING_PREFIX)}{PREFIX_CHECKPOINT_DIR}-\d+(-replaced)?$")
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Move the completely written checkpoint ``staged`` to ``final``, then remove its staging directory.

    The files are synced first so that the rename cannot reach the disk before their contents do.
    A ``final`` already there is an older save of the same step (one a resume skipped as incomplete).
    """
    for f in staged.iterdir():
        if f.is_file():
            _fsync(f)
    if final.exists():
        old = final.with_name(f"{STAGING_PREFIX}{final.name}-replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)
    else:
        os.replace(staged, final)
    staged.parent.rmdir()
    _fsync(final.parent)


def remove_partial_saves(output_dir: Path) -> list[Path]:
    """Delete the staging directories of checkpoint saves that were killed (only our own naming)."""
    if not output_dir.is_dir():
        return []
    stale = sorted(p for p in output_dir.iterdir() if p.is_dir() and _STAGING_RE.match(p.name))
    for p in stale:
        log.info("removing %s, left by a checkpoint save that did not finish", p)
        shutil.rmtree(p)
    return stale


def checkpoints_newest_first(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories in ``output_dir``, highest step first."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def _rng_files(world_size: int) -> list[str]:
    return ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{i}.pth" for i in range(world_size)]


def _writers(directory: Path) -> int:
    """How many processes wrote a checkpoint, from its RNG files (0: none there to tell)."""
    if (directory / "rng_state.pth").is_file():
        return 1
    return len(list(directory.glob("rng_state_*.pth")))


def _is_complete_torch_file(path: Path) -> bool:
    """torch.save writes a zip whose central directory comes last: a truncated file has none."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


def _adapter_mismatch(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str:
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shapes = [
        f"{k}: {found[k]} vs {expected[k]}"
        for k in sorted(found.keys() & expected.keys())
        if found[k] != expected[k]
    ]
    return f"missing {missing[:3]}, unexpected {extra[:3]}, other shapes {shapes[:3]}"


def checkpoint_problem(
    directory: Path, adapter_shapes: dict[str, tuple[int, ...]], world_size: int = 1
) -> str | None:
    """Why ``directory`` cannot be resumed from (a file missing, truncated or unreadable); None if complete.

    The Trainer itself skips a missing optimizer, scheduler or RNG file without a word, which would make
    the resumed run silently differ, so all of them are required here.

    Raises:
        ValueError: the adapter file is intact but holds other adapters than ``adapter_shapes``: the
            checkpoint was written with another LoRA configuration, which an older checkpoint won't fix.
    """
    rng = _rng_files(world_size)
    written_by = _writers(directory)
    if written_by and written_by != world_size:
        raise ValueError(
            f"{directory} was written by {written_by} training process(es), this run has {world_size}: resume "
            f"with {written_by} (the data order and random states are per process), or train into a new output"
        )
    for name in (ADAPTER_WEIGHTS, TRAINER_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, *rng):
        if not (directory / name).is_file():
            return f"{name} is missing"
    adapter = directory / ADAPTER_WEIGHTS
    try:
        # Reading the header checks that the file covers every tensor it lists, so truncation shows here.
        shapes = tensor_shapes(adapter)
    except (SafetensorError, OSError) as err:
        return f"{ADAPTER_WEIGHTS} is unreadable ({err})"
    if shapes != adapter_shapes:
        raise ValueError(
            f"{adapter} does not hold the adapters this run trains ({_adapter_mismatch(shapes, adapter_shapes)}): "
            "it was written with another LoRA configuration; resume with that configuration, or train into a "
            "new output directory"
        )
    non_finite = [k for k, v in load_file(adapter).items() if not torch.isfinite(v).all()]
    if non_finite:  # a diverged step saved by a version without the divergence check
        return f"{ADAPTER_WEIGHTS} holds NaN or inf in {len(non_finite)} tensor(s), first {non_finite[0]}"
    try:
        TrainerState.load_from_json(str(directory / TRAINER_STATE_NAME))
    except (OSError, ValueError, TypeError) as err:  # bad JSON: ValueError; unknown keys: TypeError
        return f"{TRAINER_STATE_NAME} is unreadable ({err})"
    optional = [SCALER_NAME] if (directory / SCALER_NAME).exists() else []
    for name in (OPTIMIZER_NAME, SCHEDULER_NAME, *rng, *optional):
        if not _is_complete_torch_file(directory / name):
            return f"{name} is truncated"
    return None


def choose_resume_checkpoint(
    output_dir: Path, adapter_shapes: dict[str, tuple[int, ...]], world_size: int = 1
) -> tuple[Path | None, list[dict[str, str]]]:
    """The newest complete checkpoint in ``output_dir`` (None: start from step 0) and the ones skipped, with why."""
    skipped: list[dict[str, str]] = []
    for checkpoint in checkpoints_newest_first(output_dir):
        problem = checkpoint_problem(checkpoint, adapter_shapes, world_size)
        if problem is None:
            return checkpoint, skipped
        log.warning(
            "skipping incomplete checkpoint %s: %s (a save that did not finish); trying the one before it",
            checkpoint,
            problem,
        )
        skipped.append({"checkpoint": str(checkpoint), "reason": problem})
    if skipped:
        log.warning("no complete checkpoint in %s: training starts again from step 0", output_dir)
    else:
        log.info("no checkpoint in %s to resume from: training starts from step 0", output_dir)
    return None, skipped


@contextmanager
def _resume_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turns a failure to load ``what`` from ``path`` into a ValueError that says what to do."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise  # not the checkpoint's fault
    except Exception as err:
        checkpoint = Path(path) if Path(path).is_dir() else Path(path).parent
        raise ValueError(
            f"cannot resume from {checkpoint}: loading the {what} from {path} failed ({type(err).__name__}: {err}); "
            f"move {checkpoint} away to resume from the checkpoint before it, or start without resuming"
        ) from err


class TrainingDivergedError(ValueError):
    """A loss or gradient norm that is NaN or inf: training stopped before the optimizer step applied it."""


def divergence_message(step: int, losses: list[float], grad_norm: float, output_dir: str | Path) -> str:
    """The error for optimizer step ``step`` whose micro-batch ``losses`` or ``grad_norm`` are not finite."""
    bad = [x for x in losses if not math.isfinite(x)]
    loss = f"loss {bad[0]}" if bad else f"loss {max(losses, default=float('nan')):.4g}"
    checkpoints = sorted(Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
    kept = f"; the checkpoints in {output_dir} come from the finite steps before it" if checkpoints else ""
    return (
        f"training diverged at optimizer step {step}: {loss}, gradient norm {grad_norm}; the step was not "
        f"applied and no adapter was written{kept}. Lower bootstrapNAS.training.learning_rate (or use "
        "float32 instead of bfloat16, or check the data), then train again with --overwrite"
    )


class AdapterTrainer(Trainer):
    """Checkpoints hold the adapter weights only (the base is frozen and already on disk); each is written
    into a staging directory and renamed into place when complete, so a kill mid-save leaves no half checkpoint.

    Every optimizer step checks its losses and gradient norm before the step is applied: the first NaN
    or inf stops training (:class:`TrainingDivergedError`), so no adapter that learnt from it exists.
    """

    supernet: ElasticLoraSuperNet
    distillation: DistillationConfig | None = None  # in-place distillation (the sandwich rule), when enabled
    _staging: str | None = None
    _step_losses: list[torch.Tensor]
    _phase: str | None = None  # "teacher" / "student" inside a sandwich step
    _teacher: torch.Tensor | None = None
    quantizer_lr_ratio: float = 0.1

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the quantisers' ranges (fq_lora) in a group of their own at a lower lr."""
        optimizer = super().create_optimizer(model)
        ranges = {id(p) for p in self.supernet.quantizer_parameters()}
        if ranges and not any(g.get("quantizer_ranges") for g in optimizer.param_groups):
            moved = []
            for group in optimizer.param_groups:
                moved += [p for p in group["params"] if id(p) in ranges]
                group["params"] = [p for p in group["params"] if id(p) not in ranges]
            optimizer.add_param_group({"params": moved, "weight_decay": 0.0, "quantizer_ranges": True,
                                       "lr": self.args.learning_rate * self.quantizer_lr_ratio})  # fmt: skip
        return optimizer

    def training_step(self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        if self.distillation is None:
            loss = super().training_step(model, inputs, num_items_in_batch)
        else:
            loss = self._sandwich_step(model, inputs, num_items_in_batch)
        if not hasattr(self, "_step_losses"):
            self._step_losses = []
        self._step_losses.append(loss.detach())
        return loss

    def _sandwich_step(self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any) -> torch.Tensor:
        """The maximal sub-network learns the labels, then the step's sampled one learns its logits.

        Each half runs its own forward and backward with its own configuration active, so gradient
        checkpointing's recompute sees the configuration it ran with. The gradients add up before
        the one optimizer step; under DDP they are synchronised once, after the second half.
        """
        sampled = self.supernet.get_active_config()
        self.supernet.activate_maximal_subnet()
        self._phase = "teacher"
        try:
            sync_later = self.accelerator.no_sync(model) if self.args.world_size > 1 else contextlib.nullcontext()
            with sync_later:
                teacher_loss = super().training_step(model, inputs, num_items_in_batch)
            self.supernet.activate_config(sampled)
            self._phase = "student"
            student_loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            self.supernet.activate_config(sampled)
            self._phase, self._teacher = None, None
        return teacher_loss + student_loss

    def compute_loss(
        self, model: torch.nn.Module, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if self._phase is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        logits = target_logits(outputs.logits, inputs["labels"])
        if self._phase == "teacher":
            self._teacher = logits.detach()
        else:
            d = self.distillation
            kd = distillation_loss_sum(logits, self._teacher, d.temperature) / self._loss_tokens(
                logits.shape[0], num_items_in_batch
            )
            loss = (1 - d.weight) * loss + d.weight * kd
        return (loss, outputs) if return_outputs else loss

    def _loss_tokens(self, micro_batch_tokens: int, num_items_in_batch: Any) -> Any:
        """What the model's cross-entropy divides its sum by, so the distillation term is scaled alike."""
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            tokens = num_items_in_batch
            if self.args.average_tokens_across_devices:  # the Trainer multiplies the loss back by this
                tokens = tokens / (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
            return tokens
        return max(micro_batch_tokens, 1)

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        step_losses, self._step_losses = getattr(self, "_step_losses", []), []
        # One check on the device for the whole step (one sync), not one per micro-batch.
        device = step_losses[0].device if step_losses else torch.device("cpu")
        norm_t = torch.as_tensor(0.0 if grad_norm is None else grad_norm, device=device)
        values = torch.stack([x.float().reshape(()) for x in [*step_losses, norm_t]])
        bad = (~torch.isfinite(values)).any().float()
        if self.args.world_size > 1:  # a NaN loss in one process only: every process stops, not just it
            bad = self.accelerator.reduce(bad.to(self.args.device), reduction="sum")
        if bad.item():
            losses, norm = [float(x) for x in values[:-1]], float(values[-1])
            raise TrainingDivergedError(
                divergence_message(self.state.global_step + 1, losses, norm, self.args.output_dir)
            )
        return grad_norm

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_file(
            self.supernet.adapter_state_dict(),
            os.path.join(output_dir, ADAPTER_WEIGHTS),
            metadata={"format": "pt"},
        )
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _get_output_dir(self, trial: Any) -> str:
        # While a checkpoint is saved, the Trainer's "run directory" is the staging directory.
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f"{STAGING_PREFIX}{name}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a killed save of this step
            # The adapter, AdamW's two moments of it, and the small states beside them.
            adapter = tensor_bytes(self.supernet.adapter_state_dict().values())
            check_free_space(run_dir, 4 * adapter + 2**20, f"train ({name})")
        self.accelerator.wait_for_everyone()
        self._staging = str(staging)
        try:
            # Writes everything into staging/checkpoint-N; its rotation there finds nothing to delete.
            super()._save_checkpoint(model, trial)
        except Exception as exc:
            if is_disk_full(exc) and self.args.should_save:  # a kill leaves it for resume to clear; this need not
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part (its RNG state)
        staged, final = staging / name, run_dir / name
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
            if self.args.should_save:
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
        if self.args.should_save:
            publish_checkpoint(staged, final)
            # The rotation the Trainer does, now that the new checkpoint is in place.
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        path = os.path.join(resume_from_checkpoint, ADAPTER_WEIGHTS)
        with _resume_errors(path, "adapter weights"):
            self.supernet.load_adapter_weights(load_file(path))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with _resume_errors(checkpoint or "", "optimizer and scheduler state"):
            if checkpoint is not None and self.args.world_size > 1 and self.args.device.type == "cpu":
                # Under several processes the Trainer maps the states to ``args.device``, which on CPU is
                # "cpu:0", a location torch.load cannot restore to; CPU tensors need no mapping at all.
                load = functools.partial(torch.load, map_location="cpu", weights_only=True)
                self.optimizer.load_state_dict(load(os.path.join(checkpoint, OPTIMIZER_NAME)))
                with warnings.catch_warnings():  # the scheduler's save-time warnings, re-issued on load
                    warnings.simplefilter("ignore", UserWarning)
                    self.lr_scheduler.load_state_dict(load(os.path.join(checkpoint, SCHEDULER_NAME)))
                return
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        with _resume_errors(checkpoint or "", "random number generator state"):
            super()._load_rng_state(checkpoint)


@dataclass
class TrainResult:
    algorithm: str
    steps: int
    train_loss: float
    losses: list[float] = field(default_factory=list)
    step_time_median_s: float = 0.0
    step_times_s: list[float] = field(default_factory=list)
    time_s: float = 0.0
    peak_rss_mb: float = 0.0
    trainable_params: int = 0
    examples: int = 0  # the examples trained on (after dropping those max_length leaves no target of)
    max_length: int = 0
    examples_dropped: int = 0  # the prompt alone filled max_length
    examples_target_truncated: int = 0  # the answer or its EOS was cut off
    resumed_from: str | None = None
    skipped_checkpoints: list[dict[str, str]] = field(default_factory=list)  # incomplete ones, with why
    processes: int = 1  # training processes (DDP under torchrun / accelerate launch)
    global_batch_size: int = 0  # examples per optimizer step, over all processes
    subnet_digests: list[str] = field(default_factory=list)  # per process: SHA-256 of its step configurations
    # In-place distillation's settings when it was on; its logged loss is then the maximal sub-network's
    # cross-entropy plus the sampled one's distillation objective.
    distillation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlacedTrainingArguments(TrainingArguments):
    """Training arguments that train where the model is (``placement``, e.g. ``cuda:1``).

    Alone, a single-process Trainer takes ``cuda:0`` whatever the model's device and wraps every
    visible GPU in DataParallel; under a launcher each process keeps its ``LOCAL_RANK`` device.
    """

    placement: str = field(default="", metadata={"help": "the torch device to train on (empty: the Trainer's)"})

    @functools.cached_property
    def _setup_devices(self) -> torch.device:
        device = TrainingArguments._setup_devices.func(self)
        if not self.placement or distributed.is_launched():
            return device
        device = torch.device(self.placement)
        set_current(device)  # accelerate's plain 'cuda' / 'xpu' is the current device: make it this one
        self._n_gpu = 1 if device.type == "cuda" else 0
        return device


def training_arguments(
    cfg: NLSTrainingConfig, output_dir: str | Path, progress: bool = True, device: torch.device | None = None
) -> TrainingArguments:
    """The Trainer's arguments for ``cfg``, training on ``device`` (default: an accelerator if any)."""
    on_cpu = device.type == "cpu" if device is not None else not distributed.has_accelerator()
    return PlacedTrainingArguments(
        placement="" if device is None else str(device),
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type="linear",
        weight_decay=0.0,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        use_cpu=on_cpu,
        gradient_checkpointing=cfg.gradient_checkpointing,
        # Every LoRA factor takes part in every step (ranks are >= 1), so DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
        # The buffers (SparsePEFT masks, INT4 scales) are constant and equal everywhere: no per-step copy.
        ddp_broadcast_buffers=False,
        report_to="none",
        # The Trainer would log a NaN loss as the mean of the previous ones; ours stops at it instead.
        logging_nan_inf_filter=False,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def train_super_adapter(
    supernet: ElasticLoraSuperNet,
    tokenizer: Any,
    examples: list[Example],
    cfg: NLSTrainingConfig,
    output_dir: str | Path,
    *,
    max_length: int = 256,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[TrainResult, NLSCallback]:
    """Train the super-adapter (``cfg.algorithm`` 'nls') or a plain LoRA at maximal rank ('lora').

    Checkpoints (adapter weights, optimizer, scheduler, RNG) go to ``output_dir/checkpoint-*``, each
    renamed into place when complete; with ``resume`` the newest complete one is continued (incomplete
    ones, from saves an older version did not finish, are skipped with a WARNING and recorded).
    """
    rows, stats = tokenize_examples_with_stats(examples, tokenizer, max_length)
    warn_if_cut(stats)
    model = supernet.model
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen embeddings would otherwise cut the graph
    for p in supernet.trainable_parameters():
        p.requires_grad_(True)
    nls = NLSCallback(supernet, cfg.algorithm, cfg.seed)
    args = training_arguments(cfg, output_dir, progress, device=next(model.parameters()).device)
    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[nls, *(callbacks or [])],
    )
    trainer.supernet, trainer.quantizer_lr_ratio = supernet, cfg.quantizer_lr_ratio
    if cfg.distillation.enabled and cfg.algorithm == "nls":
        trainer.distillation = cfg.distillation
    if args.should_save:
        remove_partial_saves(Path(output_dir))
    checkpoint, skipped = None, []
    if resume:
        shapes = {k: tuple(v.shape) for k, v in supernet.adapter_state_dict().items()}
        with distributed.shared_outcome():  # the main process chooses (or fails) for everyone
            if args.should_save:
                found, skipped = choose_resume_checkpoint(Path(output_dir), shapes, args.world_size)
                checkpoint = str(found) if found else None
        checkpoint, skipped = distributed.broadcast((checkpoint, skipped))
    model.train()
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    elapsed = time.perf_counter() - start
    model.eval()
    for p in supernet.trainable_parameters():
        p.requires_grad_(False)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = TrainResult(
        algorithm=cfg.algorithm,
        steps=trainer.state.global_step,
        # The mean of the logged losses: after a resume the Trainer's own figure covers only the resumed part.
        train_loss=statistics.fmean(losses) if losses else float(output.training_loss),
        losses=losses,
        step_time_median_s=statistics.median(nls.step_times) if nls.step_times else 0.0,
        step_times_s=nls.step_times,
        time_s=elapsed,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        trainable_params=sum(p.numel() for p in supernet.trainable_parameters()),
        examples=len(rows),
        max_length=stats.max_length,
        examples_dropped=stats.dropped,
        examples_target_truncated=stats.target_truncated,
        resumed_from=checkpoint,
        skipped_checkpoints=skipped,
        processes=args.world_size,
        global_batch_size=args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size,
        subnet_digests=nls.digests,
        distillation=trainer.distillation.model_dump() if trainer.distillation is not None else None,
    )
    return result, nls
