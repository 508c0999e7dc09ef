"""`run` on the tiny SQFT configs: every stage, the merged model keeps the zeros (and the INT4 codes)."""

import json
from pathlib import Path

import openvino as ov
import pytest
import torch
from transformers import AutoModelForCausalLM

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.deploy.ir import check_ir_codes
from nncf_elastic_lora.int4 import load_quantized_weights

CONFIGS = Path(__file__).parent.parent / "configs"
FAST = ["--no-progress", "--set", "evaluation.limit=8", "--set", "benchmark.enabled=false"]


def _zeros(path: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(path)
    return {n: m.weight == 0 for n, m in model.named_modules() if n.endswith(("q_proj", "up_proj", "down_proj"))}


def _dequantized(qweights: dict) -> dict[str, torch.Tensor]:
    return {n: q.dequantize() for n, q in qweights.items()}


def test_run_sqft_sparsepeft(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(CONFIGS / "tiny_sqft_sparsepeft.json"), "--output", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages"] == [
        "eval_dense", "sparsify", "eval_sparse", "train", "eval_subnets", "merge", "eval_merged", "export", "eval_ir",
        "plain_reference",
    ]  # fmt: skip
    assert "sparse+NLS SparsePEFT (heuristic, merged)" in report["evaluation"]
    assert report["merge"]["adapter_kind"] == "sparsepeft" and report["merge"]["zeros_kept"]
    base, merged = _zeros(out / "sparse_model"), _zeros(out / "merged_model")
    assert all((merged[n] >= base[n]).all() for n in base)  # every zero of the base is still zero
    changed = AutoModelForCausalLM.from_pretrained(out / "merged_model").model.layers[0].mlp.up_proj.weight
    original = AutoModelForCausalLM.from_pretrained(out / "sparse_model").model.layers[0].mlp.up_proj.weight
    assert not torch.equal(changed, original)  # the adapter was really merged
    assert report["export"]["adapter"] is None and report["export"]["ir_sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("base_weight", ["dequantized", "float"])
def test_run_sqft_qa_sparsepeft_ships_the_merged_int4_codes(base_weight, tmp_path):
    out = tmp_path / "run"
    weight = ["--set", f"bootstrapNAS.training.qa_base_weight={base_weight}"]
    assert main(["run", str(CONFIGS / "tiny_sqft_qa_sparsepeft.json"), "--output", str(out), *FAST, *weight]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][3:5] == ["quantize_base", "eval_int4"]
    assert report["quantization"]["zeros_kept"] and report["merge"]["precision"] == "int4"
    merged = load_quantized_weights(out / "merged_model")
    base = load_quantized_weights(out / "int4_model")
    assert sum(int((merged[n].codes != base[n].codes).sum()) for n in base) > 0  # training moved codes
    sub = json.loads((out / "nls" / "sub_adapter_heuristic" / "elastic_lora_sub.json").read_text())
    assert sub["base_weight"] == base_weight
    # the merge rounds what training saw: its torch score is the trained sub-adapter's, example by example
    evaluation = report["evaluation"]
    trained = next(v for k, v in evaluation.items() if k.endswith("(heuristic)"))[0]["outcomes"]
    assert next(v for k, v in evaluation.items() if k.endswith("merged)"))[0]["outcomes"] == trained
    sparse = _zeros(out / "sparse_model")  # the pruned weights are zero in the merged INT4 model
    assert all(not merged_w[sparse[n]].any() for n, merged_w in _dequantized(merged).items() if n in sparse)
    check = check_ir_codes(out / "openvino" / "openvino_model.xml", merged)
    assert check  # raises on the first code, scale or zero point that differs
    assert report["export"]["weight_format"] == "int4"
    assert report["export"]["parity"]["greedy_identical_genai"] == report["export"]["parity"]["prompts"]
    # The tied embedding / LM head in INT8, as optimum-intel's INT4 exports keep it: no float32 copy of it,
    # and the logits differ from torch's (float32 head) by INT8 rounding, as an INT8 export's do.
    exported = json.loads((out / "openvino" / "export_report.json").read_text())
    assert exported["compression"]["backup_precision"] == "int8_asym" and exported["compression"]["ir_codes_verified"]
    core = ov.Core()
    constants = [op for op in core.read_model(out / "openvino" / "openvino_model.xml").get_ops()
                 if op.get_type_name() == "Constant"]
    assert max(op.get_byte_size() for op in constants if op.get_element_type().get_type_name() == "f32") < 4096
    assert any(op.get_element_type().get_type_name() == "u8" and op.get_byte_size() > 10**6 for op in constants)
    assert report["export"]["parity"]["logits_max_abs_diff"] < 0.05
    # it runs as the plain INT4 export does: optimum-intel's float-export mark (an f16 KV cache) is dropped
    plain_xml = Path(report["plain"]["irs"]["int4"]["path"]) / "openvino_model.xml"
    options = [core.read_model(xml).get_rt_info("runtime_options").value
               for xml in (out / "openvino" / "openvino_model.xml", plain_xml)]  # fmt: skip
    assert options[0] == options[1] and "KV_CACHE_PRECISION" not in options[0]
    assert report["export"]["runtime_options"] == options[0]  # and the export says which options it carries


def test_run_sqft_unmerged_adapter_on_the_int4_base(tmp_path):
    out = tmp_path / "run"
    lora = ["--set", "bootstrapNAS.training.adapter_kind=lora"]
    assert main(["run", str(CONFIGS / "tiny_sqft_qa_sparsepeft.json"), "--output", str(out), *FAST, *lora]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "merge" not in report["stages"] and report["export"]["adapter"]["merged"] is False
    check_ir_codes(out / "openvino" / "openvino_model.xml", load_quantized_weights(out / "int4_model"))
