"""Many processes: `train`, `eval` and `search` under the real launchers (accelerate launch, torchrun),
two CPU processes on gloo, against the same verbs in one process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nncf_elastic_lora import distributed
from nncf_elastic_lora.cli import main
from nncf_elastic_lora.config import load_config
from nncf_elastic_lora.training import compare_across_processes, steps_digest

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = str(ROOT / "configs" / "tiny_shears.json")
# 12 steps at a high learning rate so the loss visibly falls on the random tiny model; checkpoints at 6 and 12.
TRAIN = [
    "--max-steps",
    "12",
    "--set",
    "bootstrapNAS.training.save_steps=6",
    "--set",
    "bootstrapNAS.training.learning_rate=0.01",
    "--set",
    "bootstrapNAS.training.logging_steps=1",
]


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def accelerate(*args: str) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).parent / "accelerate"
    # --multi_gpu selects accelerate's torchrun-based launcher; without a GPU the processes use gloo on CPU.
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", _port()]
    return _launch([*cmd, "-m", "nncf_elastic_lora", *args])


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port()]
    return _launch([*cmd, "-m", "nncf_elastic_lora", *args])


def single(*args: str) -> subprocess.CompletedProcess:
    return _launch([sys.executable, "-m", "nncf_elastic_lora", *args])


def _launch(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A super-adapter trained by two processes under `accelerate launch`."""
    out = tmp_path_factory.mktemp("mp") / "nls"
    accelerate("train", "--config", TINY_CONFIG, "--output", str(out), "--no-progress", *TRAIN)
    return out


def test_two_process_training_agrees_learns_and_writes_one_set_of_outputs(trained):
    report = json.loads((trained / "train_report.json").read_text())
    assert report["processes"] == 2
    assert report["global_batch_size"] == 4 * 2 * 2  # per-device batch x accumulation x processes
    assert report["steps"] == 12
    # Both processes activated the same sub-adapter at every one of the 12 steps.
    assert len(report["subnet_digests"]) == 2 and len(set(report["subnet_digests"])) == 1
    losses = report["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    # One set of outputs, by the main process; every process's RNG state in the checkpoints.
    assert sorted(p.name for p in trained.iterdir()) == sorted(
        [
            ".nncf-elastic-lora.json",
            "checkpoints",
            "sub_adapter_heuristic",
            "super_adapter",
            "train_config.json",
            "train_report.json",
        ]  # fmt: skip
    )
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-6"]
    for rng in ("rng_state_0.pth", "rng_state_1.pth"):
        assert (trained / "checkpoints" / "checkpoint-6" / rng).is_file()


def test_two_process_sub_adapter_loads_in_stock_peft(trained):
    from peft import PeftModel

    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.pipeline import load_supernet

    config = load_config(TINY_CONFIG)
    supernet, _ = load_supernet(config.model, trained / "super_adapter")
    supernet.activate_config(supernet.get_heuristic_config())
    base, _ = load_model(config.model)
    peft_model = PeftModel.from_pretrained(base, str(trained / "sub_adapter_heuristic")).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=ids).logits, supernet.model(input_ids=ids).logits, atol=1e-5, rtol=0
        )


def test_interrupted_two_process_training_resumes_to_the_same_adapter(trained, tmp_path):
    """The output as a kill between the step-6 and step-12 saves leaves it, resumed under torchrun."""
    out = tmp_path / "nls"
    shutil.copytree(trained, out)
    for name in ("super_adapter", "sub_adapter_heuristic", "train_report.json", "checkpoints/checkpoint-12"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    torchrun("train", "--config", TINY_CONFIG, "--output", str(out), "--no-progress", "--resume", *TRAIN)
    report = json.loads((out / "train_report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-6") and report["steps"] == 12
    assert report["processes"] == 2 and len(set(report["subnet_digests"])) == 1
    resumed = load_file(out / "super_adapter" / "adapter_model.safetensors")
    uninterrupted = load_file(trained / "super_adapter" / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for k, v in uninterrupted.items():
        torch.testing.assert_close(resumed[k], v, atol=1e-6, rtol=0)


def test_sharded_evaluation_equals_one_process_exactly(tmp_path):
    args = [
        "eval",
        "--config",
        TINY_CONFIG,
        "--tasks",
        "basic_arithmetic,piqa",
        "--limit",
        "21",
        "--no-progress",
    ]
    single(*args, "--output", str(tmp_path / "one"))
    torchrun(*args, "--output", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert [r["metrics"] for r in two["results"]] == [r["metrics"] for r in one["results"]]
    # Every log-likelihood and generation, bit for bit.
    assert (tmp_path / "two" / "predictions.jsonl").read_text() == (
        tmp_path / "one" / "predictions.jsonl"
    ).read_text()
    assert not (tmp_path / "two").joinpath("eval.json.tmp").exists()


def test_sharded_search_measures_and_chooses_like_one_process(trained, tmp_path):
    args = ["search", "--config", TINY_CONFIG, "--super-adapter", str(trained / "super_adapter")]
    args += ["--algorithm", "hill_climbing", "--num-evals", "6", "--no-progress"]
    single(*args, "--output", str(tmp_path / "one"))
    accelerate(*args, "--output", str(tmp_path / "two"))

    def measured(d):
        lines = (tmp_path / d / "evaluations.jsonl").read_text().splitlines()
        return [(e["key"], e["quality"], e["cost"]) for e in map(json.loads, lines)]

    assert measured("two") == measured("one") and len(measured("one")) >= 4
    reports = [json.loads((tmp_path / d / "search_report.json").read_text()) for d in ("one", "two")]
    assert reports[0]["chosen"] == reports[1]["chosen"]


def test_processes_that_trained_different_sub_adapters_fail_naming_the_step(monkeypatch):
    mine = [(0, (8, 8, 8)), (1, (4, 6, 8))]
    theirs = [(0, (8, 8, 8)), (1, (6, 6, 8))]
    monkeypatch.setattr(
        distributed, "all_gather", lambda v: [v, steps_digest(theirs)] if isinstance(v, str) else [v, theirs]
    )
    with pytest.raises(RuntimeError, match="different sub-adapters from optimizer step 1 on"):
        compare_across_processes(mine)
    monkeypatch.setattr(distributed, "all_gather", lambda v: [v, v])
    assert compare_across_processes(mine) == [steps_digest(mine)] * 2


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["run", TINY_CONFIG], {}, "`run` does not run under torchrun / accelerate launch (WORLD_SIZE=2)"),
        (["sparsify", "--config", TINY_CONFIG], {}, "`sparsify` is single-process"),
        (["train", "--config", TINY_CONFIG], {"ACCELERATE_USE_FSDP": "true"}, "does not run under FSDP"),
        (
            ["train", "--config", TINY_CONFIG],
            {"ACCELERATE_USE_DEEPSPEED": "true"},
            "does not run under DeepSpeed",
        ),
    ],
)
def test_launched_verbs_that_cannot_share_work_are_refused_before_any(
    argv, env, message, tmp_path, monkeypatch, capsys
):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", **env}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    assert main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_refused_output_stops_every_process_with_the_same_error(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port()]
    cmd += ["-m", "nncf_elastic_lora", "train", "--config", TINY_CONFIG, "--output", str(tmp_path / "taken")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    # The two processes share one stderr pipe: one's line may land before the other's newline.
    lines = proc.stderr.replace("error: ", "\nerror: ").splitlines()
    errors = sorted(line for line in lines if line.startswith("error: "))
    assert len(errors) == 2, proc.stderr[-3000:]
    assert "already exists and is not empty" in errors[1]
    assert errors[0] == errors[1].replace("error: ", "error: [process 1 of 2] ", 1)
    # No traceback from our code in either process (the launcher prints its own summary).
    assert not [
        line for line in proc.stderr.splitlines() if 'File "' in line and "nncf_elastic_lora/" in line
    ]
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]


def test_resuming_with_another_process_count_is_refused_naming_both(tmp_path):
    from nncf_elastic_lora.training import checkpoint_problem

    for name in ("rng_state_0.pth", "rng_state_1.pth"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"written by 2 training process\(es\), this run has 1: resume with 2"
    ):
        checkpoint_problem(tmp_path, {}, world_size=1)


def test_errors_whose_class_needs_more_than_a_message_reach_the_other_processes_as_runtime_errors():
    err = distributed._same_error(json.JSONDecodeError, "Expecting value: line 1 column 1 (char 0)")
    assert isinstance(err, RuntimeError) and "Expecting value" in str(err)
    assert isinstance(distributed._same_error(ValueError, "bad"), ValueError)
