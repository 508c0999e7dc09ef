"""A cached plain reference is scored on each machine class it is used on, once per class."""

import json
from pathlib import Path

import pytest

from nncf_elastic_lora.config import apply_overrides, load_config
from nncf_elastic_lora.runtime import machine_class, scoring_class
from nncf_elastic_lora.stages import plain
from nncf_elastic_lora.stages.plain import REPORT, plain_key, plain_reference

TINY = Path(__file__).parent.parent / "configs" / "tiny_shears.json"


class Scored:
    def __init__(self, acc: float):
        self.acc = acc

    def to_dict(self) -> dict:
        return {"task": "basic_arithmetic", "metrics": {"acc": self.acc}}


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A config whose plain reference is in the cache, as written before scores were kept per machine class."""
    config = apply_overrides(load_config(TINY), [f'plain.cache_dir="{tmp_path}"'])
    folder = tmp_path / plain_key(config)
    folder.mkdir()
    legacy = {"key": plain_key(config), "train": {"steps": 6}, "time_s": 1.0,
              "irs": {"int8": {"export": {"weight_format": "int8"}, "evaluation": [Scored(0.59).to_dict()]}}}
    (folder / REPORT).write_text(json.dumps(legacy))
    calls = []

    def evaluate_ir(config, ir_dir, tasks, progress):
        calls.append((machine[0], Path(ir_dir).name))
        return [Scored({"AVX2 box": 0.56, "AVX-512 box": 0.59}[machine[0]])]

    machine = ["AVX2 box"]
    monkeypatch.setattr(plain, "scoring_class", lambda device: machine[0])
    monkeypatch.setattr(plain, "evaluate_ir", evaluate_ir)
    return config, folder, machine, calls


def test_a_reused_reference_is_scored_once_per_machine_class(cached):
    config, folder, machine, calls = cached
    first = plain_reference(config, tasks={}, progress=False)
    # written before scores were per class: where it was scored is unknown, so it is scored here
    assert first["reused"] and first["rescored"] == ["int8"] and first["scored_on"] == "AVX2 box"
    assert first["irs"]["int8"]["evaluation"][0]["metrics"]["acc"] == 0.56
    assert calls == [("AVX2 box", "openvino_int8")]
    again = plain_reference(config, tasks={}, progress=False)
    assert again["rescored"] == [] and len(calls) == 1  # this class's scores are in the cache now
    machine[0] = "AVX-512 box"
    other = plain_reference(config, tasks={}, progress=False)
    assert other["rescored"] == ["int8"] and other["irs"]["int8"]["evaluation"][0]["metrics"]["acc"] == 0.59
    machine[0] = "AVX2 box"
    back = plain_reference(config, tasks={}, progress=False)
    assert back["rescored"] == [] and back["irs"]["int8"]["evaluation"][0]["metrics"]["acc"] == 0.56
    assert len(calls) == 2
    kept = json.loads((folder / REPORT).read_text())["irs"]["int8"]["scores"]
    assert {m: s[0]["metrics"]["acc"] for m, s in kept.items()} == {"AVX2 box": 0.56, "AVX-512 box": 0.59}


def test_scoring_class_names_the_cpu_class_here():
    from nncf_elastic_lora.runtime import machine_info

    assert scoring_class("CPU") == machine_class(machine_info("CPU"))
