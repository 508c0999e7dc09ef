import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.deploy.benchmark import paired_ratio
from nncf_elastic_lora.runtime import scoring_class

TINY_CONFIG = str(Path(__file__).parent.parent / "configs" / "tiny_shears.json")
FAST = ["--no-progress", "--set", 'evaluation.tasks=["basic_arithmetic"]', "--set", "evaluation.limit=8"]
FAST += ["--set", "benchmark.enabled=false"]  # the end-to-end test measures; the others need not


def test_run_tiny_pipeline_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["run", TINY_CONFIG, "--output", str(out), *FAST, "--set", "benchmark.enabled=true"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["evaluation"]) == {
        "dense",
        "sparse",
        "sparse+NLS (maximal)",
        "sparse+NLS (heuristic)",
        "sparse+NLS (minimal)",
        "sparse+NLS (hill_climbing)",
        "OpenVINO IR (int8, hill_climbing sub-adapter)",
        "dense OpenVINO IR (fp32)",
        "plain LoRA, merged, int8 IR",
    }
    rows = report["benchmark"]["rows"]
    assert [r["label"] for r in rows] == [
        "OpenVINO IR (int8, hill_climbing sub-adapter)", "dense OpenVINO IR (fp32)", "plain LoRA, merged, int8 IR"
    ]
    assert rows[1]["speedup"] == {"1": 1.0, "4": 1.0} and rows[0]["decode_tokens_per_s"]["4"] > 0
    # The plain alternative (LoRA on the dense model, merged, INT8): scored, sized, timed, and the verdict.
    assert rows[2]["plain"] and rows[2]["score"] is not None and rows[2]["weights_bytes"] > 0
    assert rows[2]["decode_tokens_per_s"]["1"] > 0
    plain = report["plain"]
    assert plain["reused"] is False and plain["train"]["steps"] == 6
    assert plain["scored_on"] == scoring_class("CPU") and plain["rescored"] == []
    verdict = plain["verdict"]
    assert verdict["plain"] == "plain LoRA, merged, int8 IR" and verdict["stderr"] is not None
    assert verdict["speedup"]["4"] == pytest.approx(
        rows[0]["decode_tokens_per_s"]["4"] / rows[2]["decode_tokens_per_s"]["4"]
    )
    # at batch 1 the verdict reads the IRs paired round by round, all loaded in one process
    paired = report["benchmark"]["paired"]["tokens_per_s"]
    assert verdict["paired_rounds"] == 20 == len(paired["plain LoRA, merged, int8 IR"])
    assert verdict["speedup"]["1"] == pytest.approx(paired_ratio(paired[rows[0]["label"]], paired[rows[2]["label"]])[0])
    assert "(paired over 20 rounds)" in verdict["line"]
    assert verdict["line"].startswith("Shipped vs plain LoRA, merged, int8 IR on basic_arithmetic: ")
    assert verdict["line"] in (out / "report.md").read_text()
    assert f"| scored on | {plain['scored_on']} |" in (out / "report.md").read_text()
    assert verdict["speedup_control"] is None  # no dense IR of the plain one's format (int8) in this run
    # A second run with the same plain inputs reuses the reference: no second LoRA training.
    again = tmp_path / "again"
    cheap = ["--set", "sparsity.method=none", "--set", "bootstrapNAS.enabled=false", "--set", "evaluation.baseline=false"]
    assert main(["run", TINY_CONFIG, "--output", str(again), *FAST, *cheap]) == 0
    second = json.loads((again / "report.json").read_text())
    assert second["plain"]["reused"] is True and second["plain"]["directory"] == plain["directory"]
    assert second["plain"]["rescored"] == []  # scored on this machine class when it was computed
    assert second["evaluation"]["plain LoRA, merged, int8 IR"] == report["evaluation"]["plain LoRA, merged, int8 IR"]
    assert "reused from the cache" in (again / "report.md").read_text()
    assert (out / "accuracy_vs_speed.png").read_bytes()[:4] == b"\x89PNG"
    assert "Speed: the shipped IR against dense exports" in (out / "report.md").read_text()
    assert report["export"]["parity"]["logits_max_abs_diff"] < 0.05  # int8 weights: close to torch, not equal
    assert report["export"]["ir_sparsity"] == pytest.approx(
        0.5, abs=0.01
    )  # adapter unmerged: base stays sparse
    assert (out / "openvino" / "openvino_detokenizer.xml").is_file()
    assert report["search"]["new_evaluations"] <= 6  # the budget covers the reference sub-adapters too
    assert (out / "search" / "sub_adapter" / "adapter_config.json").is_file()
    assert report["training"]["steps"] == 6 and report["training"]["algorithm"] == "nls"
    assert report["training"]["adapter_params"]["heuristic"] < report["training"]["adapter_params"]["maximal"]
    assert set(report["stage_time_s"]) >= {"sparsify", "train", "evaluate sub-adapters"}
    assert (out / "nls" / "sub_adapter_heuristic" / "adapter_config.json").is_file()
    assert report["sparsity"]["sparsity"] == pytest.approx(0.5)
    assert report["data"]["basic_arithmetic"]["sizes"] == {"train": 64, "validation": 16, "test": 16}
    assert (out / "report.md").read_text().startswith("# nncf-elastic-lora run")
    model = AutoModelForCausalLM.from_pretrained(out / "sparse_model")
    q = model.model.layers[0].self_attn.q_proj.weight
    assert ((q == 0).sum(1) == q.shape[1] // 2).all()


def test_run_refuses_existing_output_then_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    # no export (nor the plain reference it brings) nor baselines: the output's handling is the same without them
    fast = [*FAST, "--set", "export.enabled=false", "--set", "evaluation.baseline=false"]
    assert main(["run", TINY_CONFIG, "--output", str(out), *fast]) == 0
    stamp = (out / "stages" / "sparsify.json").stat().st_mtime_ns
    assert main(["run", TINY_CONFIG, "--output", str(out), *fast]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["run", TINY_CONFIG, "--output", str(out), "--resume", *fast]) == 0
    assert (out / "stages" / "sparsify.json").stat().st_mtime_ns == stamp  # reused, not redone
    assert main(["run", TINY_CONFIG, "--output", str(out), "--overwrite", *fast]) == 0
    assert (out / "stages" / "sparsify.json").stat().st_mtime_ns != stamp


def test_sparsify_verb_writes_loadable_checkpoint(tmp_path):
    out = tmp_path / "sparse"
    args = [
        "sparsify",
        "--config",
        TINY_CONFIG,
        "--output",
        str(out),
        "--ratio",
        "0.25",
        "--pattern",
        "unstructured",
        "--no-progress",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.25)
    assert report["calibration"]["task"] == "basic_arithmetic"
    assert len(report["layers"]) == 14
    model = AutoModelForCausalLM.from_pretrained(out)
    down = model.model.layers[1].mlp.down_proj.weight
    assert torch.equal((down == 0).sum(1), torch.full((down.shape[0],), down.shape[1] // 4))
    assert main(args) == 2  # exists
    assert main([*args, "--overwrite", "--method", "magnitude"]) == 0
    assert json.loads((out / "report.json").read_text())["method"] == "magnitude"


def test_train_verb_on_a_sparse_base(tmp_path):
    from peft import PeftModel

    sparse = tmp_path / "sparse"
    assert main(["sparsify", "--config", TINY_CONFIG, "--output", str(sparse), "--no-progress"]) == 0
    out = tmp_path / "train"
    args = [
        "train",
        "--config",
        TINY_CONFIG,
        "--model",
        str(sparse),
        "--output",
        str(out),
        "--max-steps",
        "3",
        "--algorithm",
        "lora",
        "--no-progress",
    ]
    assert main(args) == 0
    report = json.loads((out / "train_report.json").read_text())
    assert report["steps"] == 3 and report["algorithm"] == "lora" and report["base_model"] == str(sparse)
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(sparse), out / "sub_adapter_heuristic"
    )
    assert peft_model.peft_config["default"].base_model_name_or_path == str(sparse)
    assert main(args) == 2  # refuses to overwrite
    assert main([*args, "--resume"]) == 0  # finished training resumes as a no-op


def test_search_verb_nsga_and_resume(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                TINY_CONFIG,
                "--output",
                str(out),
                *FAST,
                "--set",
                "evaluation.baseline=false",
                "--set",
                'evaluation.subnets=["heuristic"]',
                "--set",
                'bootstrapNAS.search.algorithm="heuristic"',
            ]
        )
        == 0
    )
    search = tmp_path / "search"
    args = [
        "search",
        "--config",
        TINY_CONFIG,
        "--model",
        str(out / "sparse_model"),
        "--super-adapter",
        str(out / "nls" / "super_adapter"),
        "--output",
        str(search),
        "--algorithm",
        "NSGA2",
        "--num-evals",
        "12",
        "--set",
        "bootstrapNAS.search.population=4",
        "--no-progress",
    ]
    assert main(args) == 0
    report = json.loads((search / "search_report.json").read_text())
    assert report["algorithm"] == "NSGA2" and report["front"]
    lines = (search / "evaluations.jsonl").read_text().splitlines()
    assert main([*args, "--resume"]) == 0  # the same search again: everything comes from the log
    assert json.loads((search / "search_report.json").read_text())["new_evaluations"] == 0
    assert (search / "evaluations.jsonl").read_text().splitlines() == lines


def test_eval_verb(tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--config",
                TINY_CONFIG,
                "--output",
                str(out),
                "--tasks",
                "sst2",
                "--limit",
                "6",
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((out / "eval.json").read_text())["results"][0]
    assert result["task"] == "sst2" and result["n"] == 6 and 0 <= result["metrics"]["acc"] <= 1
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6


def test_invalid_config_fails_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sparsity": {"method": "sparsegpt"}}))
    assert main(["run", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sparsity.method" in err and "'wanda'" in err
    assert not (tmp_path / "out").exists()


def test_resume_with_a_changed_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", TINY_CONFIG, "--output", str(out), *FAST, "--set", "bootstrapNAS.enabled=false"]) == 0
    assert (
        main(
            [
                "run",
                TINY_CONFIG,
                "--output",
                str(out),
                "--resume",
                *FAST,
                "--set",
                "bootstrapNAS.enabled=false",
                "--set",
                "sparsity.ratio=0.6",
            ]
        )
        == 2
    )
    assert "sparsity.ratio" in capsys.readouterr().err
    # a run started by a version without an option since added resumes: the option holds its default there
    saved = json.loads((out / "config.json").read_text())
    del saved["bootstrapNAS"]["training"]["qa_base_weight"]
    (out / "config.json").write_text(json.dumps(saved))
    resume = ["run", TINY_CONFIG, "--output", str(out), "--resume", *FAST, "--set", "bootstrapNAS.enabled=false"]
    assert main(resume) == 0, capsys.readouterr().err


def test_value_errors_are_clear_cli_errors(tmp_path, capsys):
    args = [
        "sparsify",
        "--config",
        TINY_CONFIG,
        "--output",
        str(tmp_path / "s"),
        "--set",
        'sparsity.target_modules=["no_such_proj"]',
        "--no-progress",
    ]
    assert main(args) == 2
    assert "matches no linear layer" in capsys.readouterr().err


def test_overwrite_refuses_a_foreign_directory(tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    assert (
        main(["sparsify", "--config", TINY_CONFIG, "--output", str(foreign), "--overwrite", "--no-progress"])
        == 2
    )
    assert "refusing to delete" in capsys.readouterr().err
    assert (foreign / "holiday.jpg").exists()


def test_schema_and_tasks(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "bootstrapNAS" in schema["properties"]
    assert main(["tasks"]) == 0
    assert "basic_arithmetic" in capsys.readouterr().out


def test_fault_campaign_refuses_an_unknown_case(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "bench" / "fault_campaign.py"
    r = subprocess.run([sys.executable, str(script), "", "kill9_train_resume,no_such_case"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown case(s) no_such_case" in r.stderr


def test_scale_bench_refuses_an_unknown_shape_and_a_missing_data_file(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "bench" / "scale.py"
    r = subprocess.run([sys.executable, str(script), "--shapes", "llama-3.2-1b,gpt-5"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown shape(s) ['gpt-5']; known: smollm2-135m" in r.stderr
    r = subprocess.run([sys.executable, str(script), "--data", str(tmp_path / "none.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_scale_bench_and_gpu_check_refuse_bad_flags(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    for flags, message in ((["--samples", "0"], "--samples 0: must be at least 1"),
                           (["--tag", "a/b"], "--tag 'a/b': letters, digits"),
                           (["--rounds", "0"], "--rounds 0: must be at least 1")):
        r = subprocess.run([sys.executable, str(root / "bench" / "scale.py"), *flags], capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "usage: bench/gpu_check.sh prepare|run"
