"""What a search optimises: task quality of a sub-adapter on validation data, and its cost."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..data import Example
from ..elastic import ElasticLoraSuperNet
from ..evaluation import CausalLM, mean_token_loglik, multiple_choice

if TYPE_CHECKING:  # only a type here: importing the search must not load the export stack
    from ..latency import LatencyModel


class SubnetObjectives:
    """Measures ``(quality, cost, seconds)`` of a configuration on a fixed validation subset.

    ``metric``: ``"acc"`` (multiple-choice accuracy; needs choices) or ``"loss"`` (mean token NLL of
    the gold answers; quality is its negation so that higher is always better). ``cost``:
    ``"params"`` (the sub-adapter's parameters; in LoNAS's Mode B plus the adapted linears' and MLPs' base
    weights at the sub-network's widths) or ``"macs"`` (multiply-accumulates of the adapted
    linears, base included, for ``seq_len`` tokens: what shrinks once the base shrinks too) or
    ``"latency"`` (decode milliseconds per token of the extracted sub-network, predicted by
    ``latency_model``, a :class:`~nncf_elastic_lora.latency.LatencyModel` of this machine; Mode B).
    """

    def __init__(
        self,
        supernet: ElasticLoraSuperNet,
        tokenizer: Any,
        examples: list[Example],
        *,
        metric: str = "loss",
        cost: str = "params",
        seq_len: int = 128,
        batch_size: int = 16,
        latency_model: LatencyModel | None = None,
    ):
        if not examples:
            raise ValueError("the search needs validation examples; raise data.splits.validation")
        if metric == "acc" and not all(e.choices for e in examples):
            raise ValueError("metric 'acc' needs multiple-choice examples; use metric 'loss'")
        self.supernet, self.examples = supernet, examples
        self.metric, self.cost_kind, self.seq_len, self.batch_size = metric, cost, seq_len, batch_size
        if cost == "latency":
            if latency_model is None:
                raise ValueError("cost 'latency' needs a latency model (`nncf-elastic-lora latency`)")
            latency_model.check_fits(supernet.mlp_sizes(), supernet.kv_heads())
        self.latency_model = latency_model
        self.lm = CausalLM(supernet.model, tokenizer)

    def cost(self, config: dict[str, int]) -> float:
        if self.cost_kind == "latency":
            return self.latency_model.predict_ms(
                self.supernet.mlp_widths(config), self.supernet.kv_groups(config)
            )
        if self.cost_kind == "params":
            params = self.supernet.get_active_params(config)
            if self.supernet.channel_masks or self.supernet.head_masks:  # Mode B: the base shrinks too
                params += self.supernet.get_active_base_params(config)
            return float(params)
        return float(
            self.supernet.get_macs_for_active_config(config, seq_len=self.seq_len, include_base=True)
        )

    def quality(self, config: dict[str, int]) -> float:
        self.supernet.activate_config(config)
        return validation_quality(self.lm, self.examples, self.metric, self.batch_size)

    def __call__(self, config: dict[str, int]) -> tuple[float, float, float]:
        start = time.perf_counter()
        quality = self.quality(config)
        return quality, self.cost(config), time.perf_counter() - start


def validation_quality(lm: CausalLM, examples: list[Example], metric: str, batch_size: int = 16) -> float:
    """A search's quality of ``lm`` on ``examples``: accuracy (``"acc"``) or the gold answers' mean
    token log-likelihood (``"loss"``: higher is better). Any model scored so is comparable with the
    sub-adapters (the plain alternative's floor of ``select`` ``cheapest_above_plain``)."""
    if metric == "acc":
        acc, _, _ = multiple_choice(lm, examples, batch_size)
        return acc
    return mean_token_loglik(lm, [(e.prompt, e.target) for e in examples], batch_size)
