import logging
import shutil

import pytest
import torch

from nncf_elastic_lora.data import Example
from nncf_elastic_lora.models import build_tiny_llama
from nncf_elastic_lora.training import (
    PadCollator,
    step_config,
    tokenize_examples,
    tokenize_examples_with_stats,
    train_super_adapter,
)

from .conftest import TINY
from .helpers import EXAMPLES, adapter_weights, make_supernet, training_config


def _record_forwards(supernet):
    """The active configuration at every call of one adapter (gradient checkpointing's recompute included)."""
    seen = []
    adapter = supernet.adapters["model.layers.0.self_attn.q_proj"]
    adapter.register_forward_pre_hook(lambda m, a: seen.append(supernet.get_active_config()))
    return seen


def test_tokenized_examples_learn_only_the_target(tokenizer):
    rows = tokenize_examples(EXAMPLES[:2], tokenizer, max_length=64)
    prompt_len = len(tokenizer(EXAMPLES[0].prompt, add_special_tokens=False)["input_ids"])
    assert rows[0]["labels"][:prompt_len] == [-100] * prompt_len
    assert rows[0]["labels"][-1] == tokenizer.eos_token_id
    batch = PadCollator(tokenizer.pad_token_id)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def _words(n):
    return " word" * n  # one token per word with the tiny tokenizer


# With max_length=16: (prompt tokens, target tokens + EOS)
FIT_OR_CUT = [
    Example(id="fits", prompt="Q:", target=_words(3)),  # 2 + 4
    Example(id="fits exactly", prompt=_words(10), target=_words(5)),  # 10 + 6
    Example(id="EOS cut", prompt=_words(10), target=_words(6)),  # 10 + 7
    Example(id="answer cut", prompt="Q:", target=_words(30)),  # 2 + 31
    Example(id="prompt fills it", prompt=_words(16), target=" 4"),
    Example(id="prompt too long", prompt=_words(20), target=" 4"),
]


def test_examples_cut_by_max_length_are_counted_and_reported(tokenizer, caplog):
    assert len(tokenizer(_words(7), add_special_tokens=False)["input_ids"]) == 7
    with caplog.at_level(logging.WARNING, logger="nncf_elastic_lora.training"):
        rows = tokenize_examples(FIT_OR_CUT, tokenizer, max_length=16)
    rows_again, stats = tokenize_examples_with_stats(FIT_OR_CUT, tokenizer, max_length=16)
    assert rows == rows_again and len(rows) == 4
    assert (stats.examples, stats.dropped, stats.target_truncated, stats.max_length) == (6, 2, 2, 16)
    assert [r["labels"][-1] == tokenizer.eos_token_id for r in rows] == [True, True, False, False]
    assert all(len(r["input_ids"]) <= 16 for r in rows)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert "data.max_length=16" in message and "2 dropped" in message and "2 with the answer" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nncf_elastic_lora.training"):
        rows, stats = tokenize_examples_with_stats(FIT_OR_CUT, tokenizer, max_length=64)
        tokenize_examples(FIT_OR_CUT, tokenizer, max_length=64)
    assert len(rows) == 6 and (stats.dropped, stats.target_truncated) == (0, 0)
    assert not caplog.records


def test_no_example_fitting_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="data.max_length=16"):
        tokenize_examples(FIT_OR_CUT[-2:], tokenizer, max_length=16)


def test_train_report_records_what_max_length_cut(tmp_path, tokenizer):
    supernet = make_supernet(build_tiny_llama(TINY))
    result, _ = train_super_adapter(
        supernet, tokenizer, FIT_OR_CUT, training_config(max_steps=1), tmp_path, max_length=16, progress=False
    )
    report = result.to_dict()
    assert (report["max_length"], report["examples"]) == (16, 4)
    assert (report["examples_dropped"], report["examples_target_truncated"]) == (2, 2)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_sub_adapter_per_optimizer_step(tmp_path, tokenizer, checkpointing):
    supernet = make_supernet(build_tiny_llama(TINY))
    seen = _record_forwards(supernet)
    result, nls = train_super_adapter(
        supernet,
        tokenizer,
        EXAMPLES,
        training_config(gradient_checkpointing=checkpointing),
        tmp_path,
        progress=False,
    )
    assert result.steps == 4
    assert (result.max_length, result.examples_dropped, result.examples_target_truncated) == (256, 0, 0)
    # 2 micro-batches per step, each computed twice under gradient checkpointing (forward + recompute)
    per_step = 2 * (2 if checkpointing else 1)
    assert len(seen) == 4 * per_step
    for step in range(4):
        calls = seen[step * per_step : (step + 1) * per_step]
        assert all(c == step_config(supernet, 7, step) for c in calls)
    assert len({str(step_config(supernet, 7, s)) for s in range(4)}) > 1  # NLS does change sub-adapters
    assert supernet.get_active_config() == supernet.get_maximal_config()  # restored after training


def test_lora_mode_keeps_the_maximal_adapter(tmp_path, tokenizer):
    supernet = make_supernet(build_tiny_llama(TINY))
    seen = _record_forwards(supernet)
    train_super_adapter(
        supernet,
        tokenizer,
        EXAMPLES,
        training_config(algorithm="lora", max_steps=2),
        tmp_path,
        progress=False,
    )
    assert seen and all(c == supernet.get_maximal_config() for c in seen)


def test_training_is_seeded_and_changes_the_adapters(tmp_path, tokenizer):
    runs = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # the global RNG must not matter: attach and training are seeded
        supernet = make_supernet(build_tiny_llama(TINY))
        before = adapter_weights(supernet)
        result, _ = train_super_adapter(
            supernet, tokenizer, EXAMPLES, training_config(), tmp_path / str(i), progress=False
        )
        after = adapter_weights(supernet)
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert result.losses and all(torch.isfinite(torch.tensor(result.losses)))
        runs.append(after)
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k])


def test_resume_continues_where_it_stopped(tmp_path, tokenizer):
    straight = make_supernet(build_tiny_llama(TINY))
    train_super_adapter(
        straight, tokenizer, EXAMPLES, training_config(save_steps=2), tmp_path / "a", progress=False
    )
    # an interrupted run: the same training, killed after its step-2 checkpoint
    interrupted = make_supernet(build_tiny_llama(TINY))
    train_super_adapter(
        interrupted, tokenizer, EXAMPLES, training_config(save_steps=2), tmp_path / "b", progress=False
    )
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")
    resumed = make_supernet(build_tiny_llama(TINY))
    result, _ = train_super_adapter(
        resumed,
        tokenizer,
        EXAMPLES,
        training_config(save_steps=2),
        tmp_path / "b",
        resume=True,
        progress=False,
    )
    assert result.resumed_from.endswith("checkpoint-2") and result.skipped_checkpoints == []
    for k, v in adapter_weights(straight).items():
        torch.testing.assert_close(adapter_weights(resumed)[k], v)


# ---------------------------------------------------------------------- in-place distillation


def test_distillation_loss_is_zero_for_the_teacher_itself_and_teaches_the_student_only():
    from nncf_elastic_lora.distillation import distillation_loss_sum, target_logits

    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 11, generator=gen, requires_grad=True)
    student = torch.randn(5, 11, generator=gen, requires_grad=True)
    assert distillation_loss_sum(teacher, teacher.detach().clone()).item() == pytest.approx(0.0, abs=1e-6)
    loss = distillation_loss_sum(student, teacher, temperature=2.0)
    p_t = torch.softmax(teacher.detach() / 2, -1)
    expected = 4 * (p_t * (torch.log(p_t) - torch.log_softmax(student.detach() / 2, -1))).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ"):
        distillation_loss_sum(student[:4], teacher)
    # Position t predicts token t+1: only the logits before a labelled token are kept.
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    kept = target_logits(logits, labels)
    assert torch.equal(kept, torch.stack([logits[0, 1], logits[0, 2], logits[1, 0]]))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_inplace_distillation_trains_the_maximal_then_the_sampled_sub_network(tmp_path, tokenizer, checkpointing):
    supernet = make_supernet(build_tiny_llama(TINY))
    seen = _record_forwards(supernet)
    cfg = training_config(max_steps=2, gradient_checkpointing=checkpointing, distillation={"enabled": True})
    result, _ = train_super_adapter(supernet, tokenizer, EXAMPLES, cfg, tmp_path, progress=False)
    assert result.steps == 2 and result.distillation["enabled"] is True
    maximal = supernet.get_maximal_config()
    each = 2 if checkpointing else 1  # forward, and the recompute in backward
    for step in range(2):
        sampled = step_config(supernet, 7, step)
        for micro in range(2):  # gradient accumulation: 2 micro-batches per step
            start = (step * 2 + micro) * 2 * each
            assert seen[start : start + 2 * each] == [maximal] * each + [sampled] * each
    assert len(seen) == 2 * 2 * 2 * each
    assert supernet.get_active_config() == maximal


def test_inplace_distillation_gradient_is_the_maximal_loss_plus_the_sampled_ones_kl(tmp_path, tokenizer):
    """One step's gradient, read before the optimizer applies it, against the sandwich loss written by hand."""
    from transformers import TrainerCallback

    from nncf_elastic_lora.distillation import distillation_loss_sum, target_logits

    class Capture(TrainerCallback):
        grads = None

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            Capture.grads = {n: p.grad.clone() for n, p in supernet.model.named_parameters() if p.grad is not None}

    batches = []
    supernet = make_supernet(build_tiny_llama(TINY))
    twin = make_supernet(build_tiny_llama(TINY))
    cfg = training_config(max_steps=1, gradient_accumulation_steps=1, distillation={"enabled": True, "weight": 0.7})
    original_collate = PadCollator.__call__
    PadCollator.__call__ = lambda self, rows: batches.append(original_collate(self, rows)) or batches[-1]
    try:
        train_super_adapter(supernet, tokenizer, EXAMPLES, cfg, tmp_path, progress=False, callbacks=[Capture()])
    finally:
        PadCollator.__call__ = original_collate
    batch = batches[0]
    n = batch["labels"].ne(-100).sum()
    for p in twin.trainable_parameters():
        p.requires_grad_(True)
    twin.model.train()
    twin.activate_maximal_subnet()
    out = twin.model(**batch)
    teacher_loss, teacher = out.loss, target_logits(out.logits, batch["labels"]).detach()
    twin.activate_config(step_config(twin, 7, 0))
    out = twin.model(**batch)
    kd = distillation_loss_sum(target_logits(out.logits, batch["labels"]), teacher) / n
    (teacher_loss + 0.3 * out.loss + 0.7 * kd).backward()
    expected = {n: p.grad for n, p in twin.model.named_parameters() if p.grad is not None}
    assert Capture.grads.keys() == expected.keys() and expected
    for name in expected:
        torch.testing.assert_close(Capture.grads[name], expected[name], rtol=1e-4, atol=1e-6)


def test_distillation_needs_nls():
    with pytest.raises(ValueError, match="distillation.enabled.*algorithm 'nls'"):
        training_config(algorithm="lora", distillation={"enabled": True})
