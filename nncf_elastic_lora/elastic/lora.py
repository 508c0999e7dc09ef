"""The elastic LoRA layer: a frozen base linear plus a low-rank branch whose rank is switchable.

``y = base(x) + s · B[:, :r] (A[:r] x)`` with ``A ∈ R^{r_max×in}``, ``B ∈ R^{out×r_max}`` (peft's
layout: ``lora_A.weight``, ``lora_B.weight``). Every sub-adapter shares these weights and uses the
leading ``r`` components. The scaling is fixed at ``s = alpha / r_max`` whatever the active rank, as
the Shears reference does; a sub-adapter saved for peft keeps it through ``alpha_pattern``
(``alpha_i = alpha · r_i / r_max``). At an active rank ``r`` the branch costs what a plain LoRA of
rank ``r`` costs: the weights are sliced, never masked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ElasticLoraLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` (``base_layer``) with an elastic-rank LoRA branch."""

    def __init__(
        self,
        base_layer: nn.Linear,
        max_rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if max_rank <= 0:
            raise ValueError(f"max_rank must be positive, got {max_rank}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.max_rank = max_rank
        self.alpha = alpha
        self.scaling = alpha / max_rank
        device = base_layer.weight.device
        self.lora_A = nn.Linear(self.in_features, max_rank, bias=False, device=device)
        self.lora_B = nn.Linear(max_rank, self.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(
            self.lora_A.weight, a=math.sqrt(5), generator=generator
        )  # peft's default init
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.active_rank = max_rank

    def set_active_rank(self, rank: int) -> None:
        if not 0 <= rank <= self.max_rank:
            raise ValueError(f"rank {rank} is outside [0, {self.max_rank}] for this adapter")
        self.active_rank = rank

    @property
    def weight(self) -> torch.Tensor:  # so code that inspects `.weight` of a linear keeps working
        return self.base_layer.weight

    def lora_weights(self, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A[:r], B[:, :r])`` at ``rank`` (default: the active rank)."""
        r = self.active_rank if rank is None else rank
        return self.lora_A.weight[:r], self.lora_B.weight[:, :r]

    def delta_weight(self, rank: int | None = None) -> torch.Tensor:
        """The dense update ``s · B A`` at ``rank``, shaped like the base weight."""
        a, b = self.lora_weights(rank)
        return (b @ a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.active_rank == 0:
            return result
        a, b = self.lora_weights()
        update = F.linear(F.linear(self.lora_dropout(x).to(a.dtype), a), b) * self.scaling
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, max_rank={self.max_rank}, active_rank={self.active_rank}"
