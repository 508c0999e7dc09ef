"""Bad inputs and faults across every verb: each gives exit code 2, an ``error:`` line naming the
problem, no traceback, and changes no file outside the tool's own outputs (a failed verb leaves
no output directory behind either).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.config import ModelConfig, TinyModelConfig
from nncf_elastic_lora.elastic import ElasticLoraSuperNet
from nncf_elastic_lora.models import build_tiny_llama, load_tokenizer
from nncf_elastic_lora.outputs import output_lock

TINY_CONFIG = Path(__file__).parent.parent / "configs" / "tiny_shears.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def _tiny(hidden: int = 64) -> ModelConfig:
    return ModelConfig(
        name_or_path="tiny-random-llama",
        tiny=TinyModelConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2),
    )


def _save_model(path: Path, hidden: int = 64) -> Path:
    model = build_tiny_llama(_tiny(hidden))
    model.save_pretrained(path)
    load_tokenizer(_tiny()).save_pretrained(path)
    return path


def _save_super_adapter(path: Path, hidden: int = 64) -> Path:
    supernet = ElasticLoraSuperNet.attach(
        build_tiny_llama(_tiny(hidden)), target_modules=TARGETS, max_rank=8, alpha=16, default_widths=[8, 4]
    )
    supernet.save_super_adapter(path)
    supernet.save_sub_adapter(path.parent / f"{path.name}_sub", supernet.get_heuristic_config())
    return path


def _save_sqft_inputs(root: Path) -> None:
    """Sparse and INT4 bases (two of each) and SparsePEFT / QA-SparsePEFT sub-adapters trained on the first."""
    import torch

    from nncf_elastic_lora.int4 import quantize_base, save_quantized_base
    from nncf_elastic_lora.outputs import fingerprint_path
    from nncf_elastic_lora.sparsity import sparsify_model

    for seed, name in ((0, "sparse"), (1, "sparse_other")):
        model = build_tiny_llama(_tiny().model_copy(update={"tiny": TinyModelConfig(seed=seed)}))
        sparsify_model(model, method="magnitude", ratio=0.5, target_modules=TARGETS, progress=False)
        model.save_pretrained(root / name)
        load_tokenizer(_tiny()).save_pretrained(root / name)
        q = quantize_base(model, target_modules=TARGETS, group_size=32, progress=False)
        save_quantized_base(root / f"{name}_int4", model, q, tokenizer=load_tokenizer(_tiny()))
    for kind, base, fingerprint in (
        ("sparsepeft", "sparse", True),
        ("qa_sparsepeft", "sparse_int4", False),  # no base fingerprint: the scales are what is checked
    ):
        from nncf_elastic_lora.int4 import load_quantized_weights
        from nncf_elastic_lora.models import load_model

        model, _ = load_model(ModelConfig(name_or_path=str(root / base)))
        quantized = load_quantized_weights(root / base) if kind == "qa_sparsepeft" else None
        supernet = ElasticLoraSuperNet.attach(
            model, target_modules=TARGETS, max_rank=8, alpha=16, adapter_kind=kind, quantized=quantized
        )
        with torch.no_grad():
            for a in supernet.adapters.values():
                a.lora_B.weight.normal_(0, 0.01)
        supernet.save_sub_adapter(
            root / f"{kind}_sub", base_fingerprint=fingerprint_path(root / base) if fingerprint else None
        )


LATENCY_DAMAGE = {
    "slope_inf": ({"ms_per_mparam": float("inf")}, "ms_per_mparam is inf, expected a finite number > 0"),
    "slope_string": ({"ms_per_mparam": "0.5"}, "ms_per_mparam is '0.5', expected a finite number > 0"),
    "slope_negative": ({"ms_per_mparam": -0.5}, "ms_per_mparam is -0.5"),
    "intercept_nan": ({"intercept_ms": float("nan")}, "intercept_ms is nan"),
    "per_channel_negative": ({"params_per_channel": [192, -192]}, "params_per_channel[1] is -192"),
    "sizes_float": ({"sizes": [128, 127.5]}, "sizes[1] is 127.5, expected an integer"),
    "batch_bool": ({"batch_size": True}, "batch_size is True"),
    "format_unknown": ({"weight_format": "int3"}, "weight_format is 'int3'"),
    "point_negative_ms": ({"points": [{"role": "fit", "widths": [128, 128], "weights": 49152, "measured_ms": -1.0}]}, "points[0].measured_ms is -1.0"),
}  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of inputs, good and bad, shared by every case (which must leave it unchanged)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    shutil.copy(TINY_CONFIG, root / "tiny.json")
    model = _save_model(root / "model")
    no_tokenizer = root / "model_no_tokenizer"  # weights only: a benchmark has no vocabulary to draw prompts from
    no_tokenizer.mkdir()
    for f in model.iterdir():
        if not f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, no_tokenizer / f.name)
    _save_super_adapter(root / "super")
    _save_super_adapter(root / "super_wide", hidden=96)  # trained on another base: shapes do not fit
    (root / "bad.json").write_text("{ not json")
    widths = json.loads((root / "super_sub" / "subnet_config.json").read_text())
    first = next(iter(widths))
    (root / "subnet_half.json").write_text(json.dumps({**widths, first: 4.5}))
    (root / "subnet_string.json").write_text(json.dumps({**widths, first: "4"}))
    (root / "subnet_floats.json").write_text(json.dumps({k: float(v) for k, v in widths.items()}))
    from nncf_elastic_lora.latency import LatencyModel

    downs = [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    LatencyModel(2.0, 0.5, 1, "int8", downs, [96, 96], [96, 96]).save(
        root / "latency_other.json"
    )  # other MLPs
    good = LatencyModel(2.0, 0.5, 1, "int8", downs, [128, 128], [192, 192]).to_dict()
    for name, change in LATENCY_DAMAGE.items():  # what a hand edit or a broken disk leaves
        (root / f"latency_{name}.json").write_text(json.dumps({**good, **change[0]}))
    (root / "unknown_key.json").write_text(json.dumps({"sparsity": {"ratoi": 0.5}}))
    cfg = json.loads(TINY_CONFIG.read_text())
    variants = {
        "no_match.json": ("sparsity", {"target_modules": ["{re}.*\\.nonexistent_proj"]}),
        "too_wide.json": ("bootstrapNAS", {"elasticity": {"width": {"overwrite_groups": [["q_proj"]], "overwrite_groups_widths": [[16, 8]]}}}),
        "two_groups.json": ("bootstrapNAS", {"elasticity": {"width": {"overwrite_groups": [["q_proj"], ["model.layers.{*}.self_attn.q_proj"]], "overwrite_groups_widths": [[8], [4]]}}}),
        "no_lora_target.json": ("bootstrapNAS", {"training": {**cfg["bootstrapNAS"]["training"], "target_modules": ["gate_projj"]}}),
    }  # fmt: skip
    for name, (section, change) in variants.items():
        c = json.loads(json.dumps(cfg))
        if section == "bootstrapNAS" and "elasticity" in change:
            c["bootstrapNAS"]["elasticity"]["width"] = change["elasticity"]["width"]
        elif section == "bootstrapNAS":
            c["bootstrapNAS"]["training"] = change["training"]
        else:
            c[section].update(change)
        (root / name).write_text(json.dumps(c))
    # broken model directories
    per_layer = shutil.copytree(model, root / "model_per_layer_wrong")  # widths that the weights do not have
    arch = json.loads((per_layer / "config.json").read_text())
    arch["intermediate_size_per_layer"] = [16, 24] + [16] * (arch["num_hidden_layers"] - 2)
    (per_layer / "config.json").write_text(json.dumps(arch))
    bad_cfg = shutil.copytree(model, root / "model_bad_config")
    (bad_cfg / "config.json").write_text('{"model_type": "llama", ')
    cut = shutil.copytree(model, root / "model_truncated")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    garbage = shutil.copytree(model, root / "model_garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 64)
    from safetensors.torch import load_file, save_file

    for kind, value in (("nan", float("nan")), ("inf", float("inf"))):  # weights a diverged run could leave
        broken = shutil.copytree(model, root / f"model_{kind}")
        state = load_file(broken / "model.safetensors")
        state["model.layers.1.mlp.down_proj.weight"][0, :2] = value
        save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    overflow = shutil.copytree(model, root / "model_overflow")  # finite weights, NaN logits
    state = load_file(overflow / "model.safetensors")
    state["model.norm.weight"][:] = 3e38
    save_file(state, overflow / "model.safetensors", metadata={"format": "pt"})
    assert main(["export", "--config", str(root / "tiny.json"), "--model", str(overflow), "--weight-format", "fp32",
                 "--output", str(root / "ir_overflow"), "--no-progress", "--set", "export.parity.num_prompts=0"]) == 0  # fmt: skip
    no_weights = shutil.copytree(model, root / "model_no_weights")
    (no_weights / "model.safetensors").unlink()
    ir = root / "ir_no_xml"  # an OpenVINO directory that lost its .xml
    ir.mkdir()
    shutil.copy(model / "config.json", ir / "config.json")
    (ir / "openvino_model.bin").write_bytes(b"\x00" * 16)
    # broken adapters
    corrupt = shutil.copytree(root / "super", root / "super_corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"{garbage")
    bad_space = shutil.copytree(root / "super", root / "super_bad_space")
    (bad_space / "elastic_lora.json").write_text("{")
    (root / "not_adapter").mkdir()
    _save_sqft_inputs(root)
    assert main(["merge", "--config", str(root / "tiny.json"), "--model", str(root / "sparse_int4"), "--adapter",
                 str(root / "qa_sparsepeft_sub"), "--output", str(root / "merged_int4"), "--no-progress"]) == 0  # fmt: skip
    info = json.loads((root / "sparse_int4" / "quantization.json").read_text())
    some = info["modules"][0]
    for name, change in {  # quantization.json edited or damaged
        "int4_json_cut": None,
        "int4_bits_8": {"bits": 8},
        "int4_group_string": {"group_sizes": {some: "32"}},
        "int4_group_inf": {"group_sizes": {some: float("inf")}},
        "int4_scales_sha_other": {"scales_sha256": "0" * 64},
        "int4_module_unknown": {"modules": [*info["modules"], "model.layers.9.mlp.up_proj"]},
    }.items():
        damaged = shutil.copytree(root / "sparse_int4", root / name)
        text = json.dumps({**info, **change}) if change else json.dumps(info)[:40]
        (damaged / "quantization.json").write_text(text)
    cut_codes = shutil.copytree(root / "sparse_int4", root / "int4_codes_cut")
    codes = cut_codes / "quantized_weights.safetensors"
    codes.write_bytes(codes.read_bytes()[: codes.stat().st_size // 2])
    no_json = shutil.copytree(root / "sparse_int4", root / "int4_no_json")
    (no_json / "quantization.json").unlink()
    corrupt_int4 = shutil.copytree(root / "sparse_int4", root / "int4_corrupt")
    (corrupt_int4 / "quantized_weights.safetensors").write_bytes(b"\x00" * 64)
    no_record = shutil.copytree(root / "sparsepeft_sub", root / "sparsepeft_no_base_record")
    record = json.loads((no_record / "elastic_lora_sub.json").read_text())
    (no_record / "elastic_lora_sub.json").write_text(json.dumps({**record, "base_fingerprint": None}))
    other = shutil.copytree(root / "super", root / "super_other_base")  # records a base that is not ours
    space = json.loads((other / "elastic_lora.json").read_text())
    (other / "elastic_lora.json").write_text(json.dumps({**space, "base_fingerprint": "0123456789abcdef0123"}))
    inf_scaling = shutil.copytree(root / "sparsepeft_sub", root / "sub_scaling_inf")
    (inf_scaling / "elastic_lora_sub.json").write_text(json.dumps({**record, "scaling": float("inf")}))
    bad_record = shutil.copytree(root / "sparsepeft_sub", root / "sub_bad_record")
    (bad_record / "elastic_lora_sub.json").write_text("{")
    # user folders that look like models or outputs
    project = root / "project"
    project.mkdir()
    (project / "config.json").write_text("{}")
    (project / "notes.md").write_text("my notes")
    (root / "plainfile").write_text("a file")
    (root / "records.json").write_text(json.dumps([{"foo": 1}]))
    return root


@dataclass
class Case:
    name: str
    argv: list[str]  # "{ws}" is the workspace
    expect: str  # in the error message
    output: str = "out"  # relative to the workspace
    hold_lock: bool = False
    extra: list[str] = field(default_factory=list)


FAST = ["--no-progress", "--set", "evaluation.limit=4"]
RUN = ["run", "{ws}/tiny.json"]
SPARSIFY = ["sparsify", "--config", "{ws}/tiny.json"]
TRAIN = ["train", "--config", "{ws}/tiny.json", "--model", "{ws}/model"]
SEARCH = ["search", "--config", "{ws}/tiny.json", "--model", "{ws}/model"]
EVAL = ["eval", "--config", "{ws}/tiny.json"]
EXPORT = ["export", "--config", "{ws}/tiny.json", "--model", "{ws}/model"]
BENCH = ["benchmark", "--model", "{ws}/model", "--runtime", "torch"]
QUANTIZE = ["quantize", "--config", "{ws}/tiny.json", "--model", "{ws}/model"]
MERGE = ["merge", "--config", "{ws}/tiny.json"]
REORDER = ["reorder", "--config", "{ws}/tiny.json"]
EXTRACT = ["extract", "--config", "{ws}/tiny.json", "--model", "{ws}/model"]

CASES = [
    # config files and overrides
    Case("config-missing", ["run", "{ws}/nope.json"], "config file not found"),
    Case("config-not-json", ["run", "{ws}/bad.json"], "not valid JSON"),
    Case("config-unknown-key", ["run", "{ws}/unknown_key.json"], "sparsity.ratoi: unknown key"),
    Case("set-bad-value", [*RUN, "--set", "sparsity.ratio=1.5"], "sparsity.ratio"),
    Case("set-no-equals", [*RUN, "--set", "sparsity.ratio"], "expected KEY.PATH=VALUE"),
    Case("resume-and-overwrite", [*RUN, "--resume", "--overwrite"], "exclude each other"),
    # patterns resolved against the model before any work
    Case("pattern-matches-nothing", ["run", "{ws}/no_match.json"], "sparsity.target_modules"),
    Case("width-above-rank", ["run", "{ws}/too_wide.json"], "exceed the maximal rank"),
    Case("module-in-two-groups", ["run", "{ws}/two_groups.json"], "is in two groups"),
    Case("lora-target-matches-nothing", ["run", "{ws}/no_lora_target.json"], "training.target_modules"),
    Case("train-width-above-rank", ["train", "--config", "{ws}/too_wide.json"], "exceed the maximal rank"),
    Case("sparsify-pattern-nothing", ["sparsify", "--config", "{ws}/no_match.json"], "matches no linear"),
    # models
    Case("model-missing", [*RUN, "--model", "{ws}/no_such_model"], "no_such_model"),
    Case("model-config-not-json", [*SPARSIFY, "--model", "{ws}/model_bad_config"], "config.json is not valid JSON"),
    Case("model-truncated", [*SPARSIFY, "--model", "{ws}/model_truncated"], "truncated or corrupt"),
    Case("model-garbage", [*TRAIN[:3], "--model", "{ws}/model_garbage"], "truncated or corrupt"),
    Case("model-no-weights", [*EVAL, "--model", "{ws}/model_no_weights"], "no weights"),
    # non-finite weights: refused on load by every verb, naming the tensor and the count
    Case("model-nan-sparsify", [*SPARSIFY, "--model", "{ws}/model_nan"], "down_proj.weight holds 2 NaN and 0 inf"),
    Case("model-nan-train", [*TRAIN[:3], "--model", "{ws}/model_nan"], "down_proj.weight holds 2 NaN"),
    Case("model-inf-eval", [*EVAL, "--model", "{ws}/model_inf"], "down_proj.weight holds 0 NaN and 2 inf"),
    Case("model-nan-quantize", [*QUANTIZE[:3], "--model", "{ws}/model_nan"], "holds 2 NaN"),
    Case("model-inf-export", [*EXPORT[:3], "--model", "{ws}/model_inf"], "holds 0 NaN and 2 inf"),
    Case("model-nan-reorder", [*REORDER, "--model", "{ws}/model_nan"], "holds 2 NaN"),
    Case("model-nan-run", [*RUN, "--model", "{ws}/model_nan"], "holds 2 NaN"),
    # finite weights whose activations overflow: NaN logits are refused, not scored or shipped
    Case("model-overflow-eval", [*EVAL, "--model", "{ws}/model_overflow"], "the model's logits of the scored text hold"),
    Case("model-overflow-export", [*EXPORT[:3], "--model", "{ws}/model_overflow", "--weight-format", "fp32"], "the torch model's logits on the parity prompt"),
    Case("ir-overflow-eval", [*EVAL, "--model", "{ws}/ir_overflow"], "the model's logits of the scored text hold"),
    Case("eval-ir-without-xml", [*EVAL, "--model", "{ws}/ir_no_xml"], "openvino_model.xml"),
    Case("model-is-a-file", [*EVAL, "--model", "{ws}/plainfile"], "plainfile"),
    # outputs that are, contain or lie inside an input
    Case("run-output-is-model", [*RUN, "--model", "{ws}/model", "--overwrite"], "is the input", output="model"),
    Case("train-output-is-model", [*TRAIN, "--overwrite"], "is the input", output="model"),
    Case("eval-output-is-model", [*EVAL, "--model", "{ws}/model", "--overwrite"], "is the input", output="model"),
    Case("sparsify-output-is-model", [*SPARSIFY, "--model", "{ws}/model", "--overwrite"], "is the input", output="model"),
    Case("search-output-is-adapter", [*SEARCH, "--super-adapter", "{ws}/super", "--overwrite"], "is the input", output="super"),
    Case("export-output-is-adapter", [*EXPORT, "--adapter", "{ws}/super_sub", "--overwrite"], "is the input", output="super_sub"),
    Case("bench-output-is-model", [*BENCH, "--overwrite"], "is the input", output="model"),
    Case("output-inside-model", [*TRAIN], "is inside the input", output="model/run"),
    Case("output-contains-config", [*RUN, "--overwrite"], "contains the input", output="."),
    # existing outputs that are not ours
    Case("overwrite-foreign-run", [*RUN, "--overwrite"], "not written by nncf-elastic-lora", output="project"),
    Case("overwrite-foreign-sparsify", [*SPARSIFY, "--overwrite"], "not written by nncf-elastic-lora", output="project"),
    Case("overwrite-foreign-export", [*EXPORT, "--overwrite"], "not written by nncf-elastic-lora", output="project"),
    Case("overwrite-foreign-bench", [*BENCH, "--overwrite"], "not written by nncf-elastic-lora", output="project"),
    Case("resume-foreign", [*RUN, "--resume"], "cannot resume", output="project"),
    Case("train-resume-foreign", [*TRAIN, "--resume"], "cannot resume", output="project"),
    Case("exists-no-flag", [*EVAL, "--model", "{ws}/model"], "already exists", output="project"),
    Case("output-below-file", [*RUN], "lies below the file", output="plainfile/out"),
    Case("output-is-file", [*EVAL, "--model", "{ws}/model"], "is a file", output="plainfile"),
    Case("output-locked", [*RUN], "being written by another", hold_lock=True),
    # data
    Case("unknown-task", [*RUN, "--task", "no_such_task"], "no_such_task"),
    Case("json-task-missing-file", [*RUN, "--set", "data.task=json", "--set", "data.path={ws}/nope.jsonl"], "nope.jsonl"),
    Case("json-task-bad-records", [*TRAIN, "--set", "data.task=json", "--set", "data.path={ws}/records.json"], "unknown record format"),
    Case("eval-unknown-task", [*EVAL, "--model", "{ws}/model", "--tasks", "basic_arithmetic,nonsense"], "nonsense"),
    # adapters
    Case("search-adapter-missing", [*SEARCH, "--super-adapter", "{ws}/no_adapter"], "not a super-adapter folder"),
    Case("search-adapter-wrong-base", [*SEARCH, "--super-adapter", "{ws}/super_wide"], "does not fit the base model"),
    Case("search-adapter-corrupt", [*SEARCH, "--super-adapter", "{ws}/super_corrupt"], "truncated or corrupt"),
    Case("search-space-not-json", [*SEARCH, "--super-adapter", "{ws}/super_bad_space"], "not valid JSON"),
    Case("search-zero-evals", [*SEARCH, "--super-adapter", "{ws}/super", "--num-evals", "0"], "num_evals"),
    Case("export-adapter-wrong-base", [*EXPORT, "--adapter", "{ws}/super_wide_sub"], "does not fit the base model"),
    Case("export-not-an-adapter", [*EXPORT, "--adapter", "{ws}/not_adapter"], "not a PEFT adapter folder"),
    Case("export-save-merged-no-merge", [*EXPORT, "--adapter", "{ws}/super_sub", "--save-merged", "{ws}/merged"], "save_merged needs"),
    Case("export-backup-on-int8", [*EXPORT, "--weight-format", "int8", "--backup-precision", "none"], "backup_precision 'none' applies to int4 weights"),
    Case("export-backup-unknown", [*RUN, "--set", 'export.backup_precision="int2"'], "export.backup_precision"),
    Case("export-group-size-zero", [*EXPORT, "--weight-format", "int4", "--group-size", "0"], "group_size"),
    # benchmark flags
    Case("bench-batch-zero", [*BENCH, "--batch-sizes", "0"], "--batch-sizes must be at least 1"),
    Case("bench-batch-text", [*BENCH, "--batch-sizes", "1,x"], "comma-separated integers"),
    Case("bench-new-tokens-one", [*BENCH, "--new-tokens", "1"], "--new-tokens must be at least 2"),
    Case("bench-rounds-zero", [*BENCH, "--rounds", "0"], "--rounds must be at least 1"),
    Case("bench-paired-one", [*BENCH, "--paired", "1"], "--paired must be 0 (off) or at least 2 rounds, got 1"),
    Case("bench-paired-no-genai", [*BENCH, "--paired", "5"], "--paired compares IRs on genai: add genai to --runtime"),
    Case("bench-runtime-unknown", [*BENCH[:3], "--runtime", "tensorrt"], "not one of"),
    Case("bench-genai-on-hf-dir", [*BENCH[:3], "--runtime", "genai"], "needs an OpenVINO IR directory"),
    Case("bench-model-missing", ["benchmark", "--model", "{ws}/nope"], "no such directory"),
    Case("bench-duplicate-label", [*BENCH, "--model", "{ws}/model"], "given twice"),
    Case("bench-no-tokenizer", [*BENCH[:2], "{ws}/model_no_tokenizer", *BENCH[3:]], "has no tokenizer"),
    Case("bench-unknown-property", ["benchmark", "--model", "{ws}/model", "--runtime", "torch", "--property", "NO_SUCH_PROP=1"], "NO_SUCH_PROP"),
    # SQFT config keys and verbs
    Case("plain-formats-empty", [*RUN, "--set", "plain.weight_formats=[]"], "plain.weight_formats is empty"),
    Case("paired-rounds-one", [*RUN, "--set", "benchmark.paired_rounds=1"], "paired_rounds 1: a ratio pairs at least 2 rounds"),
    Case("export-w8a8-int4", [*EXPORT, "--weight-format", "int4", "--activations", "int8"], "set weight_format to 'int8'"),
    Case("floor-without-nsga", [*RUN, "--set", "bootstrapNAS.search.select=cheapest_above_plain"], "set algorithm to 'NSGA2'"),
    Case("floor-without-plain", [*RUN, "--set", "bootstrapNAS.search.algorithm=NSGA2", "--set", "bootstrapNAS.search.select=cheapest_above_plain", "--set", "plain.enabled=false"], "set plain.enabled to true"),
    Case("floor-precision-bad", [*RUN, "--set", "bootstrapNAS.search.floor_precision=int8"], "bootstrapNAS.search.floor_precision: got \"int8\"; Input should be 'auto' or 'float'"),
    Case("search-verb-floor", [*SEARCH, "--super-adapter", "{ws}/super", "--set", "bootstrapNAS.search.algorithm=NSGA2", "--set", "bootstrapNAS.search.select=cheapest_above_plain"], "pass --plain-quality"),
    Case("search-verb-stray-floor", [*SEARCH, "--super-adapter", "{ws}/super", "--plain-quality", "-1.5"], "drop --plain-quality"),
    Case("plain-formats-repeat", [*RUN, "--set", 'plain.weight_formats=["int8", "int8"]'], "repeats a format"),
    Case("plain-format-unknown", [*RUN, "--set", 'plain.weight_formats=["int3"]'], "plain.weight_formats"),
    Case("plain-cache-is-file", [*RUN, "--set", 'plain.cache_dir="{ws}/plainfile"'], "plain.cache_dir: "),
    Case("plain-cache-below-file", [*RUN, "--set", 'plain.cache_dir="{ws}/plainfile/cache"'], "lies below a file"),
    Case("plain-on-int4-model", [*RUN, "--model", "{ws}/sparse_int4", "--set", "benchmark.enabled=false", "--set", "quantization.weight_format=\"none\"", "--set", "sparsity.method=\"none\""], "plain.enabled: the original model is already INT4"),
    Case("elasticity-mode-unknown", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"channels\""], "bootstrapNAS.elasticity.mode"),
    Case("channels-without-mode-b", [*RUN, "--set", 'bootstrapNAS.elasticity.channels={"channels": [64]}'], "set mode to 'rank_and_channels'"),
    Case("channels-fraction-above-one", [*RUN, "--set", 'bootstrapNAS.elasticity.channels={"fractions": [1.0, 1.5]}'], "must be a non-empty list in (0, 1]"),
    Case("channels-and-fractions", [*RUN, "--set", 'bootstrapNAS.elasticity.channels={"fractions": [1.0], "channels": [64]}'], "not both"),
    Case("channels-off-step", [*TRAIN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", 'bootstrapNAS.elasticity.channels={"fractions": [1.0, 0.7]}'], "not multiples of channel_step=8"),
    Case("channels-wider-than-mlp", [*TRAIN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", 'bootstrapNAS.elasticity.channels={"channels": [1024]}'], "exceed the layer's"),
    Case("channels-order-unknown", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", 'bootstrapNAS.elasticity.channels={"order": "random"}'], "bootstrapNAS.elasticity.channels.order"),
    Case("heads-without-mode-b", [*RUN, "--set", 'bootstrapNAS.elasticity.heads={"kv_groups": [2, 1]}'], "to make the attention heads elastic"),
    Case("heads-kv-groups-repeat", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", 'bootstrapNAS.elasticity.heads={"kv_groups": [1, 1]}'], "bootstrapNAS.elasticity.heads.kv_groups"),
    Case("heads-kv-groups-above-model", [*TRAIN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", 'bootstrapNAS.elasticity.heads={"kv_groups": [3, 2]}'], "[3] exceed the model's 2 key-value heads"),
    Case("heads-order-unknown", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", 'bootstrapNAS.elasticity.heads={"kv_groups": [2, 1], "order": "random"}'], "bootstrapNAS.elasticity.heads.order"),
    Case("heads-qa-cut-int4-groups", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft", "--set", "sparsity.method=none", "--set", "quantization.group_size=64", "--set", 'bootstrapNAS.elasticity.channels={"channels": [128, 64]}', "--set", 'bootstrapNAS.elasticity.heads={"kv_groups": [2, 1]}'], "[1] KV groups ([32] input channels) of model.layers.0.self_attn.o_proj are not multiples of its INT4 group size 64"),
    Case("per-layer-widths-wrong", [*EVAL, "--model", "{ws}/model_per_layer_wrong"], "model_per_layer_wrong"),
    Case("mode-b-with-sparsepeft", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", "bootstrapNAS.training.adapter_kind=sparsepeft"], "set adapter_kind to one of those"),
    Case("mode-b-with-fq-sparsepeft", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", "sparsity.method=none", "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=fq_sparsepeft"], "a LoNAS base is dense: no zeros for a mask to keep"),
    Case("mode-b-on-int4-base", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4"], "could not merge into the INT4 codes"),
    Case("mode-b-qa-widths-cut-int4-groups", [*RUN, "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft", "--set", "sparsity.method=none", "--set", "quantization.group_size=32", "--set", "bootstrapNAS.elasticity.channels={\"channels\": [64, 40]}"], "are not multiples of its INT4 group size 32"),
    Case("reorder-model-missing", [*REORDER, "--model", "{ws}/no_model"], "no_model"),
    Case("reorder-calibration-task-unknown", [*REORDER, "--model", "{ws}/model", "--set", "bootstrapNAS.elasticity.mode=\"rank_and_channels\"", "--set", 'bootstrapNAS.elasticity.channels={"calibration": {"task": "no_such_task"}}'], "no_such_task"),
    Case("reorder-output-is-model", [*REORDER, "--model", "{ws}/model", "--overwrite"], "is the input", output="model"),
    Case("extract-adapter-missing", [*EXTRACT, "--super-adapter", "{ws}/no_adapter"], "not a super-adapter folder"),
    Case("extract-adapter-wrong-base", [*EXTRACT, "--super-adapter", "{ws}/super_wide"], "does not fit the base model"),
    Case("extract-subnet-unknown-name", [*EXTRACT, "--super-adapter", "{ws}/super", "--subnet", "middle"], "not 'heuristic', 'maximal' or 'minimal'"),
    Case("extract-subnet-not-a-subnet", [*EXTRACT, "--super-adapter", "{ws}/super", "--subnet", "{ws}/tiny.json"], "is not a sub-network of this super-adapter"),
    Case("extract-subnet-half-width", [*EXTRACT, "--super-adapter", "{ws}/super", "--subnet", "{ws}/subnet_half.json"], "is 4.5, expected an integer"),
    Case("extract-subnet-string-width", [*EXTRACT, "--super-adapter", "{ws}/super", "--subnet", "{ws}/subnet_string.json"], "is '4', expected an integer"),
    Case("latency-mode-a", ["latency", "--config", "{ws}/tiny.json", "--model", "{ws}/model"], "set bootstrapNAS.elasticity.mode to 'rank_and_channels'"),
    Case("latency-model-missing", ["latency", "--config", "{ws}/tiny.json", "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--model", "{ws}/no_model"], "no_model"),
    Case("latency-cost-in-mode-a", [*SEARCH, "--super-adapter", "{ws}/super", "--set", "bootstrapNAS.search.cost=latency"], "bootstrapNAS.search.cost 'latency' needs bootstrapNAS.elasticity.mode"),
    Case("search-latency-model-without-cost", [*SEARCH, "--super-adapter", "{ws}/super", "--latency-model", "{ws}/plainfile"], "--latency-model is given but bootstrapNAS.search.cost is 'params'"),
    Case("search-latency-model-missing", [*SEARCH, "--super-adapter", "{ws}/super", "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--set", "bootstrapNAS.search.cost=latency", "--latency-model", "{ws}/no_latency"], "no latency model at"),
    Case("search-latency-model-not-ours", [*SEARCH, "--super-adapter", "{ws}/super", "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--set", "bootstrapNAS.search.cost=latency", "--latency-model", "{ws}/records.json"], "is not a latency model written by this package"),
    Case("search-latency-model-other-mlps", [*SEARCH, "--super-adapter", "{ws}/super", "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--set", "bootstrapNAS.search.cost=latency", "--latency-model", "{ws}/latency_other.json", "--overwrite"], "measured on MLPs of other names or sizes", output="project"),
    *[
        Case(f"search-latency-{name}", [*SEARCH, "--super-adapter", "{ws}/super", "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--set", "bootstrapNAS.search.cost=latency", "--latency-model", f"{{ws}}/latency_{name}.json"], expect)
        for name, (_, expect) in LATENCY_DAMAGE.items()
    ],
    Case("latency-holdout-negative", ["latency", "--config", "{ws}/tiny.json", "--model", "{ws}/model", "--set", "bootstrapNAS.search.latency={\"holdout\": -1}"], "bootstrapNAS.search.latency.holdout"),
    Case("latency-cost-one-width", [*RUN, "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--set", "bootstrapNAS.search.cost=latency", "--set", "bootstrapNAS.elasticity.channels={\"fractions\": [0.5]}"], "give at least two"),
    Case("search-latency-cost-without-model", [*SEARCH, "--super-adapter", "{ws}/super", "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--set", "bootstrapNAS.search.cost=latency"], "needs a latency model"),
    Case("extract-output-is-adapter", [*EXTRACT, "--super-adapter", "{ws}/super", "--overwrite"], "is the input", output="super"),
    Case("adapter-kind-unknown", [*RUN, "--set", "bootstrapNAS.training.adapter_kind=dora"], "bootstrapNAS.training.adapter_kind"),
    Case("qa-without-int4-base", [*RUN, "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft"], "set quantization.weight_format to 'int4'"),
    Case("fq-lora-without-int4-base", [*RUN, "--set", "bootstrapNAS.training.adapter_kind=fq_lora"], "'fq_lora' trains through an INT4 base's scales: set quantization.weight_format to 'int4'"),
    Case("fq-lora-dropout", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=fq_lora", "--set", "bootstrapNAS.training.lora_dropout=0.1"], "lora_dropout"),
    Case("mode-b-fq-lora-widths-cut-int4-groups", [*RUN, "--set", "bootstrapNAS.elasticity.mode=rank_and_channels", "--set", "sparsity.method=none", "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=fq_lora", "--set", "quantization.group_size=32", "--set", "bootstrapNAS.elasticity.channels={\"channels\": [64, 40]}"], "are not multiples of its INT4 group size 32"),
    Case("quantizer-lr-ratio-without-fq-lora", [*RUN, "--set", "bootstrapNAS.training.quantizer_lr_ratio=0.5"], "only 'fq_lora' and 'fq_sparsepeft' train their quantisers' ranges"),
    Case("fq-sparsepeft-without-int4", [*RUN, "--set", "bootstrapNAS.training.adapter_kind=fq_sparsepeft"], "bootstrapNAS.training.adapter_kind: 'fq_sparsepeft' trains through an INT4 base's scales"),
    Case("qa-base-weight-without-qa", [*RUN, "--set", "bootstrapNAS.training.qa_base_weight=float"], "bootstrapNAS.training.qa_base_weight: 'float' applies to adapter_kind 'qa_sparsepeft' only"),
    Case("qa-base-weight-unknown", [*RUN, "--set", "bootstrapNAS.training.qa_base_weight=int4"], "bootstrapNAS.training.qa_base_weight: got \"int4\"; Input should be 'dequantized' or 'float'"),
    Case("fq-lora-awq-base", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=fq_lora", "--set", "quantization.awq=true"], "quantization.awq: 'fq_lora' trains on the float weights"),
    Case("qa-float-awq-base", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft", "--set", "bootstrapNAS.training.qa_base_weight=float", "--set", "quantization.awq=true"], "or qa_base_weight to 'dequantized'"),
    Case("quantizer-lr-ratio-zero", [*RUN, "--set", "bootstrapNAS.training.quantizer_lr_ratio=0"], "bootstrapNAS.training.quantizer_lr_ratio"),
    Case("sparsepeft-on-int4-base", [*RUN, "--set", "bootstrapNAS.training.adapter_kind=sparsepeft", "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4"], "would undo the INT4 base"),
    Case("int4-base-int8-export", [*RUN, "--set", "quantization.weight_format=int4"], "set export.weight_format to 'int4'"),
    Case("int4-base-merge-lora", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "export.merge_adapter=true"], "merge a dense update into INT4"),
    Case("quantization-format-unknown", [*RUN, "--set", "quantization.weight_format=int3"], "quantization.weight_format"),
    Case("benchmark-no-references", [*RUN, "--set", "benchmark.references=[]"], "references is empty"),
    Case("benchmark-batch-zero", [*RUN, "--set", "benchmark.batch_sizes=[1,0]"], "batch_sizes"),
    Case("benchmark-reference-unknown", [*RUN, "--set", 'benchmark.references=["int3"]'], "benchmark.references"),
    Case("distillation-without-nls", [*RUN, "--set", "bootstrapNAS.training.algorithm=lora", "--set", "bootstrapNAS.training.distillation.enabled=true"], "distillation.enabled"),
    Case("distillation-temperature-zero", [*RUN, "--set", "bootstrapNAS.training.distillation.temperature=0"], "bootstrapNAS.training.distillation.temperature"),
    Case("distillation-weight-above-one", [*RUN, "--set", "bootstrapNAS.training.distillation.weight=1.5"], "bootstrapNAS.training.distillation.weight"),
    Case("distillation-unknown-key", [*RUN, "--set", "bootstrapNAS.training.distillation.alpha=0.5"], "distillation.alpha"),
    Case("qa-dropout", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft", "--set", "bootstrapNAS.training.lora_dropout=0.1"], "lora_dropout"),
    Case("qa-bf16", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft", "--set", "model.dtype=bfloat16"], "must train in float32"),
    Case("qa-adapts-unquantized-layer", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft", "--set", 'quantization.target_modules=["q_proj"]'], "leaves in full precision"),
    Case("int4-base-export-awq", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "export.awq=true", "--set", "export.merge_adapter=true", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft"], "export compression options do not apply"),
    Case("int4-model-quantized-again", [*RUN, "--model", "{ws}/sparse_int4", "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4"], "already an INT4 checkpoint"),
    Case("int4-model-benchmark", [*RUN, "--model", "{ws}/sparse_int4", "--set", "export.weight_format=int4"], "no dense model"),
    Case("quantization-fallback-unknown", [*RUN, "--set", "quantization.group_size_fallback=shrink"], "quantization.group_size_fallback"),
    Case("quantization-calibration-task-unknown", [*RUN, "--set", "quantization.weight_format=int4", "--set", "export.weight_format=int4", "--set", "quantization.awq=true", "--set", "quantization.calibration.task=nonsense"], "nonsense"),
    Case("benchmark-new-tokens-one", [*RUN, "--set", "benchmark.new_tokens=1"], "benchmark.new_tokens"),
    Case("export-int4-codes-corrupt", [*EXPORT[:3], "--model", "{ws}/int4_corrupt", "--weight-format", "int4"], "quantized_weights.safetensors"),
    # damaged INT4 checkpoints, wherever they are read: export, QA training, merge
    Case("int4-json-cut-export", [*EXPORT[:3], "--model", "{ws}/int4_json_cut", "--weight-format", "int4"], "quantization.json is not valid JSON"),
    Case("int4-bits-8-train", [*TRAIN[:3], "--model", "{ws}/int4_bits_8", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft"], "bits is 8, expected 4"),
    Case("int4-group-string-merge", [*MERGE, "--model", "{ws}/int4_group_string", "--adapter", "{ws}/qa_sparsepeft_sub"], "is '32', expected a positive integer"),
    Case("int4-group-inf-export", [*EXPORT[:3], "--model", "{ws}/int4_group_inf", "--weight-format", "int4"], "is inf, expected a positive integer"),
    Case("int4-scales-sha-merge", [*MERGE, "--model", "{ws}/int4_scales_sha_other", "--adapter", "{ws}/qa_sparsepeft_sub"], "do not match scales_sha256"),
    Case("int4-module-unknown-export", [*EXPORT[:3], "--model", "{ws}/int4_module_unknown", "--weight-format", "int4"], "model.layers.9.mlp.up_proj"),
    Case("int4-codes-cut-merge", [*MERGE, "--model", "{ws}/int4_codes_cut", "--adapter", "{ws}/qa_sparsepeft_sub"], "quantized_weights.safetensors"),
    Case("int4-json-missing-train", [*TRAIN[:3], "--model", "{ws}/int4_no_json", "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft"], "quantization.json is missing"),
    Case("merge-record-corrupt", [*MERGE, "--model", "{ws}/sparse", "--adapter", "{ws}/sub_bad_record"], "elastic_lora_sub.json"),
    # an adapter recorded for another base is refused wherever it meets one
    Case("genai-adapter-missing", ["export-genai", *EXPORT[1:], "--adapter", "a={ws}/no_adapter"], "does not exist"),
    Case("genai-adapter-sparsepeft", ["export-genai", *EXPORT[1:3], "--model", "{ws}/sparse", "--adapter", "{ws}/sparsepeft_sub"], "merge it into the base"),
    Case("genai-adapter-other-base", ["export-genai", *EXPORT[1:3], "--model", "{ws}/model", "--adapter", "{ws}/super_wide_sub"], "does not fit the base model"),
    Case("genai-adapter-twice", ["export-genai", *EXPORT[1:], "--adapter", "a={ws}/super_sub", "--adapter", "a={ws}/super_sub"], "given twice"),
    Case("export-adapter-other-base", [*EXPORT[:3], "--model", "{ws}/sparse_other", "--adapter", "{ws}/sparsepeft_sub"], "trained on another base"),
    Case("eval-adapter-other-base", [*EVAL, "--model", "{ws}/sparse_other", "--adapter", "{ws}/sparsepeft_sub"], "trained on another base"),
    Case("extract-super-other-base", [*EXTRACT, "--super-adapter", "{ws}/super_other_base"], "trained on another base"),
    Case("eval-adapter-on-ir", [*EVAL, "--model", "{ws}/ir_overflow", "--adapter", "{ws}/sparsepeft_sub"], "is an OpenVINO IR"),
    Case("eval-adapter-missing", [*EVAL, "--model", "{ws}/sparse", "--adapter", "{ws}/no_adapter"], "no_adapter"),
    Case("eval-adapter-wrong-shape", [*EVAL, "--model", "{ws}/model", "--adapter", "{ws}/super_wide_sub"], "does not fit the base model"),
    Case("eval-adapter-output-is-adapter", [*EVAL, "--model", "{ws}/sparse", "--adapter", "{ws}/sparsepeft_sub", "--overwrite"], "is the input", output="sparsepeft_sub"),
    # INT4 checkpoints are never re-quantized, pruned or reordered (their codes could not be kept)
    Case("quantize-int4-base", [*QUANTIZE[:3], "--model", "{ws}/sparse_int4"], "is an INT4 checkpoint"),
    Case("quantize-merged-int4", [*QUANTIZE[:3], "--model", "{ws}/merged_int4", "--group-size", "16"], "quantizing it again would round"),
    Case("sparsify-int4-base", [*SPARSIFY, "--model", "{ws}/sparse_int4"], "pruning its dequantized weights"),
    Case("reorder-int4-base", [*REORDER, "--model", "{ws}/merged_int4"], "across its INT4 quantization groups"),
    Case("run-prunes-int4-base", [*RUN, "--model", "{ws}/sparse_int4", "--set", "quantization.weight_format=none", "--set", "export.weight_format=int4"], "sparsity.method: "),
    Case("quantize-group-size-zero", [*QUANTIZE, "--group-size", "0"], "quantization.group_size"),
    Case("quantize-group-size-odd", [*QUANTIZE, "--group-size", "48", "--group-size-fallback", "error"], "does not divide the input width"),
    Case("quantize-pattern-nothing", [*QUANTIZE, "--set", 'quantization.target_modules=["nope_proj"]'], "quantization.target_modules"),
    Case("quantize-output-is-model", [*QUANTIZE, "--overwrite"], "is the input", output="model"),
    Case("quantize-model-missing", [*QUANTIZE[:3], "--model", "{ws}/no_such_model"], "no_such_model"),
    Case("train-qa-on-full-precision", [*TRAIN, "--set", "bootstrapNAS.training.adapter_kind=qa_sparsepeft"], "holds no quantized_weights.safetensors"),
    Case("merge-record-scaling-inf", [*MERGE, "--model", "{ws}/sparse", "--adapter", "{ws}/sub_scaling_inf"], "scaling is inf, expected a finite number > 0"),
    Case("merge-plain-lora", [*MERGE, "--model", "{ws}/model", "--adapter", "{ws}/super_sub"], "plain lora adapter"),
    Case("merge-other-base", [*MERGE, "--model", "{ws}/sparse_other", "--adapter", "{ws}/sparsepeft_sub"], "trained on another base"),
    Case("merge-qa-other-scales", [*MERGE, "--model", "{ws}/sparse_other_int4", "--adapter", "{ws}/qa_sparsepeft_sub"], "other INT4 scales"),
    Case("merge-qa-no-int4-base", [*MERGE, "--model", "{ws}/sparse", "--adapter", "{ws}/qa_sparsepeft_sub"], "needs the INT4 base"),
    Case("merge-adapter-wrong-shape", [*MERGE, "--model", "{ws}/sparse", "--adapter", "{ws}/super_wide_sub"], "does not fit the base model"),
    Case("merge-adapter-missing", [*MERGE, "--model", "{ws}/sparse", "--adapter", "{ws}/no_adapter"], "no_adapter"),
    Case("merge-output-is-adapter", [*MERGE, "--model", "{ws}/sparse", "--adapter", "{ws}/sparsepeft_sub", "--overwrite"], "is the input", output="sparsepeft_sub"),
    Case("merge-export-output-is-model", [*MERGE, "--model", "{ws}/sparse", "--adapter", "{ws}/sparsepeft_sub", "--export-to", "{ws}/sparse", "--overwrite"], "is the input"),
    Case("export-int4-base-as-int8", [*EXPORT[:3], "--model", "{ws}/sparse_int4", "--weight-format", "int8"], "int4"),
    Case("export-int4-base-merge", [*EXPORT[:3], "--model", "{ws}/sparse_int4", "--weight-format", "int4", "--adapter", "{ws}/qa_sparsepeft_sub", "--merge"], "QA-SparsePEFT"),
    # schema
    Case("schema-output-below-file", ["schema"], "lies below the file", output="plainfile/schema.json"),
]  # fmt: skip


# Accepted, with a WARNING naming the risk: an adapter that records no base cannot be checked against one.
UNRECORDED = {
    "merge": [*MERGE, "--model", "{ws}/sparse_other", "--adapter", "{ws}/sparsepeft_no_base_record"],
    "eval": [*EVAL, "--model", "{ws}/sparse_other", "--adapter", "{ws}/sparsepeft_no_base_record"],
    "extract": [*EXTRACT, "--super-adapter", "{ws}/super", "--subnet", "{ws}/subnet_floats.json"],  # 4.0 is 4
}


@pytest.mark.parametrize("verb", UNRECORDED)
def test_adapter_without_base_record_is_accepted_with_a_warning(verb: str, ws: Path, tmp_path, caplog):
    argv = [a.replace("{ws}", str(ws)) for a in UNRECORDED[verb]] + ["--output", str(tmp_path / "out"), *FAST]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    warned = [r.getMessage() for r in caplog.records if "records no base model" in r.getMessage()]
    assert len(warned) == 1 and "gives a wrong model" in warned[0], caplog.text


def _snapshot(root: Path, skip: Path | None) -> dict[str, str]:
    """Every file under ``root`` (except ``skip``) with a digest of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def test_the_campaign_is_large_and_covers_every_verb():
    assert len(CASES) >= 40
    assert {c.argv[0] for c in CASES} >= {
        "run",
        "sparsify",
        "train",
        "search",
        "eval",
        "export",
        "export-genai",
        "benchmark",
        "schema",
        "quantize",
        "merge",
        "reorder",
        "extract",
        "latency",
    }
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case: Case, ws: Path, capsys):
    output = (ws / case.output).resolve()
    existed = output.exists()
    argv = [a.replace("{ws}", str(ws)) for a in case.argv] + ["--output", str(output)]
    if case.argv[0] not in ("benchmark", "schema"):
        argv += FAST
    before = _snapshot(ws, None if existed else output)
    try:
        if case.hold_lock:
            with output_lock(output):
                code = main(argv)
        else:
            code = main(argv)
    finally:
        left = output.exists() and not existed
        if left:  # checked below; removed so that it cannot spoil the cases after this one
            shutil.rmtree(output) if output.is_dir() else output.unlink()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert case.expect in err, err
    assert _snapshot(ws, None if existed else output) == before  # nothing outside our outputs changed
    assert not left, f"{output} left behind"  # no output after a failure


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--output", "x", "--split", "bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --split: invalid choice" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["qa_sparsepeft", "lora"])
def test_eval_adapter_scores_what_ships(kind: str, ws: Path, tmp_path):
    """``eval --adapter`` scores a QA sub-adapter as ``merge`` ships it, a LoRA as the unmerged peft model."""
    if kind == "qa_sparsepeft":
        base, adapter = ws / "sparse_int4", ws / "qa_sparsepeft_sub"
    else:  # the saved LoRA's B is zero (as attached): give it an update to see
        from safetensors.torch import load_file, save_file

        base, adapter = ws / "model", shutil.copytree(ws / "super_sub", tmp_path / "lora")
        state = load_file(adapter / "adapter_model.safetensors")
        save_file({k: v + 0.05 if "lora_B" in k else v for k, v in state.items()}, adapter / "adapter_model.safetensors")
    runs = {"adapter": ["--model", str(base), "--adapter", str(adapter)]}
    if kind == "qa_sparsepeft":
        runs["shipped"] = ["--model", str(ws / "merged_int4")]
    else:
        runs["base"] = ["--model", str(base)]
    logliks = {}
    for name, extra in runs.items():
        assert main(["eval", "--config", str(ws / "tiny.json"), *extra, "--output", str(tmp_path / name), *FAST]) == 0
        rows = [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        logliks[name] = [ll for r in rows for ll in r.get("loglik", [])]
    assert logliks["adapter"]
    if kind == "qa_sparsepeft":
        assert logliks["adapter"] == pytest.approx(logliks["shipped"], abs=1e-4)
    else:  # the adapter changes the scores (its B is random, not zero)
        assert logliks["adapter"] != pytest.approx(logliks["base"], abs=1e-4)
