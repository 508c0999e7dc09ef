"""Evaluate a causal LM on tasks: log-likelihood multiple choice, generative exact match, perplexity.

The model sits behind :class:`CausalLM`, which needs only the Hugging Face call convention
(``model(input_ids=..., attention_mask=...).logits`` and ``model.generate(...)``): a torch
``PreTrainedModel``, a peft model, and optimum-intel's ``OVModelForCausalLM`` all fit.

Metrics:

- ``acc``: the choice whose continuation has the highest total log-likelihood is right;
- ``acc_norm``: the same with the log-likelihood divided by the choice's length in characters, without the space that joins it to the prompt (as lm-eval's acc_norm)
- ``exact_match``: greedy generation, cut at a stop sequence, numeric answer extracted
  (:func:`~nncf_elastic_lora.data.extract_number`) and compared with the gold number;
- ``perplexity``: ``exp`` of the mean token NLL of the gold texts (prompt + target).

Under ``torchrun`` / ``accelerate launch`` every process scores a share of the batches and the
results are gathered (:mod:`~nncf_elastic_lora.distributed`): the same figures as one process.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from . import distributed
from .data import Example, extract_number, truncate_generation


class NonFiniteLogitsError(ValueError):
    """The model computed NaN or inf logits: its scores would be garbage, so none are reported."""


def check_finite_logits(logits: torch.Tensor, what: str) -> None:
    """Refuse ``logits`` (of real tokens, not padding) holding NaN or inf, counting them."""
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    nan, inf = int(torch.isnan(logits).sum()), int(torch.isinf(logits).sum())
    raise NonFiniteLogitsError(
        f"{what} hold {nan} NaN and {inf} inf values (of {logits.numel()}): its "
        "activations overflow or its weights are damaged, so nothing computed from them would mean anything; "
        "run it in float32, or check what wrote the model"
    )


class _FiniteLogits(LogitsProcessor):
    """Refuses NaN or +inf logits at each generation step.

    It runs after the generation config's own processors, which may set banned tokens to -inf, so only
    -inf across a whole row (no token left to choose) counts as broken.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores_f = scores.float()
        if bool(torch.isnan(scores_f).any() | torch.isposinf(scores_f).any() | torch.isneginf(scores_f).all(-1).any()):
            check_finite_logits(scores_f, f"the model's logits at generated position {input_ids.shape[1]}")
        return scores


class CausalLM:
    """A model with the HF causal-LM call convention plus its tokenizer; NaN or inf logits are refused."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 1024):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return getattr(self.model, "device", torch.device("cpu"))

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        logits = torch.as_tensor(out.logits)
        # Checked per position where it was computed (no copy of the logits); padding is not checked.
        broken = (~torch.isfinite(logits)).any(-1).cpu() & attention_mask.bool()
        if bool(broken.any()):
            check_finite_logits(logits.float().cpu()[attention_mask.bool()], "the model's logits of the scored text")
        return logits.float().cpu()

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        out = self.model.generate(
            input_ids=enc["input_ids"].to(self.device),
            attention_mask=enc["attention_mask"].to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            logits_processor=LogitsProcessorList([_FiniteLogits()]),
        )
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split where the whole string's tokens diverge."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    n = len(ctx)
    while n > 0 and whole[:n] != ctx[:n]:  # a merge across the boundary: move the split left
        n -= 1
    return whole[:n], whole[n:]


def _score(
    lm: CausalLM, requests: list[tuple[str, str]], batch_size: int, progress: bool
) -> list[tuple[float, int]]:
    """(sum log p(continuation | context), continuation tokens scored) per request, longest first."""
    encoded = [_encode_pair(lm.tokenizer, c, x) for c, x in requests]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    scores: dict[int, tuple[float, int]] = {}
    pad = lm.tokenizer.pad_token_id
    # Under a launcher each process scores every n-th batch: the batches themselves are unchanged.
    batches = distributed.shard([order[s : s + batch_size] for s in range(0, len(order), batch_size)])
    for _, idx in tqdm(batches, desc="log-likelihood", disable=not progress):
        fulls = [(encoded[i][0] + encoded[i][1])[-(lm.max_length + 1) :] for i in idx]
        width = max(len(f) - 1 for f in fulls)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, full in enumerate(fulls):
            ids[row, : len(full) - 1] = torch.tensor(full[:-1])
            mask[row, : len(full) - 1] = 1
        logprobs = F.log_softmax(lm.logits(ids, mask), dim=-1)
        for row, (i, full) in enumerate(zip(idx, fulls, strict=True)):
            n_cont = min(len(encoded[i][1]), len(full) - 1)
            positions = torch.arange(len(full) - 1 - n_cont, len(full) - 1)
            targets = torch.tensor(full[len(full) - n_cont :])
            scores[i] = (float(logprobs[row, positions, targets].sum()), n_cont)
    scores = distributed.gather(scores)
    return [scores[i] for i in range(len(encoded))]


def loglikelihoods(
    lm: CausalLM, requests: list[tuple[str, str]], batch_size: int = 8, progress: bool = False
) -> list[float]:
    """Sum of log p(continuation | context) for each (context, continuation) pair."""
    return [ll for ll, _ in _score(lm, requests, batch_size, progress)]


@dataclass
class TaskResult:
    task: str
    split: str
    n: int
    metrics: dict[str, float] = field(default_factory=dict)
    time_s: float = 0.0
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskResult:
        """The result :meth:`to_dict` wrote (its outcome digest is recomputed from predictions, if any)."""
        return cls(**{k: d[k] for k in ("task", "split", "n", "metrics", "time_s", "predictions") if k in d})

    def outcomes(self) -> str:
        """``"0110..."``: per example, in order, whether the primary metric (acc, else exact match)
        counts it right; two models scored on the same examples compare pairwise from these.

        A task scored both ways (basic_arithmetic: choices and a numeric answer) gives the acc bits only;
        mixing in the exact-match bits would average two metrics and halve the standard error.
        """
        choices = [p for p in self.predictions if "label" in p]
        if choices:
            bits = [p["pred"] == p["label"] for p in choices]
        else:
            bits = [p["extracted"] is not None and p["extracted"] == p["gold"] for p in self.predictions if "gold" in p]
        return "".join("1" if b else "0" for b in bits)

    def to_dict(self, with_predictions: bool = False) -> dict[str, Any]:
        d = {
            "task": self.task,
            "split": self.split,
            "n": self.n,
            "metrics": self.metrics,
            "time_s": self.time_s,
        }
        if self.predictions:
            d["outcomes"] = self.outcomes()
            d["examples_sha256"] = hashlib.sha256("\n".join(str(p["id"]) for p in self.predictions).encode()).hexdigest()[:16]
        if with_predictions:
            d["predictions"] = self.predictions
        return d


def multiple_choice(lm: CausalLM, examples: list[Example], batch_size: int = 8, progress: bool = False):
    """``(acc, acc_norm, per-example predictions)`` by log-likelihood of each choice."""
    requests = [(e.prompt, c) for e in examples for c in e.choices]
    lls = loglikelihoods(lm, requests, batch_size, progress)
    correct = correct_norm = 0
    preds, k = [], 0
    for e in examples:
        ll = lls[k : k + len(e.choices)]
        k += len(e.choices)
        # acc_norm as lm-eval: per character of the choice, without the space that joins it to the prompt
        norm = [v / max(len(c.removeprefix(" ")), 1) for v, c in zip(ll, e.choices, strict=True)]
        pred, pred_norm = max(range(len(ll)), key=ll.__getitem__), max(range(len(ll)), key=norm.__getitem__)
        correct += pred == e.label
        correct_norm += pred_norm == e.label
        preds.append({"id": e.id, "pred": pred, "pred_norm": pred_norm, "label": e.label, "loglik": ll})
    n = max(len(examples), 1)
    return correct / n, correct_norm / n, preds


def exact_match(
    lm: CausalLM,
    examples: list[Example],
    batch_size: int = 8,
    max_new_tokens: int = 16,
    progress: bool = False,
):
    """``(exact_match, per-example predictions)`` of greedy generations' extracted numbers."""
    batches = distributed.shard([examples[s : s + batch_size] for s in range(0, len(examples), batch_size)])
    texts: dict[int, list[str]] = {}
    for b, batch in tqdm(batches, desc="generate", disable=not progress):
        texts[b] = lm.generate([e.prompt for e in batch], max_new_tokens)
    texts = distributed.gather(texts)
    generations = [t for b in range(len(texts)) for t in texts[b]]
    hits, preds = 0, []
    for e, text in zip(examples, generations, strict=True):
        answer = extract_number(truncate_generation(text))
        gold = extract_number(e.answer or "")
        hits += answer is not None and answer == gold
        preds.append({"id": e.id, "generation": text, "extracted": answer, "gold": gold})
    return hits / max(len(examples), 1), preds


def mean_token_loglik(lm: CausalLM, requests: list[tuple[str, str]], batch_size: int = 8) -> float:
    """Log-likelihood per continuation token, pooled over all (context, continuation) requests."""
    scored = _score(lm, requests, batch_size, False)
    return sum(ll for ll, _ in scored) / max(sum(n for _, n in scored), 1)


def perplexity(lm: CausalLM, examples: list[Example], batch_size: int = 8) -> float:
    """Perplexity of the gold texts, each scored from its first token."""
    # Each text follows an end-of-text token, as documents follow one another in pre-training.
    return math.exp(
        -mean_token_loglik(lm, [(lm.tokenizer.eos_token or "", e.text) for e in examples], batch_size)
    )


def evaluate_task(
    lm: CausalLM,
    task: str,
    examples: list[Example],
    *,
    split: str = "test",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    with_perplexity: bool = False,
    progress: bool = False,
) -> TaskResult:
    """Every metric the task's examples support (choices -> acc; numeric answers -> exact match).

    An ``lm`` that only generates (``scores_choices`` False: a GenAI pipeline) gives the exact match of
    a task scored both ways; a task of choices alone is refused.
    """
    start = time.perf_counter()
    result = TaskResult(task=task, split=split, n=len(examples))
    mc = [e for e in examples if e.choices]
    gen = [e for e in examples if e.answer is not None]
    if mc and not getattr(lm, "scores_choices", True):
        if not gen:
            raise ValueError(
                f"task {task!r} is scored by the log-likelihood of its choices, which this model cannot give "
                f"({type(lm).__name__} only generates): choose a task with generated answers"
            )
        mc = []
    if mc:
        acc, acc_norm, preds = multiple_choice(lm, mc, batch_size, progress)
        result.metrics.update(acc=acc, acc_norm=acc_norm)
        result.predictions += preds
    if gen:
        em, preds = exact_match(lm, gen, batch_size, max_new_tokens, progress)
        result.metrics["exact_match"] = em
        result.predictions += preds
    if with_perplexity or not (mc or gen):
        result.metrics["perplexity"] = perplexity(lm, examples, batch_size)
    result.time_s = time.perf_counter() - start
    return result


METRIC_ORDER = ("acc", "acc_norm", "exact_match", "perplexity")


def results_table(results: dict[str, list[TaskResult]]) -> tuple[list[str], list[list[Any]]]:
    """Rows ``model | task | n | metrics...`` for a mapping model label -> results."""
    metrics = [m for m in METRIC_ORDER if any(m in r.metrics for rs in results.values() for r in rs)]
    rows = [
        [label, r.task, r.n, *(r.metrics.get(m) for m in metrics)]
        for label, rs in results.items()
        for r in rs
    ]
    return ["model", "task", "n", *metrics], rows


def paired_difference(a: str, b: str) -> tuple[float, float]:
    """``(mean(a − b), its standard error)`` of two models' outcomes on the same examples.

    ``a`` and ``b`` are :meth:`TaskResult.outcomes` strings. The standard error is the sample standard
    deviation of the per-example differences over ``sqrt(n)`` (a paired comparison: the examples both
    get right or both get wrong add no noise), 0 for a single example.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired outcomes need the same non-empty examples, got {len(a)} and {len(b)}")
    d = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)
