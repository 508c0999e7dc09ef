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

import logging
import os
import random
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from .config import NLSTrainingConfig
from .data import Example
from .elastic import ElasticLoraSuperNet
from .elastic.supernet import PEFT_WEIGHTS

log = logging.getLogger(__name__)


def tokenize_examples(examples: list[Example], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """Prompt + target + EOS, with the loss on the target only (prompt labels are -100)."""
    rows = []
    for e in examples:
        prompt = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(e.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + target)[:max_length]
        labels = ([-100] * len(prompt) + target)[:max_length]
        if all(label == -100 for label in labels):
            continue  # the prompt alone fills max_length: nothing to learn from this example
        rows.append({"input_ids": ids, "labels": labels})
    if not rows:
        raise ValueError(f"no training example fits in data.max_length={max_length} tokens")
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
    """Activates one sub-adapter per optimizer step (NLS) or keeps the maximal one (plain LoRA)."""

    def __init__(self, supernet: ElasticLoraSuperNet, algorithm: str, seed: int, record: bool = False):
        self.supernet, self.algorithm, self.seed = supernet, algorithm, seed
        self.step_times: list[float] = []
        self.history: list[dict[str, int]] = []  # the configuration of each step, when recording
        self.record = record
        self._t0 = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.supernet.activate_maximal_subnet()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.algorithm == "nls":
            self.supernet.activate_config(step_config(self.supernet, self.seed, state.global_step))
        if self.record:
            self.history.append(self.supernet.get_active_config())
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter() - self._t0)

    def on_train_end(self, args, state, control, **kwargs):
        self.supernet.activate_maximal_subnet()


class AdapterTrainer(Trainer):
    """Checkpoints hold the adapter weights only (the base is frozen and already on disk)."""

    supernet: ElasticLoraSuperNet

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_file(
            self.supernet.adapter_state_dict(),
            os.path.join(output_dir, PEFT_WEIGHTS),
            metadata={"format": "pt"},
        )
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        self.supernet.load_adapter_weights(load_file(os.path.join(resume_from_checkpoint, PEFT_WEIGHTS)))


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
    examples: int = 0
    resumed_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def training_arguments(
    cfg: NLSTrainingConfig, output_dir: str | Path, progress: bool = True
) -> TrainingArguments:
    return TrainingArguments(
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
        use_cpu=not _has_accelerator(),
        gradient_checkpointing=cfg.gradient_checkpointing,
        report_to="none",
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

    Checkpoints (adapter weights, optimizer, scheduler, RNG) go to ``output_dir/checkpoint-*``;
    with ``resume`` the newest one is continued.
    """
    rows = tokenize_examples(examples, tokenizer, max_length)
    model = supernet.model
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen embeddings would otherwise cut the graph
    for p in supernet.trainable_parameters():
        p.requires_grad_(True)
    nls = NLSCallback(supernet, cfg.algorithm, cfg.seed)
    args = training_arguments(cfg, output_dir, progress)
    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[nls, *(callbacks or [])],
    )
    trainer.supernet = supernet
    checkpoint = None
    if resume:
        found = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        checkpoint = str(found[-1]) if found else None
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
        resumed_from=checkpoint,
    )
    return result, nls
