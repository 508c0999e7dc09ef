"""Interrupted and damaged checkpoints: saves are atomic, and resume skips what a kill left half written."""

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.formats import ADAPTER_WEIGHTS
from nncf_elastic_lora.models import build_tiny_llama
from nncf_elastic_lora.training import (
    AdapterTrainer,
    TrainingDivergedError,
    checkpoint_problem,
    train_super_adapter,
    training_arguments,
)

from .conftest import TINY
from .helpers import EXAMPLES, adapter_weights, make_supernet, training_config

TINY_CONFIG = Path(__file__).parent.parent / "configs" / "tiny_shears.json"


def _train(tokenizer, out, **kw):
    supernet = make_supernet(build_tiny_llama(TINY))
    result, _ = train_super_adapter(
        supernet, tokenizer, EXAMPLES, training_config(save_steps=2), out, progress=False, **kw
    )
    return supernet, result


def _shapes(supernet):
    return {k: tuple(v.shape) for k, v in supernet.adapter_state_dict().items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tokenizer):
    """A finished 4-step run with checkpoints at steps 2 and 4, and its final adapter weights."""
    out = tmp_path_factory.mktemp("finished")
    supernet, _ = _train(tokenizer, out)
    return out, adapter_weights(supernet), _shapes(supernet)


@pytest.fixture
def run_dir(tmp_path, finished):
    """A copy of the finished run to damage."""
    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def _assert_same_adapter(supernet, reference):
    for k, v in adapter_weights(supernet).items():
        torch.testing.assert_close(v, reference[k])


def test_saves_leave_only_complete_rotated_checkpoints(tmp_path, tokenizer, finished):
    supernet = make_supernet(build_tiny_llama(TINY))
    train_super_adapter(
        supernet, tokenizer, EXAMPLES, training_config(save_steps=1), tmp_path, progress=False
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-3",
        "checkpoint-4",
    ]  # save_total_limit=2
    for p in tmp_path.iterdir():
        assert checkpoint_problem(p, finished[2]) is None


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _poison(path):
    """A NaN in the first adapter tensor, as a diverged step saved by an older version leaves it."""
    state = load_file(path)
    next(iter(state.values())).view(-1)[0] = float("nan")
    save_file(state, path)


DAMAGE = {
    "adapter truncated": (lambda d: _truncate(d / ADAPTER_WEIGHTS), ADAPTER_WEIGHTS),
    "adapter holds NaN": (lambda d: _poison(d / ADAPTER_WEIGHTS), "holds NaN or inf in 1 tensor"),
    "trainer state missing": (lambda d: (d / "trainer_state.json").unlink(), "trainer_state.json"),
    "trainer state cut": (lambda d: _truncate(d / "trainer_state.json"), "trainer_state.json"),
    "optimizer truncated": (lambda d: _truncate(d / "optimizer.pt"), "optimizer.pt"),
    "scheduler missing": (lambda d: (d / "scheduler.pt").unlink(), "scheduler.pt"),
    "rng state truncated": (lambda d: _truncate(d / "rng_state.pth"), "rng_state.pth"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_incomplete_newest_checkpoint_is_skipped(run_dir, tokenizer, finished, caplog, damage):
    spoil, culprit = DAMAGE[damage]
    spoil(run_dir / "checkpoint-4")
    assert culprit in checkpoint_problem(run_dir / "checkpoint-4", finished[2])
    with caplog.at_level(logging.WARNING, logger="nncf_elastic_lora.training"):
        resumed, result = _train(tokenizer, run_dir, resume=True)
    assert result.resumed_from == str(run_dir / "checkpoint-2")
    assert [s["checkpoint"] for s in result.skipped_checkpoints] == [str(run_dir / "checkpoint-4")]
    assert culprit in result.skipped_checkpoints[0]["reason"]
    assert any("checkpoint-4" in r.getMessage() and culprit in r.getMessage() for r in caplog.records)
    assert result.steps == 4
    _assert_same_adapter(resumed, finished[1])
    # the resumed run saved step 4 again, over the damaged one
    assert checkpoint_problem(run_dir / "checkpoint-4", finished[2]) is None


def test_no_complete_checkpoint_starts_from_step_0(run_dir, tokenizer, finished, caplog):
    (run_dir / "checkpoint-4" / "optimizer.pt").unlink()
    _truncate(run_dir / "checkpoint-2" / ADAPTER_WEIGHTS)
    with caplog.at_level(logging.WARNING, logger="nncf_elastic_lora.training"):
        resumed, result = _train(tokenizer, run_dir, resume=True)
    assert result.resumed_from is None
    assert len(result.skipped_checkpoints) == 2
    assert any("step 0" in r.getMessage() for r in caplog.records)
    _assert_same_adapter(resumed, finished[1])


class Killed(Exception):
    pass


def test_killed_save_is_never_resumed_from_and_is_cleaned(tmp_path, tokenizer, finished, monkeypatch):
    save_rng = AdapterTrainer._save_rng_state

    def dies_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise Killed  # the process dies after writing the adapter and optimizer of step 4
        save_rng(self, output_dir)

    with monkeypatch.context() as m:
        m.setattr(AdapterTrainer, "_save_rng_state", dies_at_step_4)
        with pytest.raises(Killed):
            _train(tokenizer, tmp_path)
    assert not (tmp_path / "checkpoint-4").exists()
    assert (tmp_path / ".tmp-checkpoint-4" / "checkpoint-4" / "optimizer.pt").is_file()
    resumed, result = _train(tokenizer, tmp_path, resume=True)
    assert result.resumed_from == str(tmp_path / "checkpoint-2")
    assert result.skipped_checkpoints == []
    _assert_same_adapter(resumed, finished[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_staged_checkpoints_are_ignored_and_only_ours_removed(run_dir, tokenizer, finished):
    # a staged save of a later step, complete but never renamed into place, must not be resumed from
    shutil.copytree(run_dir / "checkpoint-4", run_dir / ".tmp-checkpoint-6" / "checkpoint-6")
    shutil.move(run_dir / "checkpoint-4", run_dir / ".tmp-checkpoint-4-replaced")
    (run_dir / ".tmp-notes").mkdir()  # not our naming: left alone
    resumed, result = _train(tokenizer, run_dir, resume=True)
    assert result.resumed_from == str(run_dir / "checkpoint-2")
    _assert_same_adapter(resumed, finished[1])
    assert sorted(p.name for p in run_dir.iterdir()) == [".tmp-notes", "checkpoint-2", "checkpoint-4"]


def test_adapter_of_another_configuration_is_a_clear_error(run_dir, tokenizer):
    save_file({"other.lora_A.weight": torch.zeros(2, 2)}, str(run_dir / "checkpoint-4" / ADAPTER_WEIGHTS))
    with pytest.raises(
        ValueError, match=r"checkpoint-4/adapter_model.safetensors .*another LoRA configuration"
    ):
        _train(tokenizer, run_dir, resume=True)


def test_unloadable_optimizer_state_is_a_clear_error(run_dir, tokenizer):
    # complete on disk, but not this run's optimizer: the Trainer's own error would come from deep in torch
    torch.save({"state": {}, "param_groups": []}, run_dir / "checkpoint-4" / "optimizer.pt")
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-4: loading the optimizer"):
        _train(tokenizer, run_dir, resume=True)


def test_divergence_stops_before_the_step_is_applied(tmp_path, tokenizer, finished):
    # lr 1e20: steps 1-2 are finite, step 3's loss and gradients are NaN
    supernet = make_supernet(build_tiny_llama(TINY))
    with pytest.raises(TrainingDivergedError, match=r"diverged at optimizer step 3: loss nan, gradient norm nan"):
        train_super_adapter(
            supernet, tokenizer, EXAMPLES, training_config(learning_rate=1e20, save_steps=1), tmp_path, progress=False
        )
    assert all(torch.isfinite(v).all() for v in adapter_weights(supernet).values())  # step 3 not applied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert all(checkpoint_problem(p, finished[2]) is None for p in tmp_path.iterdir())
    # the Trainer's filter would log a NaN loss as the mean of the earlier ones
    assert training_arguments(training_config(), tmp_path).logging_nan_inf_filter is False


def test_diverged_train_writes_no_adapter_and_resume_diverges_again(tmp_path, capsys):
    out = tmp_path / "nls"
    argv = ["train", "--config", str(TINY_CONFIG), "--output", str(out), "--no-progress"]
    argv += ["--set", "bootstrapNAS.training.learning_rate=1e20"]
    for extra in ([], ["--resume"]):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert [line for line in err.splitlines() if line.startswith("error:")] == [
            line for line in err.splitlines() if "diverged at optimizer step" in line
        ]
        assert "Traceback" not in err and "no adapter was written" in err
        assert not (out / "super_adapter").exists() and not (out / "sub_adapter_heuristic").exists()
        assert not (out / "train_report.json").exists()
