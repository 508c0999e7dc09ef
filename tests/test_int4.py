"""INT4 bases through NNCF, their on-disk format, and IRs that hold exactly their codes (tiny models)."""

import copy
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from nncf_elastic_lora.config import ModelConfig, TinyModelConfig
from nncf_elastic_lora.deploy.export import export_openvino
from nncf_elastic_lora.deploy.ir import ir_quantized_codes, unpack_4bit
from nncf_elastic_lora.formats import OV_MODEL, QUANTIZATION_JSON, QUANTIZED_WEIGHTS, is_quantized_base
from nncf_elastic_lora.int4 import (
    QuantizedBaseError,
    check_codes_match_weights,
    load_quantized_weights,
    quantize_base,
    save_quantized_base,
    save_quantized_weights,
    scales_fingerprint,
)
from nncf_elastic_lora.models import build_tiny_llama, load_tokenizer
from nncf_elastic_lora.quantization import QuantizedWeight, code_dtype, quantize
from nncf_elastic_lora.sparsity import sparsify_model

TINY64 = ModelConfig(
    name_or_path="tiny-random-llama", tiny=TinyModelConfig(hidden_size=64, intermediate_size=128)
)
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DECODER = ["{re}.*layers\\.\\d+\\..+"]
PROMPTS = ["The capital of France is", "def f(x):"]
NO_DYNAMIC_QUANT = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
PERTURBED = "model.layers.0.mlp.up_proj"


def _sparse_model(config: ModelConfig = TINY64) -> torch.nn.Module:
    model = build_tiny_llama(config).eval()
    sparsify_model(model, method="magnitude", ratio=0.5, pattern="unstructured", target_modules=LINEARS)
    return model


def _exact_product(qw: QuantizedWeight) -> torch.Tensor:
    """``(q - z) * s`` in float32: exact (a 4-bit integer times an fp16 scale fits float32's mantissa)."""
    out, width = qw.codes.shape
    q = qw.codes.float().reshape(out, -1, qw.group_size)
    if qw.zero_point is not None:
        q = q - qw.zero_point.float().unsqueeze(-1)
    return (q * qw.scale.float().unsqueeze(-1)).reshape(out, width)


def _nncf_reference(model: torch.nn.Module, sym: bool) -> torch.nn.Module:
    """``model`` compressed by plain ``nncf.compress_weights`` (decompressors left in place)."""
    import nncf
    from nncf.torch import wrap_model

    wrapped = wrap_model(
        model, example_input={"input_ids": torch.tensor([[1, 2, 3, 4]])}, trace_parameters=True
    )
    mode = nncf.CompressWeightsMode.INT4_SYM if sym else nncf.CompressWeightsMode.INT4_ASYM
    return nncf.compress_weights(
        wrapped, mode=mode, group_size=32, ratio=1.0, backup_mode=nncf.BackupMode.NONE
    )


@pytest.fixture(scope="module")
def sparse():
    return _sparse_model()


@pytest.fixture(scope="module")
def tokenizer64():
    return load_tokenizer(TINY64)


def _make_base(root: Path, sparse_model, tokenizer, sym: bool) -> tuple[Path, dict[str, QuantizedWeight]]:
    """A saved INT4 base whose codes in one row were changed after NNCF quantized it."""
    model = copy.deepcopy(sparse_model)
    qweights = quantize_base(model, target_modules=DECODER, group_size=32, sym=sym, progress=False)
    qw = qweights[PERTURBED]
    low = -8 if sym else 0
    qw.codes[0, :8] = torch.arange(low, low + 16, 2, dtype=torch.int16)  # not what NNCF would compute
    model.get_submodule(PERTURBED).weight.data = qw.dequantize()
    directory = root / ("base-sym" if sym else "base-asym")
    save_quantized_base(directory, model, qweights, tokenizer, meta={"method": "test"})
    return directory, qweights


@pytest.fixture(scope="module")
def bases(tmp_path_factory, sparse, tokenizer64):
    root = tmp_path_factory.mktemp("int4")
    return {sym: _make_base(root, sparse, tokenizer64, sym) for sym in (False, True)}


# ----------------------------------------------------------------------------------------------
# quantize_base
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_quantize_base_is_nncfs_model_and_keeps_zeros(sparse, sym):
    model, reference = copy.deepcopy(sparse), _nncf_reference(copy.deepcopy(sparse), sym)
    qweights = quantize_base(model, target_modules=DECODER, group_size=32, sym=sym, progress=False)
    assert sorted(qweights) == sorted(n for n, m in model.named_modules() if n.split(".")[-1] in LINEARS)
    # A plain model again: no NNCF hooks or wrapped forward, parameters trainable as before.
    assert "forward" not in model.__dict__ and not any("nncf" in n for n, _ in model.named_modules())
    assert all(p.requires_grad for p in model.parameters())
    x = torch.tensor([[1, 450, 7483, 310, 3444, 338]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(x).logits)  # bitwise NNCF's compressed model
    check_codes_match_weights(model, qweights)
    low, high = (-8, 7) if sym else (0, 15)
    for name, qw in qweights.items():
        was_zero = sparse.get_submodule(name).weight == 0
        weight = model.get_submodule(name).weight
        assert torch.equal(weight, qw.dequantize())
        assert bool((weight[was_zero] == 0).all()), name  # the sparse base stays exactly sparse
        zp = 0 if sym else qw.zero_point.repeat_interleave(32, dim=1).to(torch.int16)
        assert bool((qw.codes == zp)[was_zero].all())
        assert low <= int(qw.codes.min()) and int(qw.codes.max()) <= high
        assert qw.scale.dtype == torch.float16 and qw.scale.shape == (weight.shape[0], weight.shape[1] // 32)
        assert (qw.zero_point is None) == sym
        # Our frozen-scale quantiser gives the base's codes back from its own values.
        assert torch.equal(quantize(weight, qw.scale, qw.zero_point, 32), qw.codes)


def test_quantize_base_data_free_awq(sparse):
    model = copy.deepcopy(sparse)
    qweights = quantize_base(model, target_modules=DECODER, group_size=32, awq=True, progress=False)
    check_codes_match_weights(model, qweights)
    up = "model.layers.0.mlp.up_proj"  # AWQ folds the down projection's scales into it
    assert bool((model.get_submodule(up).weight[sparse.get_submodule(up).weight == 0] == 0).all())


def test_quantize_base_data_aware_awq_and_scale_estimation(sparse, tokenizer64):
    model = copy.deepcopy(sparse)
    texts = ["The capital of France is Paris.", "Question: 3 + 4 = 7", "def f(x): return 2 * x"]
    qweights = quantize_base(
        model,
        target_modules=DECODER,
        group_size=32,
        calibration=texts,
        tokenizer=tokenizer64,
        awq=True,
        scale_estimation=True,
        progress=False,
    )
    assert len(qweights) == 14
    check_codes_match_weights(model, qweights)
    for name in qweights:
        assert bool((model.get_submodule(name).weight[sparse.get_submodule(name).weight == 0] == 0).all())


def _one_layer(intermediate: int) -> torch.nn.Module:
    tiny = TinyModelConfig(hidden_size=64, intermediate_size=intermediate, num_hidden_layers=1)
    return build_tiny_llama(ModelConfig(name_or_path="tiny-random-llama", tiny=tiny)).eval()


@pytest.mark.parametrize(
    "width, fallback, expected", [(96, "adjust", 32), (80, "adjust", None), (96, "ignore", None)]
)
def test_quantize_base_group_size_fallback(caplog, width, fallback, expected):
    # down_proj reads `width` channels: 64 does not divide 96 but 32 does (adjust); 80 has no group >= 32.
    model = _one_layer(width)
    down = "model.layers.0.mlp.down_proj"
    before = model.get_submodule(down).weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        qweights = quantize_base(
            model, target_modules=DECODER, group_size=64, group_size_fallback=fallback, progress=False
        )
    assert qweights["model.layers.0.mlp.up_proj"].group_size == 64
    if expected is None:
        assert down not in qweights and "stay unquantized" in caplog.text and down in caplog.text
        assert torch.equal(model.get_submodule(down).weight, before)
    else:
        assert qweights[down].group_size == expected
        check_codes_match_weights(model, qweights)


def test_quantize_base_group_size_error_names_the_layer():
    model = _one_layer(96)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj has 96 input channels"):
        quantize_base(model, target_modules=DECODER, group_size=64, group_size_fallback="error")
    assert "forward" not in model.__dict__  # refused before NNCF touched the model


def test_quantize_base_bad_inputs(sparse):
    model = copy.deepcopy(sparse)
    with pytest.raises(ValueError, match="output head"):
        quantize_base(model, target_modules=["lm_head"], group_size=32)
    with pytest.raises(ValueError, match="GPTQ"):
        quantize_base(model, target_modules=DECODER, group_size=32, gptq=True)
    with pytest.raises(ValueError, match="scale_estimation is data-aware"):
        quantize_base(model, target_modules=DECODER, group_size=32, scale_estimation=True)
    with pytest.raises(ValueError, match="matches no linear"):
        quantize_base(model, target_modules=["no_such_proj"], group_size=32)
    peft_model = get_peft_model(copy.deepcopy(sparse), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="before attaching adapters"):
        quantize_base(peft_model, target_modules=DECODER, group_size=32)


# ----------------------------------------------------------------------------------------------
# On-disk format
# ----------------------------------------------------------------------------------------------


def test_save_load_round_trip(bases):
    directory, qweights = bases[False]
    assert is_quantized_base(directory) and not is_quantized_base(directory.parent)
    info = json.loads((directory / QUANTIZATION_JSON).read_text())
    assert (
        info["format"] == "nncf-elastic-lora-int4"
        and info["mode"] == "int4_asym"
        and info["method"] == "test"
    )
    assert info["bits"] == 4 and info["group_size"] == 32 and info["sym"] is False
    assert info["modules"] == sorted(qweights) and info["scales_sha256"] == scales_fingerprint(qweights)
    loaded = load_quantized_weights(directory)
    assert sorted(loaded) == sorted(qweights)
    for name, qw in qweights.items():
        got = loaded[name]
        assert torch.equal(got.codes, qw.codes) and torch.equal(got.scale, qw.scale)
        assert torch.equal(got.zero_point, qw.zero_point) and got.group_size == qw.group_size
    # The checkpoint is a plain HF model whose weights are the codes' values.
    model = AutoModelForCausalLM.from_pretrained(directory)
    check_codes_match_weights(model, loaded)
    from safetensors.torch import load_file

    stored = load_file(str(directory / QUANTIZED_WEIGHTS))
    assert (
        stored[f"{PERTURBED}.codes"].dtype == torch.uint8
        and stored[f"{PERTURBED}.zero_point"].dtype == torch.uint8
    )
    sym_stored = load_file(str(bases[True][0] / QUANTIZED_WEIGHTS))
    assert (
        sym_stored[f"{PERTURBED}.codes"].dtype == torch.int8 and f"{PERTURBED}.zero_point" not in sym_stored
    )
    # In memory too, codes take one byte per weight (an 8 B model's are 8 GB, not 16).
    assert loaded[PERTURBED].codes.dtype == torch.uint8
    assert bases[True][1][PERTURBED].codes.dtype == torch.int8


@pytest.mark.parametrize("bits", [1, 9, 16])
def test_code_dtype_refuses_widths_it_cannot_hold(bits):
    with pytest.raises(ValueError, match=f"codes of {bits} bits are not supported; use 2 to 8 bits"):
        code_dtype(bits, sym=True)


def _copy_format_files(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (QUANTIZATION_JSON, QUANTIZED_WEIGHTS, "config.json"):
        shutil.copy2(src / name, dst / name)
    return dst


def test_load_errors_name_the_file(bases, tmp_path):
    src, qweights = bases[False]
    missing = _copy_format_files(src, tmp_path / "missing")
    (missing / QUANTIZED_WEIGHTS).unlink()
    assert is_quantized_base(missing)
    with pytest.raises(QuantizedBaseError, match=f"{QUANTIZED_WEIGHTS} is missing"):
        load_quantized_weights(missing)

    corrupt = _copy_format_files(src, tmp_path / "corrupt")
    (corrupt / QUANTIZED_WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(QuantizedBaseError, match=f"{QUANTIZED_WEIGHTS} is corrupt"):
        load_quantized_weights(corrupt)

    bad_json = _copy_format_files(src, tmp_path / "bad-json")
    (bad_json / QUANTIZATION_JSON).write_text("{not json")
    with pytest.raises(QuantizedBaseError, match=f"{QUANTIZATION_JSON} is not valid JSON"):
        load_quantized_weights(bad_json)

    def edited(name: str, **changes) -> Path:
        d = _copy_format_files(src, tmp_path / name)
        info = json.loads((d / QUANTIZATION_JSON).read_text())
        info.update(changes)
        (d / QUANTIZATION_JSON).write_text(json.dumps(info))
        return d

    with pytest.raises(QuantizedBaseError, match="sym=True"):
        load_quantized_weights(edited("sym", sym=True))
    with pytest.raises(QuantizedBaseError, match="not a multiple of group size 48|scale has shape"):
        load_quantized_weights(edited("group", group_size=48))
    with pytest.raises(QuantizedBaseError, match="scales_sha256"):
        load_quantized_weights(edited("hash", scales_sha256="0" * 64))
    with pytest.raises(QuantizedBaseError, match="format is 'gptq'"):
        load_quantized_weights(edited("format", format="gptq"))
    with pytest.raises(QuantizedBaseError, match="missing model.layers.9"):
        load_quantized_weights(edited("modules", modules=[*qweights, "model.layers.9.mlp.up_proj"]))

    shapes = _copy_format_files(src, tmp_path / "shapes")
    config = json.loads((shapes / "config.json").read_text())
    config["intermediate_size"] = 256
    (shapes / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizedBaseError, match=r"config\.json"):
        load_quantized_weights(shapes)

    with pytest.raises(ValueError, match="may not redefine"):
        save_quantized_weights(tmp_path, qweights, meta={"group_size": 64})


def test_check_codes_match_weights_detects_a_modified_base(bases):
    directory, qweights = bases[False]
    model = AutoModelForCausalLM.from_pretrained(directory)
    check_codes_match_weights(model, qweights)
    name = "model.layers.1.self_attn.v_proj"
    with torch.no_grad():
        model.get_submodule(name).weight[3, 5] += 1e-3
    with pytest.raises(
        QuantizedBaseError, match=rf"{name}: the model's weight is not the value of its INT4 codes"
    ):
        check_codes_match_weights(model, qweights)


# ----------------------------------------------------------------------------------------------
# Export with exact codes
# ----------------------------------------------------------------------------------------------


def _check_ir_holds(xml: Path, qweights: dict[str, QuantizedWeight]) -> None:
    ir = ir_quantized_codes(xml)
    assert sorted(ir) == sorted(qweights)
    for name, qw in qweights.items():
        got = ir[name]
        assert got.element_type == ("i4" if qw.sym else "u4")
        assert np.array_equal(got.codes, qw.codes.numpy()), name
        assert np.array_equal(got.scale, qw.scale.numpy()), name
        if qw.sym:
            assert got.zero_point is None
        else:
            assert np.array_equal(got.zero_point, qw.zero_point.numpy()), name


def _logits(ir_dir: Path, x: torch.Tensor, properties: dict) -> torch.Tensor:
    from nncf_elastic_lora.models import load_openvino_model

    model, _ = load_openvino_model(ir_dir, properties=properties)
    return torch.as_tensor(model(input_ids=x, attention_mask=torch.ones_like(x)).logits)


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_export_ships_exactly_the_bases_codes(bases, tmp_path, sym):
    directory, qweights = bases[sym]
    # backup_precision "none": embeddings and head stay float32, so the IR is exact against torch.
    report = export_openvino(
        directory, tmp_path / "ir", compare_prompts=PROMPTS, compare_tokens=8, backup_precision="none"
    )
    xml = tmp_path / "ir" / OV_MODEL
    assert report["weight_format"] == "int4" and report["compression"]["backup_precision"] == "none"
    assert report["codes"] == f"from {directory / QUANTIZED_WEIGHTS}"
    assert report["compression"]["ir_codes_verified"] and report["compression"]["modules"] == 14
    assert report["ir_sparsity"] == pytest.approx(0.5, abs=1e-3)  # zeros stored as the zero point
    assert report["parity"]["greedy_identical_optimum"] == report["parity"]["greedy_identical_genai"] == 2
    assert isinstance(report["genai_check"]["text"], str)
    # Our codes, including the row changed after NNCF quantized: the IR did not re-quantize.
    _check_ir_holds(xml, qweights)
    assert (
        ir_quantized_codes(xml)[PERTURBED].codes[0, :8].tolist() == qweights[PERTURBED].codes[0, :8].tolist()
    )
    # Everything else stays fp32: embeddings (tied head) and norms.
    model = ov.Core().read_model(str(xml))
    consts = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert consts["self.model.embed_tokens.weight"].get_element_type().get_type_name() == "f32"
    assert "KV_CACHE_PRECISION" not in model.get_rt_info("runtime_options").value  # the runtime's default KV cache
    # The 4-bit unpacking agrees with OpenVINO's own reading of a u4 constant (get_vector has no i4).
    for op in consts.values():
        if op.get_element_type().get_type_name() == "u4":
            assert np.array_equal(unpack_4bit(op).ravel(), np.asarray(op.get_vector()).ravel())

    # Rounding: without the CPU plugin's dynamic activation quantization, the IR computes
    # (q - z) * s exactly (in f32); torch's dequantize() rounds that product to fp16, as NNCF does.
    torch_model = AutoModelForCausalLM.from_pretrained(directory).eval()
    exact = copy.deepcopy(torch_model)
    for name, qw in qweights.items():
        exact.get_submodule(name).weight.data = _exact_product(qw)
    x = torch.tensor([[1, 450, 7483, 310, 3444, 338, 22, 99, 1000, 5]])
    got = _logits(tmp_path / "ir", x, NO_DYNAMIC_QUANT)
    with torch.no_grad():
        assert (got - exact(x).logits).abs().max() < 1e-5
        assert (got - torch_model(x).logits).abs().max() < 2e-3


def test_export_keeps_an_unmerged_adapter_in_float(bases, tmp_path):
    directory, qweights = bases[False]
    base = AutoModelForCausalLM.from_pretrained(directory).eval()
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    assert (
        float(
            peft_model.base_model.model.model.layers[0]
            .self_attn.q_proj.lora_B.default.weight.detach()
            .abs()
            .sum()
        )
        > 0
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    report = export_openvino(
        directory, tmp_path / "ir", adapter=tmp_path / "adapter", compare_prompts=PROMPTS, compare_tokens=8,
        backup_precision="none",
    )
    assert report["adapter"]["merged"] is False
    assert report["parity"]["greedy_identical_optimum"] == report["parity"]["greedy_identical_genai"] == 2
    xml = tmp_path / "ir" / OV_MODEL
    _check_ir_holds(xml, qweights)  # the base's codes (q_proj/v_proj under peft's base_layer too)
    model = ov.Core().read_model(str(xml))
    lora = [
        op for op in model.get_ops() if op.get_type_name() == "MatMul" and "lora_" in op.get_friendly_name()
    ]
    assert len(lora) == 8  # A and B of q_proj and v_proj in 2 layers
    for op in lora:
        weight = op.input_value(1).get_node()
        while weight.get_type_name() in ("Convert", "Transpose"):
            weight = weight.input_value(0).get_node()
        assert weight.get_type_name() == "Constant" and weight.get_element_type().get_type_name() == "f32"
    # The IR computes base + adapter: it matches the peft model, and not the bare base.
    exact = copy.deepcopy(peft_model).eval()
    for name, qw in qweights.items():
        layer = exact.base_model.model.get_submodule(name)
        getattr(layer, "base_layer", layer).weight.data = _exact_product(qw)
    x = torch.tensor([[1, 450, 7483, 310, 3444, 338, 22, 99]])
    got = _logits(tmp_path / "ir", x, NO_DYNAMIC_QUANT)
    with torch.no_grad():
        assert (got - exact(x).logits).abs().max() < 1e-5
        bare = AutoModelForCausalLM.from_pretrained(directory).eval()  # get_peft_model changed `base`
        assert (got - bare(x).logits).abs().max() > 1e-3
    # The default INT8 backup: the tied embedding / head goes to u8, the codes and the adapter are untouched.
    export_openvino(directory, tmp_path / "ir8", adapter=tmp_path / "adapter", genai_device=None)
    _check_ir_holds(tmp_path / "ir8" / OV_MODEL, qweights)
    ops = ov.Core().read_model(str(tmp_path / "ir8" / OV_MODEL)).get_ops()
    consts = {op.get_friendly_name(): op for op in ops if op.get_type_name() == "Constant"}
    assert consts["self.model.embed_tokens.weight"].get_element_type().get_type_name() == "u8"
    for op in (op for op in ops if op.get_type_name() == "MatMul" and "lora_" in op.get_friendly_name()):
        weight = op.input_value(1).get_node()
        while weight.get_type_name() in ("Convert", "Transpose"):
            weight = weight.input_value(0).get_node()
        assert weight.get_type_name() == "Constant" and weight.get_element_type().get_type_name() == "f32"


def test_export_refuses_to_change_an_int4_base(bases, tmp_path):
    directory, _ = bases[False]
    with pytest.raises(ValueError, match="QA-SparsePEFT merge"):
        export_openvino(directory, tmp_path / "a", adapter=tmp_path / "adapter", merge_adapter=True)
    with pytest.raises(ValueError, match="weight_format 'int8' does not apply"):
        export_openvino(directory, tmp_path / "b", weight_format="int8")
    with pytest.raises(ValueError, match="awq would re-quantize"):
        export_openvino(directory, tmp_path / "c", weight_format="int4", awq=True)
    # A base whose weights were changed after quantization (fine-tuned, merged into) is caught.
    modified = tmp_path / "modified"
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 0.01
    model.save_pretrained(modified)
    for name in (QUANTIZATION_JSON, QUANTIZED_WEIGHTS, "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(directory / name, modified / name)
    with pytest.raises(QuantizedBaseError, match="model.layers.0.mlp.down_proj"):
        export_openvino(modified, tmp_path / "d", genai_device=None)
    # An inconsistent quantization.json stops the export before anything is written.
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    info = json.loads((broken / QUANTIZATION_JSON).read_text())
    info["sym"] = True
    (broken / QUANTIZATION_JSON).write_text(json.dumps(info))
    with pytest.raises(QuantizedBaseError, match=QUANTIZATION_JSON):
        export_openvino(broken, tmp_path / "e", genai_device=None)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
