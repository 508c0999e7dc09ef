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


def test_smollm2_ir_generates_the_same_greedy_tokens_as_torch(tmp_path):
    """The bundled model exported to an FP32 IR: same greedy tokens in optimum-intel and GenAI."""
    out = tmp_path / "ov"
    args = [
        "export",
        "--model",
        "smollm2-135m",
        "--weight-format",
        "fp32",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert (
        main([*args, "--set", "export.parity.num_prompts=4", "--set", "export.parity.max_new_tokens=16"]) == 0
    )
    parity = json.loads((out / "export_report.json").read_text())["parity"]
    assert parity["greedy_identical_optimum"] == parity["greedy_identical_genai"] == 4
    assert parity["logits_max_abs_diff"] < 1e-3
    prompts = json.loads((out / "parity.json").read_text())["prompts"]
    assert all(len(p["torch_tokens"]) > 0 for p in prompts)
