"""Output directories: only ours are replaced, resumes check their inputs, one writer at a time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.elastic import ElasticLoraSuperNet
from nncf_elastic_lora.models import build_tiny_llama, load_tokenizer
from nncf_elastic_lora.outputs import (
    MARKER,
    OutputExistsError,
    claim_output,
    fingerprint_path,
    output_lock,
    read_marker,
)
from nncf_elastic_lora.stages.engine import cached_stage

from .conftest import TINY

TINY_CONFIG = str(Path(__file__).parent.parent / "configs" / "tiny_shears.json")


def test_overwrite_keeps_a_foreign_file_in_our_own_output(tmp_path):
    out = tmp_path / "out"
    with claim_output(out, verb="eval"):
        (out / "eval.json").write_text("{}")
    assert read_marker(out)["entries"] == ["eval.json"]
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExistsError, match="thesis.tex"), claim_output(out, verb="eval", overwrite=True):
        pass
    assert (out / "thesis.tex").read_text() == "precious"
    (out / "thesis.tex").unlink()
    with claim_output(out, verb="eval", overwrite=True):
        assert not (out / "eval.json").exists()  # replaced: ours and nothing else


def test_a_project_folder_with_config_json_survives_overwrite(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text("{}")
    (project / "data.csv").write_text("1,2")
    code = main(
        ["sparsify", "--config", TINY_CONFIG, "--output", str(project), "--overwrite", "--no-progress"]
    )
    assert code == 2 and "not written by nncf-elastic-lora" in capsys.readouterr().err
    assert sorted(p.name for p in project.iterdir()) == ["config.json", "data.csv"]


def test_resume_refuses_other_inputs_and_another_verb(tmp_path):
    out = tmp_path / "out"
    with claim_output(out, verb="train", fingerprints={"model": "a", "data": "d"}):
        (out / "checkpoints").mkdir()
    with pytest.raises(OutputExistsError, match="inputs differ .*: model"):
        with claim_output(out, verb="train", fingerprints={"model": "b", "data": "d"}, resume=True):
            pass
    with pytest.raises(OutputExistsError, match="holds the output of `train`"):
        with claim_output(out, verb="run", fingerprints={"model": "a", "data": "d"}, resume=True):
            pass
    with claim_output(out, verb="train", fingerprints={"model": "a", "data": "d"}, resume=True):
        assert (out / "checkpoints").is_dir()


def test_resume_removes_temporaries_of_a_killed_stage(tmp_path):
    out = tmp_path / "out"
    with claim_output(out, verb="run"):
        (out / "nls" / ".super_adapter.tmp-x1y2").mkdir(parents=True)
        (out / ".openvino.tmp-abcd").mkdir()
        (out / "nls" / "keep.tmp").write_text("not ours to judge")
    with claim_output(out, verb="run", resume=True):
        pass
    assert (
        not (out / ".openvino.tmp-abcd").exists() and not (out / "nls" / ".super_adapter.tmp-x1y2").exists()
    )
    assert (out / "nls" / "keep.tmp").exists()


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputExistsError, match="being written by another"):
            with claim_output(out, verb="eval"):
                pass
    with claim_output(out, verb="eval"):  # free again
        pass
    assert not (tmp_path / ".out.lock").exists()


def test_a_failed_verb_leaves_no_output_but_keeps_completed_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), claim_output(out, verb="eval", prelude=["config.json"]):
        (out / "config.json").write_text("{}")
        raise RuntimeError("model failed to load")
    assert not out.exists()
    with pytest.raises(RuntimeError), claim_output(out, verb="run", prelude=["config.json"]):
        (out / "config.json").write_text("{}")
        (out / "stages").mkdir()
        raise RuntimeError("killed after a stage")
    assert (out / "stages").is_dir() and (out / MARKER).is_file()


def test_a_cached_stage_of_other_inputs_is_refused(tmp_path):
    calls = []
    assert cached_stage(tmp_path, "s", lambda: calls.append(1) or 1, False, {"base": "x"})[0] == 1
    assert cached_stage(tmp_path, "s", lambda: calls.append(1) or 2, True, {"base": "x"})[0] == 1
    with pytest.raises(OutputExistsError, match=r"inputs changed since it ran \(base\)"):
        cached_stage(tmp_path, "s", lambda: 3, True, {"base": "y"})
    assert calls == [1]


def test_fingerprint_follows_content_not_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "w.bin").write_bytes(b"123")
    assert fingerprint_path(a) == fingerprint_path(b)
    (b / MARKER).write_text("{}")  # our own marker does not count
    assert fingerprint_path(a) == fingerprint_path(b)
    (b / "w.bin").write_bytes(b"124")
    assert fingerprint_path(a) != fingerprint_path(b)


def _save_tiny(path: Path, seed: int) -> Path:
    model = build_tiny_llama(TINY.model_copy(update={"tiny": TINY.tiny.model_copy(update={"seed": seed})}))
    model.save_pretrained(path)
    load_tokenizer(TINY).save_pretrained(path)
    return path


def test_a_resumed_search_on_another_base_measures_again(tmp_path, capsys):
    base_a, base_b = _save_tiny(tmp_path / "a", 0), _save_tiny(tmp_path / "b", 1)
    supernet = ElasticLoraSuperNet.attach(
        build_tiny_llama(TINY),
        target_modules=["q_proj", "v_proj"],
        max_rank=4,
        alpha=8,
        default_widths=[4, 2],
    )
    with torch.no_grad():
        for adapter in supernet.adapters.values():
            adapter.lora_B.weight.normal_()
    supernet.save_super_adapter(tmp_path / "super")
    args = [
        "search",
        "--super-adapter",
        str(tmp_path / "super"),
        "--output",
        str(tmp_path / "search"),
        "--algorithm",
        "hill_climbing",
        "--num-evals",
        "4",
        "--no-progress",
        "--set",
        "bootstrapNAS.search.subset_size=4",
        "--set",
        'data.splits={"train": 8, "validation": 8, "test": 8}',
    ]
    assert main([*args, "--model", str(base_a)]) == 0
    first = json.loads((tmp_path / "search" / "search_report.json").read_text())
    assert first["new_evaluations"] > 0
    assert main([*args, "--model", str(base_a), "--resume"]) == 0
    assert json.loads((tmp_path / "search" / "search_report.json").read_text())["new_evaluations"] == 0
    capsys.readouterr()
    assert main([*args, "--model", str(base_b), "--resume"]) == 0
    again = json.loads((tmp_path / "search" / "search_report.json").read_text())
    assert (
        again["new_evaluations"] == first["new_evaluations"]
        and again["not_reused"] == first["new_evaluations"]
    )
    assert again["reference"]["heuristic"]["quality"] != first["reference"]["heuristic"]["quality"]
    assert "not reused" in capsys.readouterr().out


def test_a_corrupt_marker_proves_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text('{"tool": "nncf-elastic-lora", ')  # cut short
    (out / "results.csv").write_text("1")
    code = main(["eval", "--config", TINY_CONFIG, "--output", str(out), "--overwrite", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not written by nncf-elastic-lora" in err and "Traceback" not in err
    assert (out / "results.csv").read_text() == "1"


@pytest.mark.parametrize(
    "text, expect",
    [
        ("{ cut", "is damaged"),
        ("[1, 2]", "a list, not an object"),
        ('{"result": {}, "time_s": "3"}', "time_s is '3'"),
        ('{"result": {}, "time_s": Infinity}', "time_s is not a finite number"),
        ('{"time_s": 1.0}', "'result'"),
        ('{"result": {"rows": [{"acc": NaN}]}, "time_s": 1.0}', "result.rows.0.acc is not a finite number"),
    ],
)
def test_a_damaged_cached_stage_is_a_clear_error_on_resume(tmp_path, text, expect):
    from nncf_elastic_lora.stages.engine import cached_stage

    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "dense.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(expect)):
        cached_stage(tmp_path, "dense", lambda: {"acc": 1.0}, resume=True)
    # without resume the stage simply runs again and replaces the file
    assert cached_stage(tmp_path, "dense", lambda: {"acc": 1.0}, resume=False)[0] == {"acc": 1.0}


def test_claiming_an_output_removes_what_a_killed_write_left_beside_it(tmp_path):
    from nncf_elastic_lora.outputs import claim_output

    stale = tmp_path / ".ir.tmp-k1ll3d"  # atomic_directory's temporary of a process killed with -9
    (stale / "fp").mkdir(parents=True)
    other = tmp_path / ".notes.tmp-mine"  # another output's: not this claim's to touch
    other.mkdir()
    with claim_output(tmp_path / "ir", verb="export", create=False):
        pass
    assert not stale.exists() and other.exists()
