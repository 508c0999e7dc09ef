"""fq_lora: NNCF's FQ+LoRA (trainable INT4 ranges) as an adapter kind; its merge is NNCF's strip, codes exact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.config import ModelConfig, TinyModelConfig
from nncf_elastic_lora.deploy.ir import check_ir_codes
from nncf_elastic_lora.elastic import ElasticLoraSuperNet, FQLoraLinear
from nncf_elastic_lora.int4 import load_quantized_weights, quantize_base
from nncf_elastic_lora.merge import merge_adapter_from_dirs, merge_qa
from nncf_elastic_lora.models import build_tiny_llama, load_model, load_tokenizer
from nncf_elastic_lora.quantization import QuantizedWeight, dequantize, quantize

CONFIGS = Path(__file__).parent.parent / "configs"
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
OUT, IN, GROUP = 48, 64, 32


def _int4_linear(sym: bool) -> tuple[nn.Linear, QuantizedWeight]:
    """A linear whose weight is the dequantisation of min/max INT4 codes (group 32)."""
    torch.manual_seed(0)
    linear = nn.Linear(IN, OUT, bias=False)
    w = linear.weight.detach().reshape(OUT, IN // GROUP, GROUP)
    if sym:
        scale, zp = (w.abs().amax(-1) / 7).half(), None
    else:
        low = w.amin(-1)
        scale = ((w.amax(-1) - low) / 15).half()
        zp = torch.round(-low / scale.float()).clamp(0, 15).to(torch.uint8)
    q = QuantizedWeight(quantize(linear.weight.detach(), scale, zp, GROUP), scale, zp, GROUP)
    linear.weight.data = q.dequantize()
    return linear, q


def _nncf_quantizer(layer: FQLoraLinear, sym: bool):
    """NNCF's own FQ+LoRA quantiser holding ``layer``'s ranges and (scaled) adapter."""
    from nncf.torch.quantization.layers import (
        AsymmetricLoraQuantizer,
        PTLoraSpec,
        PTQuantizerSpec,
        QuantizationMode,
        SymmetricLoraQuantizer,
    )

    qspec = PTQuantizerSpec(
        num_bits=4, mode=QuantizationMode.SYMMETRIC if sym else QuantizationMode.ASYMMETRIC,
        signedness_to_force=sym, narrow_range=False, half_range=False, scale_shape=(OUT, IN // GROUP, 1),
        logarithm_scale=False, is_quantized_on_export=True,
    )  # fmt: skip
    lspec = PTLoraSpec(lora_rank=layer.max_rank, orig_weight_shape=(OUT, IN), weight_shape=(OUT, IN // GROUP, GROUP))
    quantizer = (SymmetricLoraQuantizer if sym else AsymmetricLoraQuantizer)(qspec, lspec)
    quantizer.lora_A = nn.Parameter(layer.lora_A.weight.detach() * layer.scaling)
    quantizer.lora_B = nn.Parameter(layer.lora_B.weight.detach().clone())
    for name, tensor in layer.quantizer_state().items():
        setattr(quantizer, {"input_scale": "scale"}.get(name, name), nn.Parameter(tensor.detach().clone()))
    return quantizer


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_fq_lora_layer_starts_at_the_base_and_merges_as_nncf_strips(sym):
    from nncf.torch.quantization.strip import asym_fq_to_decompressor, sym_fq_to_decompressor

    linear, q = _int4_linear(sym)
    layer = FQLoraLinear(linear, 8, 16.0, quantized=q, name="layer")
    # B = 0: the ranges start at the base's grid, so the codes and scales are the base's own, and the
    # forward is the base's up to float rounding (NNCF's float32 FQ against the float16 dequantisation).
    assert torch.equal(layer.codes(), q.codes) and torch.equal(layer.grid.scale, q.scale)
    step = q.scale.float().repeat_interleave(GROUP, dim=1)
    assert ((layer.effective_weight().detach() - linear.weight).abs() / step).max() < 0.01
    # The ranges train: the forward has a gradient for them as well as for the adapter.
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.05)
    layer(torch.randn(3, IN)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.quantizer_parameters())
    with torch.no_grad():
        for p in layer.quantizer_parameters():
            p.mul_(1.03)
    codes, grid = layer.codes(), layer.grid
    assert not torch.equal(codes, q.codes) and not torch.equal(grid.scale, q.scale)
    # NNCF's strip of its own quantiser with the same ranges and adapter gives the same codes.
    strip = sym_fq_to_decompressor if sym else asym_fq_to_decompressor
    _, nncf_codes = strip(_nncf_quantizer(layer, sym), linear.weight.detach())
    assert torch.equal(nncf_codes.reshape(OUT, IN).to(torch.int16), codes.to(torch.int16))
    # The merged weight is the trained forward's up to the scales' float16 rounding (< 1 % of a step).
    merged = dequantize(codes, grid.scale, grid.zero_point, GROUP).float()
    assert ((merged - layer.effective_weight().detach()).abs() / step).max() < 0.01


def _fq_supernet(tmp_path: Path, kind: str = "fq_lora") -> tuple[ElasticLoraSuperNet, Path]:
    model = build_tiny_llama(ModelConfig(name_or_path="tiny-random-llama", tiny=TinyModelConfig()))
    quantized = quantize_base(model, target_modules=TARGETS, group_size=32, progress=False)
    base = tmp_path / "base"
    model.save_pretrained(base)
    supernet = ElasticLoraSuperNet.attach(
        model, target_modules=TARGETS, max_rank=8, alpha=16, default_widths=[8, 4], adapter_kind=kind,
        quantized=quantized,
    )  # fmt: skip
    return supernet, base


@pytest.mark.parametrize("kind", ["fq_lora", "fq_sparsepeft"])
def test_fq_lora_sub_adapter_on_disk_merges_as_the_live_one(tmp_path, kind):
    supernet, base = _fq_supernet(tmp_path, kind)
    with torch.no_grad():
        for layer in supernet.adapters.values():
            layer.lora_B.weight.normal_(0, 0.02)
            for p in layer.quantizer_parameters():
                p.mul_(1.02)
    config = supernet.get_heuristic_config()
    sub = supernet.save_sub_adapter(tmp_path / "sub", config)
    names = json.loads(json.dumps(list(supernet.adapter_state_dict())))
    assert any(n.endswith("fq_quantizer.input_low") for n in names)  # the trained ranges travel with it
    _, live = merge_qa(supernet=supernet, config=config)
    from transformers import AutoModelForCausalLM

    result = merge_adapter_from_dirs(
        model=AutoModelForCausalLM.from_pretrained(base), adapter_dir=sub, quantized=supernet.quantized
    )
    assert result.kind.value == kind and set(result.quantized) == set(live)
    for name, q in live.items():
        assert torch.equal(result.quantized[name].codes, q.codes), name
        assert torch.equal(result.quantized[name].scale, q.scale), name
    adapted = next(iter(supernet.adapters))
    assert not torch.equal(live[adapted].scale, supernet.quantized[adapted].scale)


@pytest.mark.parametrize("kind", ["fq_lora", "fq_sparsepeft"])
def test_a_merge_on_the_float_source_leaves_the_callers_int4_model_alone_and_counts_its_zeros(tmp_path, kind):
    from transformers import AutoModelForCausalLM

    model = build_tiny_llama(ModelConfig(name_or_path="tiny-random-llama", tiny=TinyModelConfig()))
    source = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized = quantize_base(model, target_modules=TARGETS, group_size=32, progress=False)
    model.save_pretrained(tmp_path / "base")
    with_source = {n: dataclasses.replace(q, float_weight=source[n]) for n, q in quantized.items()}
    supernet = ElasticLoraSuperNet.attach(
        model, target_modules=TARGETS, max_rank=8, alpha=16, default_widths=[8, 4], adapter_kind=kind,
        quantized={n: dataclasses.replace(q) for n, q in with_source.items()},
    )  # fmt: skip
    with torch.no_grad():
        for layer in supernet.adapters.values():
            layer.lora_B.weight.normal_(0, 0.02)
    sub = supernet.save_sub_adapter(tmp_path / "sub", supernet.get_heuristic_config())
    int4 = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    before = {n: int4.get_submodule(n).weight.clone() for n in supernet.adapters}
    result = merge_adapter_from_dirs(model=int4, adapter_dir=sub, quantized=with_source)
    assert all(torch.equal(int4.get_submodule(n).weight, w) for n, w in before.items())  # not the float source
    zeros = sum(int((w == 0).sum()) for w in before.values())  # weights that rounded to zero in INT4
    assert zeros > 0 and result.report["base_zeros"] == zeros
    assert result.report["zeros_lost"] == sum(
        int(((w == 0) & (result.model.get_submodule(n).weight != 0)).sum()) for n, w in before.items()
    )


def test_fq_lora_ranges_train_in_their_own_optimizer_group(tmp_path):
    from nncf_elastic_lora.config import NLSTrainingConfig
    from nncf_elastic_lora.data import Example
    from nncf_elastic_lora.models import load_tokenizer
    from nncf_elastic_lora.training import train_super_adapter

    supernet, _ = _fq_supernet(tmp_path)
    groups: list[dict] = []

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            groups.extend({"lr": g["lr"], "n": len(g["params"]), "q": g.get("quantizer_ranges", False)}
                          for g in optimizer.param_groups)  # fmt: skip

    before = {n: t.clone() for n, t in supernet.adapter_state_dict().items() if "fq_quantizer" in n}
    cfg = NLSTrainingConfig(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, quantizer_lr_ratio=0.2,
                            save_steps=0, warmup_ratio=0.0)  # fmt: skip
    examples = [Example(id=str(i), prompt=f"{i} + 1 =", target=f" {i + 1}") for i in range(4)]
    tokenizer = load_tokenizer(ModelConfig(name_or_path="tiny-random-llama", tiny=TinyModelConfig()))
    train_super_adapter(supernet, tokenizer, examples, cfg, tmp_path / "train", max_length=16, progress=False,
                        callbacks=[Spy()])  # fmt: skip
    ranges = [g for g in groups if g["q"]]
    assert len(ranges) == 1 and ranges[0]["n"] == 2 * len(supernet.adapters)  # input_low and input_range
    assert ranges[0]["lr"] == pytest.approx(0.2 * max(g["lr"] for g in groups if not g["q"]))
    after = supernet.adapter_state_dict()
    assert any(not torch.equal(after[n], t) for n, t in before.items())


def test_run_fq_lora_ships_the_trained_int4_codes(tmp_path):
    out = tmp_path / "run"
    fq = ["--set", "bootstrapNAS.training.adapter_kind=fq_lora", "--set", "sparsity.method=none",
          "--set", "evaluation.baseline=false", "--set", 'plain.weight_formats=["int4", "int8"]']  # fmt: skip
    fast = ["--no-progress", "--set", "evaluation.limit=8", "--set", "benchmark.enabled=false"]
    assert main(["run", str(CONFIGS / "tiny_sqft_qa_sparsepeft.json"), "--output", str(out), *fast, *fq]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages"] == [
        "quantize_base", "train", "eval_subnets", "merge", "eval_merged", "export", "eval_ir", "plain_reference"
    ]  # fmt: skip
    assert report["merge"]["adapter_kind"] == "fq_lora" and report["merge"]["precision"] == "int4"
    # trained on the float weights the INT4 base came from (qa_base_weight's default is QA's alone)
    assert json.loads((out / "nls" / "sub_adapter_heuristic" / "elastic_lora_sub.json").read_text())["base_weight"] == "float"
    merged, base = load_quantized_weights(out / "merged_model"), load_quantized_weights(out / "int4_model")
    assert any(not torch.equal(merged[n].scale, base[n].scale) for n in base)  # the scales trained
    assert check_ir_codes(out / "openvino" / "openvino_model.xml", merged)  # raises on any code that differs
    assert report["export"]["parity"]["greedy_identical_genai"] == report["export"]["parity"]["prompts"]
    # The verdict against the plain export of its own format, and against the other one (INT8) as well.
    plain = report["plain"]
    assert plain["verdict"]["plain"] == "plain LoRA, merged, int4 IR"
    other = plain["other_verdicts"]["int8"]
    assert other["plain"] == "plain LoRA, merged, int8 IR" and other["line"] in (out / "report.md").read_text()


def test_fq_lora_eval_forward_reuses_the_weight_until_something_changes():
    linear, q = _int4_linear(sym=False)
    layer = FQLoraLinear(linear, 8, 16.0, quantized=q).eval()
    x = torch.randn(2, IN)
    with torch.no_grad():
        first = layer(x)
        layer.lora_B.weight.normal_(0, 0.05)  # an in-place change must not be served from the cache
        assert not torch.equal(layer(x), first)
        layer.set_active_rank(4)
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.effective_weight()))
    layer.train()
    assert layer._cached_weight is None


def test_fq_lora_folder_with_foreign_quantizer_tensors_is_one_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from nncf_elastic_lora.merge import MergeError

    supernet, base = _fq_supernet(tmp_path)
    sub = supernet.save_sub_adapter(tmp_path / "sub", supernet.get_heuristic_config())
    weights = sub / "adapter_model.safetensors"
    state = {k.replace("input_range", "input_scale"): v for k, v in load_file(weights).items()}  # a symmetric one's
    save_file(state, weights)
    with pytest.raises(MergeError, match="has quantizer tensors .* expected"):
        merge_adapter_from_dirs(model=AutoModelForCausalLM.from_pretrained(base), adapter_dir=sub,
                                quantized=supernet.quantized)  # fmt: skip


def test_fq_lora_quantises_the_float_weight_so_updates_under_half_a_step_move_codes():
    """As NNCF's FQ_LORA: FQ(W + s·BA) on the float W; on the dequantized W such an update rounds away."""
    torch.manual_seed(0)
    float_weight = nn.Linear(IN, OUT, bias=False).weight.detach().clone()  # what _int4_linear quantises
    layers = {}
    for source in (True, False):
        linear, q = _int4_linear(sym=False)
        q = dataclasses.replace(q, float_weight=float_weight) if source else q
        layers[source] = FQLoraLinear(linear, 8, 16.0, quantized=q, name="layer")
    assert torch.equal(layers[True].base_layer.weight, float_weight)
    assert (layers[True].codes() != q.codes).float().mean() < 0.01  # B = 0: the base's own rounding
    step = q.scale.float().repeat_interleave(GROUP, dim=1)
    for layer in layers.values():
        with torch.no_grad():
            layer.lora_B.weight.copy_(torch.randn_like(layer.lora_B.weight))
            layer.lora_B.weight.mul_(0.4 * (step.min() / layer.delta_weight().abs().max()))
        assert (layer.delta_weight().abs() < 0.5 * step).all()  # every update under half a step
    assert (layers[True].codes() != q.codes).sum() > 0.02 * q.codes.numel()
    assert torch.equal(layers[False].codes(), q.codes)


def test_fq_lora_needs_the_float_model_its_int4_base_came_from(tmp_path):
    from safetensors.torch import load_file, save_file

    from nncf_elastic_lora.int4 import QuantizedBaseError
    from nncf_elastic_lora.pipeline import base_quantized_weights

    source, base = tmp_path / "float", tmp_path / "int4"
    tiny = ModelConfig(name_or_path="tiny-random-llama", tiny=TinyModelConfig())
    build_tiny_llama(tiny).save_pretrained(source)
    load_tokenizer(tiny).save_pretrained(source)
    assert main(["quantize", "--model", str(source), "--output", str(base), "--no-progress",
                 "--set", "quantization.group_size=32"]) == 0  # fmt: skip
    qweights = base_quantized_weights(ModelConfig(name_or_path=str(base)), float_source=True)
    state = load_file(source / "model.safetensors")
    assert all(torch.equal(q.float_weight, state[f"{n}.weight"].float()) for n, q in qweights.items())
    int4_model, _ = load_model(ModelConfig(name_or_path=str(base)))
    supernet = ElasticLoraSuperNet.attach(
        int4_model, target_modules=TARGETS, max_rank=8, alpha=16, default_widths=[8, 4], adapter_kind="fq_lora",
        quantized=qweights,
    )  # fmt: skip
    for name, layer in supernet.adapters.items():  # the float weights live in the adapted bases, once
        assert torch.equal(layer.base_layer.weight, state[f"{name}.weight"].float())
    assert all(q.float_weight is None for q in qweights.values())
    with torch.no_grad():  # the float model changed since it was quantized
        state["model.layers.0.mlp.up_proj.weight"].add_(1.0)
    save_file(state, source / "model.safetensors")
    with pytest.raises(QuantizedBaseError, match="missing or has changed since"):
        base_quantized_weights(ModelConfig(name_or_path=str(base)), float_source=True)
    info = json.loads((base / "quantization.json").read_text())
    info.pop("source_model")
    (base / "quantization.json").write_text(json.dumps(info))
    with pytest.raises(QuantizedBaseError, match="older version"):
        base_quantized_weights(ModelConfig(name_or_path=str(base)), float_source=True)
    assert base_quantized_weights(ModelConfig(name_or_path=str(base))) is not None  # QA needs no float source
