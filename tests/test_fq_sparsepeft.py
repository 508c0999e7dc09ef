"""fq_sparsepeft: SparsePEFT's mask inside FQ-LoRA's trainable INT4 quantiser; the pruned zeros survive the merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.deploy.ir import check_ir_codes
from nncf_elastic_lora.elastic import FQLoraLinear, FQSparsePeftLinear
from nncf_elastic_lora.int4 import load_quantized_weights
from nncf_elastic_lora.merge import MergeError, merge_fq_module
from nncf_elastic_lora.models import ModelConfig, load_model
from nncf_elastic_lora.quantization import QuantizedWeight, quantize

CONFIGS = Path(__file__).parent.parent / "configs"
OUT, IN, GROUP = 48, 64, 32


def _sparse_int4_linear(sym: bool) -> tuple[nn.Linear, QuantizedWeight]:
    """A linear holding the dequantisation of min/max INT4 codes of a 50 %-sparse float weight (its float source);
    a few kept weights are so small that they round to zero in INT4."""
    torch.manual_seed(0)
    w = torch.randn(OUT, IN)
    w = w * (w.abs() > w.abs().median())
    kept = w.nonzero()[::37]  # one here and there: each group keeps its range
    w[kept[:, 0], kept[:, 1]] = 1e-5
    g = w.reshape(OUT, IN // GROUP, GROUP)
    if sym:
        scale, zp = (g.abs().amax(-1) / 7).half(), None
    else:
        scale = ((g.amax(-1) - g.amin(-1)) / 15).half()
        zp = torch.round(-g.amin(-1) / scale.float()).clamp(0, 15).to(torch.uint8)
    q = QuantizedWeight(quantize(w, scale, zp, GROUP), scale, zp, GROUP, float_weight=w)
    linear = nn.Linear(IN, OUT, bias=False)
    linear.weight.data = q.dequantize()
    return linear, q


def _train_a_little(layer: FQLoraLinear, b: torch.Tensor) -> None:
    with torch.no_grad():
        layer.lora_B.weight.copy_(b)
        for p in layer.quantizer_parameters():
            p.mul_(1.03)


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_fq_sparsepeft_keeps_the_pruned_zeros_while_its_ranges_train(sym):
    linear, q = _sparse_int4_linear(sym)
    pruned = q.float_weight == 0
    layer = FQSparsePeftLinear(linear, 8, 16.0, quantized=q, name="layer")
    assert torch.equal(layer.mask, ~pruned)  # the float (sparse) model's zeros, not the INT4 base's:
    assert (q.dequantize() == 0).sum() > pruned.sum()  # those include weights that rounded to zero
    b = torch.randn(OUT, 8) * 0.5  # updates of about a quantization step
    _train_a_little(layer, b)
    layer(torch.randn(3, IN)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.quantizer_parameters())
    assert layer.lora_A.weight.grad.abs().sum() > 0
    merged, grid = merge_fq_module(name="layer", layer=layer, rank=8)
    assert not torch.equal(grid.scale, q.scale)  # the scales trained ...
    assert (grid.codes != q.codes)[~pruned].float().mean() > 0.1  # ... and the update moved the kept weights' codes
    assert torch.equal(merged[pruned], torch.zeros(int(pruned.sum())))  # ... yet every pruned weight stays 0
    trained = layer.effective_weight().detach()
    assert (trained[pruned] == 0).all()  # the trained forward saw exact zeros there
    step = grid.scale.float().repeat_interleave(GROUP, dim=1)  # merged = trained up to the fp16 scales (~1 % step)
    assert ((merged - trained).abs() / step).max() < 0.02
    # fq_lora, the same update and ranges without the mask, fills them: what the mask is for
    plain_linear, q2 = _sparse_int4_linear(sym)
    unmasked = FQLoraLinear(plain_linear, 8, 16.0, quantized=q2, name="layer")
    with torch.no_grad():
        unmasked.lora_A.weight.copy_(layer.lora_A.weight)
    _train_a_little(unmasked, b)
    filled, _ = merge_fq_module(name="layer", layer=unmasked, rank=8)
    assert (filled[pruned] != 0).float().mean() > 0.25


def test_fq_sparsepeft_merge_refuses_a_lost_zero():
    linear, q = _sparse_int4_linear(sym=False)
    layer = FQSparsePeftLinear(linear, 8, 16.0, quantized=q, name="layer")
    _train_a_little(layer, torch.randn(OUT, 8) * 0.05)
    forward = layer.effective_weight
    # a quantiser whose grid had no zero code would move the pruned weights off zero
    layer.effective_weight = lambda rank=None: forward(rank) + 0.3 * ~layer.mask
    with pytest.raises(MergeError, match=r"not zero at \d+ pruned positions"):
        merge_fq_module(name="layer", layer=layer, rank=8)


def test_run_fq_sparsepeft_ships_a_sparse_int4_model_under_trained_scales(tmp_path):
    out = tmp_path / "run"
    kind = ["--set", "bootstrapNAS.training.adapter_kind=fq_sparsepeft", "--set", "evaluation.baseline=false",
            "--set", "plain.enabled=false"]  # fmt: skip
    fast = ["--no-progress", "--set", "evaluation.limit=8", "--set", "benchmark.enabled=false"]
    assert main(["run", str(CONFIGS / "tiny_sqft_qa_sparsepeft.json"), "--output", str(out), *fast, *kind]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["merge"]["adapter_kind"] == "fq_sparsepeft" and report["merge"]["precision"] == "int4"
    assert json.loads((out / "nls" / "sub_adapter_heuristic" / "elastic_lora_sub.json").read_text())["base_weight"] == "float"
    merged, base = load_quantized_weights(out / "merged_model"), load_quantized_weights(out / "int4_model")
    assert any(not torch.equal(merged[n].scale, base[n].scale) for n in base)  # the scales trained
    sparse, _ = load_model(ModelConfig(name_or_path=str(out / "sparse_model")))
    adapted = [n for n in base if not torch.equal(merged[n].scale, base[n].scale)]  # the ranges trained
    assert len(adapted) == 5 * 2  # q, k, v, up, down in both layers
    base_zeros = 0
    for name in adapted:  # every weight Wanda pruned is still zero in the shipped codes
        pruned = sparse.get_submodule(name).weight == 0
        assert pruned.float().mean() > 0.4 and (merged[name].dequantize()[pruned] == 0).all(), name
        base_zeros += int((base[name].dequantize() == 0).sum())
    assert report["merge"]["base_zeros"] == base_zeros and report["merge"]["zeros_lost"] == 0
    assert check_ir_codes(out / "openvino" / "openvino_model.xml", merged)  # raises on any code that differs
    assert report["export"]["parity"]["greedy_identical_genai"] == report["export"]["parity"]["prompts"]
