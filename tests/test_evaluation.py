"""Evaluation on a model whose answers are known: an oracle that follows gold texts token by token."""

import dataclasses
import math

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutput

from nncf_elastic_lora.data import Example
from nncf_elastic_lora.evaluation import CausalLM, evaluate_task, loglikelihoods


class OracleLM(torch.nn.Module):
    """Puts all probability on the next token of whichever known text the input is a prefix of.

    With ``contrary=True`` it puts all probability on anything *but* that token.
    """

    def __init__(self, texts, tokenizer, vocab=49152, contrary=False):
        super().__init__()
        self.seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.vocab, self.contrary = vocab, contrary

    def _next(self, prefix):
        for seq in self.seqs:
            if len(prefix) < len(seq) and seq[: len(prefix)] == prefix:
                return seq[len(prefix)]
        return None

    def forward(self, input_ids, attention_mask=None, **_):
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b in range(input_ids.shape[0]):
            real = [(t, int(i)) for t, (i, m) in enumerate(zip(input_ids[b], mask[b], strict=True)) if m]
            tokens = [i for _, i in real]
            for k, (t, _) in enumerate(real):
                nxt = self._next(tokens[: k + 1])
                if nxt is None:
                    continue
                if self.contrary:
                    logits[b, t] = 30.0
                    logits[b, t, nxt] = -30.0
                else:
                    logits[b, t, nxt] = 30.0
        return CausalLMOutput(logits=logits)

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **_):
        ids, mask = input_ids, attention_mask
        for _ in range(max_new_tokens):
            nxt = self.forward(ids, mask).logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        return ids


EXAMPLES = [
    Example(
        id=str(i),
        prompt=f"Question: Calculate {a} + {b} =\nAnswer:",
        target=f" {a + b}",
        choices=tuple(f" {a + b + d}" for d in (-1, 0, 2)),
        label=1,
        answer=str(a + b),
    )
    for i, (a, b) in enumerate([(3, 4), (12, 30), (7, 7), (100, 23), (5, 0)])
]


def _gold_texts():
    # Perplexity scores each text after an end-of-text token; the oracle knows both forms.
    texts = [e.prompt + e.target + "\n\nQuestion:" for e in EXAMPLES]
    return texts + ["<|im_end|>" + t for t in texts]


def test_oracle_scores_perfectly(tokenizer):
    lm = CausalLM(OracleLM(_gold_texts(), tokenizer), tokenizer)
    result = evaluate_task(lm, "arith", EXAMPLES, batch_size=2, max_new_tokens=6, with_perplexity=True)
    assert result.metrics["acc"] == 1.0
    assert result.metrics["acc_norm"] == 1.0
    assert result.metrics["exact_match"] == 1.0
    assert result.metrics["perplexity"] < 10.0  # only where the gold texts branch is it unsure
    assert result.n == 5 and len(result.predictions) == 10


def test_contrary_oracle_scores_zero(tokenizer):
    lm = CausalLM(OracleLM(_gold_texts(), tokenizer, contrary=True), tokenizer)
    result = evaluate_task(lm, "arith", EXAMPLES, batch_size=3, max_new_tokens=4, with_perplexity=True)
    assert result.metrics["acc"] == 0.0
    assert result.metrics["perplexity"] > 1e6
    assert result.metrics["exact_match"] == 0.0


class GeneratorOnly:
    """Generates the gold answers but scores no text (as a GenAI pipeline)."""

    scores_choices = False

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, max_new_tokens):
        return [" " + next(e.answer for e in EXAMPLES if e.prompt == p) for p in prompts]


def test_a_generator_only_model_gets_exact_match_and_refuses_choices_only(tokenizer):
    result = evaluate_task(GeneratorOnly(tokenizer), "arith", EXAMPLES, batch_size=2)
    assert result.metrics == {"exact_match": 1.0} and result.outcomes() == "11111"
    choices_only = [dataclasses.replace(e, answer=None) for e in EXAMPLES]
    with pytest.raises(ValueError, match="'arith' is scored by the log-likelihood of its choices"):
        evaluate_task(GeneratorOnly(tokenizer), "arith", choices_only)


def test_loglikelihood_matches_a_direct_computation(tiny_model, tokenizer):
    """Batched, padded scoring equals one unpadded forward per request."""
    lm = CausalLM(tiny_model, tokenizer)
    requests = [
        ("Question: Calculate 2 + 2 =\nAnswer:", " 4"),
        ("Hi", " there, how are you today?"),
        ("A", " B"),
    ]
    batched = loglikelihoods(lm, requests, batch_size=3)
    for (ctx, cont), got in zip(requests, batched, strict=True):
        c = tokenizer(ctx, add_special_tokens=False)["input_ids"]
        full = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([full])).logits[0].float(), -1)
        want = sum(float(logp[t - 1, full[t]]) for t in range(len(c), len(full)))
        assert got == pytest.approx(want, abs=1e-3)
    assert all(math.isfinite(v) and v < 0 for v in batched)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_are_refused_in_scoring_and_in_generation(tiny_model, tokenizer, value):
    from nncf_elastic_lora.evaluation import NonFiniteLogitsError

    with torch.no_grad():
        tiny_model.model.norm.weight[0] = value  # the hidden state's first channel, hence every logit
    lm = CausalLM(tiny_model, tokenizer)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(NonFiniteLogitsError, match=r"logits of the scored text hold \d+ NaN and \d+ inf"):
        lm.logits(ids, torch.ones_like(ids))
    with pytest.raises(NonFiniteLogitsError, match="logits at generated position"):
        lm.generate(["1 + 2 ="], max_new_tokens=2)


def test_paired_difference_and_its_standard_error():
    from nncf_elastic_lora.evaluation import paired_difference

    # Same examples right and wrong: no difference and no noise.
    assert paired_difference("1100", "1100") == (0.0, 0.0)
    # a wins on 2 of 4, loses none: d = [1, 1, 0, 0], mean 0.5, sd 0.577, SE 0.289.
    mean, se = paired_difference("1110", "0010")
    assert mean == 0.5 and abs(se - (1 / 3) ** 0.5 / 2) < 1e-12
    with pytest.raises(ValueError, match="the same non-empty examples, got 3 and 4"):
        paired_difference("110", "1100")
    with pytest.raises(ValueError, match="got 0 and 0"):
        paired_difference("", "")


def test_task_result_outcomes_follow_the_primary_metric():
    from nncf_elastic_lora.evaluation import TaskResult

    mc = TaskResult("t", "test", 2, predictions=[{"id": 1, "pred": 0, "label": 0}, {"id": 2, "pred": 1, "label": 0}])
    gen = TaskResult("g", "test", 2, predictions=[{"id": 1, "extracted": None, "gold": None},
                                                  {"id": 2, "extracted": 3.0, "gold": 3.0}])
    assert mc.outcomes() == "10" and gen.outcomes() == "01"  # no answer is never right, even against no gold
    # Scored both ways (choices and a numeric answer): the paired comparison uses the acc bits only.
    both = TaskResult("b", "test", 2, predictions=[*mc.predictions, *gen.predictions])
    assert both.outcomes() == "10"
    d = mc.to_dict()
    assert d["outcomes"] == "10" and len(d["examples_sha256"]) == 16 and "predictions" not in d
    assert TaskResult.from_dict(d).metrics == mc.metrics


@pytest.mark.parametrize("speed,speed_se,diff,se,expected", [
    (1.3, 0.05, 0.0, 0.02, "the shipped IR wins"),
    (1.3, None, -0.05, 0.02, "a trade"),
    (1.08, 0.1, 0.01, 0.02, "a tie: as fast within the run-to-run spread"),  # same-shape IRs: noise, not a win
    (0.94, 0.09, 0.065, 0.031, "the shipped IR wins: as fast within the run-to-run spread and more accurate"),
    (0.9, 0.02, 0.05, 0.02, "a trade: the plain alternative is faster, the shipped IR more accurate"),
    (None, None, 0.05, 0.02, "more accurate"),
    (0.95, 0.1, -0.05, 0.02, "the plain alternative wins: as fast within the run-to-run spread and more accurate"),
    (0.9, 0.02, 0.01, 0.02, "the plain alternative wins: faster at the same accuracy"),
    (0.9, None, -0.05, 0.02, "the plain alternative wins: faster and more accurate"),
    (None, None, -0.01, 0.02, "speed not measured"),
])  # fmt: skip
def test_verdict_line(speed, speed_se, diff, se, expected):
    from nncf_elastic_lora.stages.plain import verdict_line

    v = {"plain": "plain LoRA, merged, int8 IR", "task": "piqa", "metric": "acc", "difference": diff, "stderr": se,
         "speedup": {1: speed} if speed else None, "speedup_stderr": {1: speed_se} if speed_se else None}
    line = verdict_line(v)
    assert expected in line and line.startswith("Shipped vs plain LoRA, merged, int8 IR on piqa: ")
    assert f"{100 * diff:+.1f} points ± {100 * se:.1f}" in line
    if speed_se:
        assert f"{speed:.2f}x its batch-1 decode speed ± {speed_se:.2f}" in line


def test_verdict_names_the_machine_class_its_speed_ratio_holds_on():
    from nncf_elastic_lora.runtime import machine_class
    from nncf_elastic_lora.stages.plain import verdict_line

    avx512 = {"cpu": "AMD EPYC", "avx512": True, "amx": False, "optimization_capabilities": ["BF16", "INT8"]}
    assert machine_class(avx512) == "AMD EPYC, AVX-512 BF16"
    assert machine_class({**avx512, "avx512": False}) == "AMD EPYC, AVX2"
    assert machine_class({**avx512, "amx": True}) == "AMD EPYC, AVX-512 BF16, AMX"
    v = {"plain": "plain LoRA, merged, int8 IR", "task": "piqa", "metric": "acc", "difference": 0.0, "stderr": 0.02,
         "speedup": {1: 0.93}, "speedup_stderr": {1: 0.05}, "machine": machine_class({**avx512, "avx512": False})}
    assert "0.93x its batch-1 decode speed ± 0.05 on AMD EPYC, AVX2," in verdict_line(v)
    # where the run paired the IRs, and where its paired pass was skipped (the pooled medians then stand)
    assert "± 0.05 (paired over 20 rounds) on AMD EPYC" in verdict_line({**v, "paired_rounds": 20})
    skipped = verdict_line({**v, "paired_skipped": "it failed: out of memory"})
    assert "(pooled medians: the paired pass was skipped, it failed: out of memory)" in skipped


def test_a_failed_paired_pass_is_skipped_and_said_so(monkeypatch, tmp_path, caplog):
    from types import SimpleNamespace

    from nncf_elastic_lora.config import PipelineConfig
    from nncf_elastic_lora.deploy.benchmark import BenchmarkError
    from nncf_elastic_lora.stages import ship

    def fail(*args, **kwargs):
        raise BenchmarkError("paired benchmark failed (exit 9):\nKilled")

    monkeypatch.setattr(ship, "paired_decode_speeds", fail)
    monkeypatch.setattr(ship, "weights_bytes", lambda path: 2**30)
    run = SimpleNamespace(config=PipelineConfig())
    models = [("a", tmp_path), ("b", tmp_path)]
    assert ship._paired(run, models, {"memory_gib": 64}) == {"skipped": "it failed: paired benchmark failed (exit 9):"}
    assert "paired benchmark skipped" in caplog.text
    assert "exceed half this machine's memory (3 GiB)" in ship._paired(run, models, {"memory_gib": 3})["skipped"]


@pytest.mark.parametrize("control,expected", [
    (1.02, "the shipped IR wins: faster"),  # a steady run: the standard error decides
    (1.23, "a tie: as fast within the run-to-run spread"),  # the same shapes read 1.23x: 1.18x is not a gain
    (0.80, "a tie: as fast within the run-to-run spread"),
])  # fmt: skip
def test_verdict_widens_the_speed_spread_to_the_runs_same_shape_control(control, expected):
    from nncf_elastic_lora.stages.plain import same_shape_control, verdict_line

    rows = {"dense OpenVINO IR (int8)": {"decode_tokens_per_s": {1: 100.0 * control, 4: 300.0}},
            "plain LoRA, merged, int8 IR": {"decode_tokens_per_s": {1: 100.0, 4: 0.0}}}  # fmt: skip
    measured = same_shape_control(rows, "dense OpenVINO IR (int8)", "plain LoRA, merged, int8 IR")
    assert measured == {1: pytest.approx(control)}  # batch 4 unmeasured on one side: no control there
    assert same_shape_control(rows, "dense OpenVINO IR (fp32)", "plain LoRA, merged, int8 IR") is None
    v = {"plain": "plain LoRA, merged, int8 IR", "task": "piqa", "metric": "acc", "difference": 0.0, "stderr": 0.02,
         "speedup": {1: 1.18}, "speedup_stderr": {1: 0.05}, "speedup_control": measured}
    line = verdict_line(v)
    assert expected in line
    assert ("same-shape control" in line) == (abs(control - 1) > 0.05)


def test_decode_speed_stderr_from_the_repeated_runs():
    from nncf_elastic_lora.deploy.benchmark import decode_speed_stderr

    runs = {"batch_size": 1, "ttft_runs_s": [0.1, 0.1, 0.1, 0.1], "generate_runs_s": [0.7, 0.74, 0.66, 0.7]}
    se = decode_speed_stderr(runs, new_tokens=65)  # decode speeds 106.7, 100, 114.3, 106.7 tok/s
    assert 0.02 < se < 0.04
    assert decode_speed_stderr({**runs, "ttft_runs_s": [0.1, 0.1]}, new_tokens=65) is None  # too few runs
