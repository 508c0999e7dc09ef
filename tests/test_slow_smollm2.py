"""On the real bundled SmolLM2-135M (minutes): run with `pytest -m slow`."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from nncf_elastic_lora.cli import main

pytestmark = pytest.mark.slow


def test_sparsify_smollm2_half_of_every_row(tmp_path):
    out = tmp_path / "smollm2-wanda50"
    assert (
        main(["sparsify", "--model", "smollm2-135m", "--ratio", "0.5", "--output", str(out), "--no-progress"])
        == 0
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    report = json.loads((out / "report.json").read_text())
    assert len(report["layers"]) == 30 * 7
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            assert ((module.weight == 0).sum(1) == module.in_features // 2).all(), name
