"""OpenVINO export, IR-vs-torch parity, evaluation on the IR (tiny models)."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import openvino as ov
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.config import PipelineConfig
from nncf_elastic_lora.deploy.export import export_openvino, quantization_config
from nncf_elastic_lora.deploy.parity import compare_ir_with_torch
from nncf_elastic_lora.evaluation import CausalLM, loglikelihoods
from nncf_elastic_lora.formats import OV_DETOKENIZER, OV_MODEL, OV_TOKENIZER
from nncf_elastic_lora.models import build_tiny_llama, load_openvino_model, load_tokenizer
from nncf_elastic_lora.sparsity import linear_sparsity, sparsify_model

from .conftest import TINY

PROMPTS = ["The capital of France is", "Question: 3 + 4 =", "def f(x):"]
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tokenizer):
    """A 50%-sparse tiny checkpoint and a random (non-zero) LoRA adapter for it."""
    root = tmp_path_factory.mktemp("sources")
    model = build_tiny_llama(TINY).eval()
    sparsify_model(model, method="magnitude", ratio=0.5, pattern="unstructured", target_modules=LINEARS)
    model.save_pretrained(root / "sparse")
    tokenizer.save_pretrained(root / "sparse")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(root / "adapter")
    return root / "sparse", root / "adapter"


def _torch_with_adapter(sparse: Path, adapter: Path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(sparse).eval()
    return PeftModel.from_pretrained(base, adapter).eval()


def test_fp32_round_trip_matches_torch_and_keeps_sparsity(sources, tmp_path, tokenizer):
    sparse, _ = sources
    report = export_openvino(sparse, tmp_path / "ir", compare_prompts=PROMPTS, compare_tokens=8)
    files = {p.name for p in (tmp_path / "ir").iterdir()}
    assert {
        OV_MODEL,
        OV_TOKENIZER,
        OV_DETOKENIZER,
        "config.json",
        "export_report.json",
        "parity.json",
    } <= files
    parity = report["parity"]
    assert parity["logits_max_abs_diff"] < 1e-4
    assert parity["greedy_identical_optimum"] == parity["greedy_identical_genai"] == len(PROMPTS)
    assert report["source_sparsity"] == pytest.approx(0.5)
    assert report["ir_sparsity"] == pytest.approx(0.5)  # the IR's weights are still half zeros
    assert isinstance(report["genai_check"]["text"], str)
    # The OpenVINO tokenizer IR encodes like the HF tokenizer.
    encoded = ov.compile_model(tmp_path / "ir" / OV_TOKENIZER)(["Question: 12 + 345 = ünï"])["input_ids"]
    assert encoded.tolist()[0] == tokenizer("Question: 12 + 345 = ünï")["input_ids"]


def test_unmerged_adapter_is_a_branch_in_the_ir(sources, tmp_path):
    sparse, adapter = sources
    report = export_openvino(
        sparse, tmp_path / "ir", adapter=adapter, compare_prompts=PROMPTS, compare_tokens=8
    )
    assert report["parity"]["logits_max_abs_diff"] < 1e-4  # against the peft model, adapter active
    assert report["parity"]["greedy_identical_genai"] == len(PROMPTS)
    assert report["ir_sparsity"] == pytest.approx(0.5)  # base weights untouched
    # The adapter really is in the IR: its logits differ from the bare base's.
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(sparse).eval()
    ov_model, tok = load_openvino_model(tmp_path / "ir", properties={"INFERENCE_PRECISION_HINT": "f32"})
    x = tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        gap = (base(**x).logits - torch.as_tensor(ov_model(**x).logits)).abs().max()
    assert gap > 1e-3


def test_merged_adapter_warns_that_sparsity_is_lost(sources, tmp_path, caplog):
    sparse, adapter = sources
    with caplog.at_level(logging.WARNING):
        report = export_openvino(
            sparse, tmp_path / "ir", adapter=adapter, merge_adapter=True, save_merged=tmp_path / "merged"
        )
    assert "filled in the sparse base" in caplog.text
    assert report["adapter"]["merged_sparsity"] < 0.5 - 0.01
    assert report["ir_sparsity"] == pytest.approx(report["adapter"]["merged_sparsity"], abs=1e-6)
    # The merged checkpoint equals the unmerged peft model.
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    reference = _torch_with_adapter(sparse, adapter)
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, reference(x).logits, atol=1e-5)
    assert linear_sparsity(merged) == pytest.approx(report["adapter"]["merged_sparsity"])


def test_optimum_cli_exports_a_merged_checkpoint_that_genai_loads(sources, tmp_path):
    sparse, adapter = sources
    export_openvino(
        sparse, tmp_path / "ir", adapter=adapter, merge_adapter=True, save_merged=tmp_path / "merged"
    )
    cli = Path(sys.executable).parent / "optimum-cli"
    out = tmp_path / "cli-ir"
    subprocess.run(
        [
            str(cli),
            "export",
            "openvino",
            "--model",
            str(tmp_path / "merged"),
            "--task",
            "text-generation-with-past",
            "--weight-format",
            "fp32",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    assert (out / OV_MODEL).is_file() and (out / OV_DETOKENIZER).is_file()
    import openvino_genai

    text = openvino_genai.LLMPipeline(str(out), "CPU").generate("1 + 1 =", max_new_tokens=3)
    assert isinstance(text, str)


def test_int4_export_of_a_tiny_model_falls_back_on_group_size(sources, tmp_path):
    sparse, _ = sources
    calibration = [f"Question: what is {i} + {2 * i}? Answer: {3 * i}" for i in range(8)]
    # hidden size 32 < group size 64: "adjust" lowers the group size (or uses INT8), "error" refuses.
    report = export_openvino(
        sparse,
        tmp_path / "int4",
        weight_format="int4",
        group_size=64,
        awq=True,
        scale_estimation=True,
        calibration=calibration,
        group_size_fallback="adjust",
        compare_prompts=PROMPTS[:1],
        compare_tokens=4,
    )
    assert report["compression"]["bits"] == 4 and report["compression"]["calibration_samples"] == 8
    assert report["genai_check"]["text"] is not None
    types = {
        op.get_element_type().get_type_name()
        for op in ov.Core().read_model(tmp_path / "int4" / OV_MODEL).get_ops()
        if op.get_type_name() == "Constant"
    }
    assert types & {"u4", "i4"}  # the decoder's layers really are in 4 bits
    from nncf_elastic_lora.deploy.export import ExportError

    with pytest.raises(ExportError, match="group_size_fallback"):
        export_openvino(
            sparse, tmp_path / "int4-error", weight_format="int4", group_size=64, group_size_fallback="error"
        )
    assert not (tmp_path / "int4-error").exists()  # nothing half-written


def test_int8_export_keeps_zeros_and_adapter_precision(sources, tmp_path):
    sparse, adapter = sources
    report = export_openvino(
        sparse, tmp_path / "ir", adapter=adapter, weight_format="int8", compare_prompts=PROMPTS[:2]
    )
    assert report["ir_sparsity"] == pytest.approx(0.5)  # zeros are stored as the zero point
    assert (
        report["size_bytes"]["model_bin"]
        < 0.5 * export_openvino(sparse, tmp_path / "fp32")["size_bytes"]["model_bin"]
    )
    from nncf_elastic_lora.deploy.ir import weight_constant

    ops = ov.Core().read_model(tmp_path / "ir" / OV_MODEL).get_ops()
    lora = [op for op in ops if op.get_type_name() == "MatMul" and "lora_" in op.get_friendly_name()]
    base = [op for op in ops if op.get_type_name() == "MatMul" and "q_proj" in op.get_friendly_name()]
    assert len(lora) == 2 * 2 * 2  # A and B of q_proj and v_proj in 2 layers
    kind = {
        op.get_friendly_name(): weight_constant(op.input_value(1).get_node())
        .get_element_type()
        .get_type_name()
        for op in lora + base
    }
    assert {kind[op.get_friendly_name()] for op in lora} == {"f32"}  # the adapter branch stays full precision
    assert {kind[op.get_friendly_name()] for op in base if "lora_" not in op.get_friendly_name()} == {"u8"}
    assert report["parity"]["top1_agreement"] > 0.9


def test_existing_output_is_not_overwritten_silently(sources, tmp_path):
    from nncf_elastic_lora.outputs import OutputExistsError

    sparse, _ = sources
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        export_openvino(sparse, tmp_path / "ir")
    assert (tmp_path / "ir" / "notes.txt").read_text() == "mine"


def test_awq_with_an_unmerged_adapter_is_refused(sources, tmp_path):
    sparse, adapter = sources
    with pytest.raises(ValueError, match="awq rescales"):
        export_openvino(
            sparse, tmp_path / "ir", adapter=adapter, weight_format="int4", awq=True, calibration=["x"]
        )
    assert not (tmp_path / "ir").exists()


def test_export_refuses_to_write_over_its_input(sources):
    sparse, _ = sources
    from nncf_elastic_lora.outputs import OutputExistsError

    with pytest.raises(OutputExistsError, match="is the input"):
        export_openvino(sparse, sparse, overwrite=True)
    with pytest.raises(OutputExistsError, match="is inside the input"):
        export_openvino(sparse, sparse / "ir", overwrite=True)
    assert (sparse / "config.json").is_file()


def test_bad_export_options_fail_before_loading():
    with pytest.raises(ValueError, match="awq"):
        quantization_config("int8", awq=True)
    with pytest.raises(ValueError, match="calibration"):
        quantization_config("int4", scale_estimation=True)
    with pytest.raises(ValueError, match="ratio"):
        quantization_config("int4", ratio=1.5)
    with pytest.raises(ValueError, match="int4"):
        quantization_config("int8", calibration=["some text"])
    with pytest.raises(ValueError, match="no effect"):
        quantization_config("int4", calibration=["some text"])  # data without a method that uses it


def test_evaluation_on_the_ir_equals_torch(sources, tmp_path):
    sparse, _ = sources
    export_openvino(sparse, tmp_path / "ir")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requests = [("Question: 2 + 2 =", " 4"), ("Question: 2 + 2 =", " 5"), ("The sky is", " blue")]
    torch_lm = CausalLM(
        AutoModelForCausalLM.from_pretrained(sparse).eval(), AutoTokenizer.from_pretrained(sparse)
    )
    ov_model, tok = load_openvino_model(tmp_path / "ir", properties={"INFERENCE_PRECISION_HINT": "f32"})
    got = loglikelihoods(CausalLM(ov_model, tok), requests, batch_size=2)
    assert got == pytest.approx(loglikelihoods(torch_lm, requests, batch_size=2), abs=1e-3)
    generated = CausalLM(ov_model, tok).generate(["1 + 1 =", "The capital of"], max_new_tokens=4)
    assert generated == torch_lm.generate(["1 + 1 =", "The capital of"], max_new_tokens=4)


def test_export_and_eval_verbs(sources, tmp_path, capsys):
    sparse, adapter = sources
    out = tmp_path / "ov"
    common = [
        "--no-progress",
        "--set",
        "data.splits.train=16",
        "--set",
        "data.splits.validation=4",
        "--set",
        "data.splits.test=8",
        "--set",
        "export.parity.num_prompts=2",
        "--set",
        "export.parity.max_new_tokens=4",
    ]
    args = [
        "export",
        "--model",
        str(sparse),
        "--adapter",
        str(adapter),
        "--weight-format",
        "int8",
        "--output",
        str(out),
    ]
    assert main([*args, *common, "--eval", "--set", "evaluation.limit=4"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["weight_format"] == "int8" and report["adapter"]["merged"] is False
    assert json.loads((out / "eval" / "eval.json").read_text())["results"][0]["n"] == 4
    assert main([*args, *common]) == 2  # refuses to overwrite silently
    assert "already exists" in capsys.readouterr().err
    ev = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--output",
                str(ev),
                *common,
                "--set",
                "evaluation.limit=4",
                "--set",
                'export.runtime_properties={"INFERENCE_PRECISION_HINT": "f32"}',
            ]
        )
        == 0
    )
    saved = json.loads((ev / "eval.json").read_text())
    assert saved["openvino"]["runtime_properties"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--output",
                str(tmp_path / "e2"),
                *common,
                "--set",
                'export.runtime_properties={"INFERENCE_PRECISION_HINT": "f8"}',
            ]
        )
        == 2
    )
    assert "INFERENCE_PRECISION_HINT" in capsys.readouterr().err


def test_export_config_rejects_bad_values():
    from nncf_elastic_lora.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match="export.weight_format"):
        apply_overrides(PipelineConfig(), ['export.weight_format="int3"'])
    with pytest.raises(ConfigError, match="int4"):  # caught when the config loads, not after training
        apply_overrides(PipelineConfig(), ['export.weight_format="int8"', "export.awq=true"])
    with pytest.raises(ConfigError, match="merge_adapter"):
        apply_overrides(
            PipelineConfig(), ["export.enabled=true", 'export.weight_format="int4"', "export.awq=true"]
        )


def test_parity_reports_a_differing_model(sources, tmp_path):
    """The comparison can fail: a different torch model gives large logit differences."""
    sparse, _ = sources
    export_openvino(sparse, tmp_path / "ir")
    other = build_tiny_llama(
        TINY.model_copy(update={"tiny": TINY.tiny.model_copy(update={"seed": 7})})
    ).eval()
    from transformers import AutoTokenizer

    result = compare_ir_with_torch(
        tmp_path / "ir",
        other,
        AutoTokenizer.from_pretrained(sparse),
        PROMPTS[:1],
        max_new_tokens=4,
        genai=False,
    )
    assert result["summary"]["logits_max_abs_diff"] > 1e-2
    shutil.rmtree(tmp_path / "ir")


def test_adapter_recorded_for_a_bfloat16_base_exports_onto_it(tmp_path):
    """Export loads the base in float32; the adapter's base record (taken in the config's dtype) still matches."""
    from nncf_elastic_lora.elastic import ElasticLoraSuperNet
    from nncf_elastic_lora.provenance import model_fingerprint

    base = TINY.model_copy(update={"dtype": "bfloat16"})
    supernet = ElasticLoraSuperNet.attach(build_tiny_llama(TINY), target_modules=["q_proj"], max_rank=4, alpha=8)
    supernet.save_sub_adapter(tmp_path / "sub", base_fingerprint=model_fingerprint(base))
    other = TINY.model_copy(update={"tiny": TINY.tiny.model_copy(update={"seed": 5})})
    with pytest.raises(ValueError, match="trained on another base"):
        export_openvino(other, tmp_path / "ir_other", adapter=tmp_path / "sub", genai_device=None)
    report = export_openvino(base, tmp_path / "ir", adapter=tmp_path / "sub", genai_device=None)
    assert report["adapter"]["path"] == str(tmp_path / "sub")


def test_w8a8_export_is_what_the_sparse_kernels_need(sources, tmp_path):
    """activations 'int8': INT8 activations (FakeQuantize) and symmetric INT8 weights that keep the zeros;
    the sparse-kernel check then fails on nothing but the CPU (AMX) where it lacks it."""
    from nncf_elastic_lora.config import ModelConfig, TinyModelConfig
    from nncf_elastic_lora.runtime import SPARSE_RATE, cpu_flags, sparse_kernel_check

    _, adapter = sources
    wide = ModelConfig(name_or_path="tiny-random-llama", tiny=TinyModelConfig(hidden_size=64, intermediate_size=128))
    model = build_tiny_llama(wide).eval()  # every linear's dims multiples of 64, as the kernels need
    sparsify_model(model, method="magnitude", ratio=0.5, pattern="unstructured", target_modules=LINEARS)
    sparse = tmp_path / "sparse"
    model.save_pretrained(sparse)
    load_tokenizer(wide).save_pretrained(sparse)
    texts = ["The capital of France is Paris.", "Question: 3 + 4 = 7", "def f(x): return x", "1 + 1 = 2"]
    report = export_openvino(sparse, tmp_path / "w8a8", weight_format="int8", activations="int8",
                             calibration=texts, genai_device=None)  # fmt: skip
    assert report["compression"]["calibration_samples"] == 4
    assert report["sparse_kernels"]["failing"] == [*([] if {"amx_tile", "amx_int8"} <= cpu_flags() else ["AMX"]),
                                                   f"{SPARSE_RATE} set"]  # the export sets no runtime property  # fmt: skip
    xml = tmp_path / "w8a8" / OV_MODEL
    check = sparse_kernel_check(xml, {SPARSE_RATE: 0.4})
    met = {c["name"]: c["met"] for c in check["conditions"]}
    assert met["INT8 activations"] and met["weight dims multiples of 64"] and met["weights at least that sparse"]
    assert check["failing"] == ([] if {"amx_tile", "amx_int8"} <= cpu_flags() else ["AMX"])
    # a weight-only INT8 IR of the same model: no INT8 activations, and no rate set, so the kernels stay off
    export_openvino(sparse, tmp_path / "int8", weight_format="int8", genai_device=None)
    weight_only = sparse_kernel_check(tmp_path / "int8" / OV_MODEL)
    assert {"INT8 activations", f"{SPARSE_RATE} set"} <= set(weight_only["failing"])
    with pytest.raises(ValueError, match="needs calibration texts"):
        export_openvino(sparse, tmp_path / "x", weight_format="int8", activations="int8", genai_device=None)
    with pytest.raises(ValueError, match="needs weight_format int8"):
        export_openvino(sparse, tmp_path / "x", weight_format="int4", activations="int8", calibration=texts)
    with pytest.raises(ValueError, match="merge the adapter first"):
        export_openvino(sources[0], tmp_path / "x", adapter=adapter, weight_format="int8", activations="int8",
                        calibration=texts)  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_a_tokenizer_is_converted_once_per_process_and_a_changed_one_again(tokenizer, tmp_path, monkeypatch):
    import copy

    import openvino_tokenizers

    from nncf_elastic_lora.deploy import export as export_module

    calls = []
    convert = openvino_tokenizers.convert_tokenizer
    monkeypatch.setattr(openvino_tokenizers, "convert_tokenizer", lambda *a, **k: calls.append(1) or convert(*a, **k))
    monkeypatch.setattr(export_module, "_CONVERTED_TOKENIZERS", {})
    from transformers import AutoTokenizer

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    truncating = copy.deepcopy(tokenizer)
    truncating.truncation_side = "left"  # set after loading: not in init_kwargs, read by the conversion
    tokenizer.save_pretrained(tmp_path / "saved")  # a copy elsewhere, as LoNAS saves one per sub-network
    moved = AutoTokenizer.from_pretrained(tmp_path / "saved")
    for name, tok in (("a", tokenizer), ("b", tokenizer), ("c", chat), ("d", moved), ("e", truncating)):
        (tmp_path / name).mkdir()
        export_module._export_tokenizer(tok, tmp_path / name)
    assert len(calls) == 3  # "b" and "d" reused "a"'s conversion; the template and the truncation side are new
    files = [OV_TOKENIZER, OV_TOKENIZER.replace(".xml", ".bin"), OV_DETOKENIZER, OV_DETOKENIZER.replace(".xml", ".bin")]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / x / f).read_bytes() for f in files for x in "bd")
    assert all((tmp_path / "a" / OV_TOKENIZER).read_bytes() != (tmp_path / x / OV_TOKENIZER).read_bytes() for x in "ce")
