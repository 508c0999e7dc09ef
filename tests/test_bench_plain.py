"""bench/plain.py: every recipe is a config `run` accepts; a bad --recipes is one clear error."""

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
