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
