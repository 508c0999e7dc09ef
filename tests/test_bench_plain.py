"""bench/plain.py: every recipe is a config `run` accepts; a bad --recipes is one clear error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import plain  # noqa: E402

from nncf_elastic_lora.stages import check_method  # noqa: E402


@pytest.mark.parametrize("recipe", list(plain.RECIPES))
def test_every_recipe_is_a_valid_run(recipe):
    config = plain.recipe_config(recipe, "piqa", 2, 7)
    check_method(config)
    t = config.bootstrapNAS.training
    assert (config.data.task, config.evaluation.tasks, t.max_steps, t.seed) == ("piqa", ["piqa"], 7, 44)
    assert config.plain.enabled and config.plain.weight_formats == ["int8", "int4"]
    assert config.export.weight_format == plain.RECIPES[recipe][2]


def test_unknown_recipe_is_one_clear_error():
    done = subprocess.run([sys.executable, str(BENCH / "plain.py"), "--recipes", "LoNAS heuristic,LoRA"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--recipes: unknown ['LoRA']" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("recipe", list(plain.SHARES_TRAINING))
def test_a_recipe_sharing_training_differs_only_after_it(recipe):
    source = plain.SHARES_TRAINING[recipe]
    a, b = (plain.recipe_config(r, "basic_arithmetic", 1, 7).model_dump(mode="json") for r in (recipe, source))
    assert plain.training_differences(a, b) == []
    assert (a["bootstrapNAS"]["search"], a["export"]) != (b["bootstrapNAS"]["search"], b["export"])


def test_training_differences_name_what_changes_the_training():
    a = plain.recipe_config("LoNAS heuristic", "piqa", 0, 7).model_dump(mode="json")
    for other, section in (
        (plain.recipe_config("LoNAS heuristic", "piqa", 0, 9), "bootstrapNAS.training"),  # other steps
        (plain.recipe_config("LoNAS heuristic", "piqa", 1, 7), "bootstrapNAS.training"),  # other seed
        (plain.recipe_config("LoNAS heuristic", "basic_arithmetic", 0, 7), "data"),
        (plain.recipe_config("LoNAS heuristic + distillation", "piqa", 0, 7), "bootstrapNAS.training"),
    ):
        assert section in plain.training_differences(a, other.model_dump(mode="json"))


def _finished_run(source, config):
    (source / "stages").mkdir(parents=True, exist_ok=True)
    (source / "report.json").write_text(json.dumps({"config": config.model_dump(mode="json")}))


def test_seeding_copies_the_training_stages_only(tmp_path, capsys):
    source, out = tmp_path / "heuristic", tmp_path / "searched"
    config = plain.recipe_config("LoNAS searched", "piqa", 0, 7)
    plain.seed_from_training(source, out, config)  # nothing trained there: the cell trains itself
    assert not out.exists()
    _finished_run(source, plain.recipe_config("LoNAS heuristic", "piqa", 0, 9))
    (source / "stages" / "train.json").write_text("{}")
    plain.seed_from_training(source, out, config)  # trained with other steps: not reused, and said so
    assert not out.exists() and "ran with other bootstrapNAS.training" in capsys.readouterr().out
    _finished_run(source, plain.recipe_config("LoNAS heuristic", "piqa", 0, 7))
    for name in ("train", "reorder", "search", "extract", "export"):
        (source / "stages").mkdir(parents=True, exist_ok=True)
        (source / "stages" / f"{name}.json").write_text("{}")
    for name in ("nls/super_adapter", "ordered_model", "extracted_model", "openvino"):
        (source / name).mkdir(parents=True)
        (source / name / "w.bin").write_text(name)
    plain.seed_from_training(source, out, config)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["reorder.json", "train.json"]
    assert sorted(p.name for p in out.iterdir()) == ["nls", "ordered_model", "stages"]
    assert (out / "nls" / "super_adapter" / "w.bin").read_text() == "nls/super_adapter"
