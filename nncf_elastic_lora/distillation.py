"""In-place distillation's loss: the maximal sub-network's logits teach a sampled one (BigNAS's sandwich rule).

Only the positions the cross-entropy is taken on (the targets: label ≠ -100, shifted by one as a causal
LM predicts the next token) are distilled, so the teacher's kept logits are targets × vocabulary, not
the whole batch × sequence × vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def target_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits that predict a target token, ``[n_targets, vocab]`` (causal shift: position t predicts t+1)."""
    keep = labels[..., 1:] != IGNORE_INDEX
    return logits[..., :-1, :][keep]


def distillation_loss_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T² · Σ_tokens KL(softmax(teacher/T) ‖ softmax(student/T))`` over the rows of ``[n, vocab]`` logits.

    A sum, so the caller normalises it as its cross-entropy is normalised (per micro-batch token or per
    token of the whole accumulated batch). The teacher gets no gradient. Computed in float32 whatever
    the logits' dtype: bf16 log-probabilities lose the small differences distillation teaches.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {list(student.shape)} and teacher logits {list(teacher.shape)} differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.detach().float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="sum") * temperature**2
