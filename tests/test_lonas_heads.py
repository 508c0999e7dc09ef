"""LoNAS Mode B, attention: whole KV groups ordered, masked, extracted; GQA is never split."""

import json
from pathlib import Path

import pytest
import torch

from nncf_elastic_lora.config import (
    ChannelElasticityConfig,
    HeadElasticityConfig,
    ModelConfig,
    TinyModelConfig,
)
from nncf_elastic_lora.elastic.channels import input_sq_sums
from nncf_elastic_lora.elastic.heads import (
    attentions,
    kv_group_importance,
    order_kv_groups,
    permute_kv_groups,
    set_kv_groups,
)
from nncf_elastic_lora.models import build_tiny_llama

from .helpers import assert_export_matches_torch, calibration_ids, model_logits

# The tiny LoNAS config (4 query heads, 2 KV heads of 16 dims) with its heads elastic.
TINY_LONAS_HEADS = (
    *("--config", str(Path(__file__).parent.parent / "configs" / "tiny_lonas.json"), "--no-progress"),
    *("--set", 'bootstrapNAS.elasticity.heads={"kv_groups": [2, 1]}'),
)

# 6 query heads sharing 3 KV heads (2 per group), head dim 8.
GQA = ModelConfig(
    name_or_path="tiny-random-llama",
    tiny=TinyModelConfig(hidden_size=48, intermediate_size=64, num_attention_heads=6, num_key_value_heads=3),
)


def _model():
    return build_tiny_llama(GQA).eval()


def test_attentions_read_the_gqa_layout():
    atts = attentions(_model())
    assert len(atts) == 2
    a = atts[0]
    assert (a.num_heads, a.num_kv_heads, a.head_dim, a.queries_per_group, a.channels_per_group) == (
        6,
        3,
        8,
        2,
        16,
    )
    assert a.q_rows([2]).tolist() == list(range(32, 48)) and a.kv_rows([2]).tolist() == list(range(16, 24))


def test_kv_group_permutation_leaves_the_logits_unchanged():
    model = _model()
    before = model_logits(model)
    for a, order in zip(attentions(model), ([2, 0, 1], [1, 2, 0]), strict=True):
        permute_kv_groups(model, a, order)
    torch.testing.assert_close(model_logits(model), before, atol=1e-5, rtol=0)


def test_a_permutation_that_is_not_one_of_whole_groups_is_refused():
    model = _model()
    with pytest.raises(ValueError, match=r"\[0, 0, 1\] is not a permutation of its 3 KV groups"):
        permute_kv_groups(model, attentions(model)[0], [0, 0, 1])


def test_importance_ordering_of_kv_groups_keeps_the_function():
    model = _model()
    before = model_logits(model)
    report = order_kv_groups(model, calibration_ids(), (2, 1))
    torch.testing.assert_close(model_logits(model), before, atol=1e-5, rtol=0)
    assert report.fractions == [2 / 3, 1 / 3]
    # Scored again, every layer's groups now come most important first (and they did not before).
    atts = attentions(model)
    sums = input_sq_sums(model, [a.o for a in atts], calibration_ids())
    for a, sq in zip(atts, sums, strict=True):
        score = kv_group_importance(model.get_submodule(a.o).weight, sq, a)
        assert torch.all(score[:-1] >= score[1:] * (1 - 1e-6)), score
    assert report.kept_original != report.kept_ordered  # the checkpoint's order was not already sorted


def test_an_attention_with_weights_spanning_its_heads_is_refused():
    model = _model()
    attn = model.model.layers[1].self_attn
    attn.q_norm = torch.nn.LayerNorm(8)  # shared by every head (Qwen3): permutations and slices keep it valid
    assert len(attentions(model)) == 2
    attn.k_norm = torch.nn.LayerNorm(24)  # over all 3 KV heads (OLMo-2): a slice would leave it full size
    with pytest.raises(
        ValueError, match=r"model.layers.1.self_attn.k_norm.weight \(\(24,\)\) spans the attention's heads"
    ):
        attentions(model)


def _supernet(model=None, kv_groups=(3, 2, 1), channels=None):
    from nncf_elastic_lora.elastic import ElasticLoraSuperNet

    sn = ElasticLoraSuperNet.attach(
        model or _model(),
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        max_rank=8,
        alpha=16,
        overwrite_groups_widths=None,
        default_widths=[8, 6, 4],
        channels=channels or ChannelElasticityConfig(),
        heads=HeadElasticityConfig(kv_groups=list(kv_groups)),
    )
    gen = torch.Generator().manual_seed(0)
    for a in sn.adapters.values():  # non-zero B so every rank, width and head count changes the output
        a.lora_B.weight.data = torch.randn(a.lora_B.weight.shape, generator=gen) * 0.05
    return sn


def _with(sn, *, kv, widths=(40, 56), rank=6):
    """The configuration with ``kv`` KV groups, these MLP widths and one rank everywhere."""
    widths, config = list(widths), {}
    for g in sn.groups:
        config[g.name] = {"heads": kv, "channels": widths.pop(0) if g.kind == "channels" else None}.get(
            g.kind, rank
        )
    return config


def test_heads_are_one_group_over_every_layer_and_change_the_output():
    sn = _supernet()
    (group,) = [g for g in sn.groups if g.kind == "heads"]
    assert group.name == "attention_kv_groups" and group.widths == (3, 2, 1)
    assert group.modules == ("model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj")
    outputs = []
    for kv in (3, 2, 1):
        sn.activate_config(_with(sn, kv=kv))
        assert sn.kv_groups() == kv == sn.get_active_config()["attention_kv_groups"]
        outputs.append(model_logits(sn.model))
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])
    costs = [sn.get_active_base_params(_with(sn, kv=kv)) for kv in (3, 2, 1)]
    # one KV group of both layers: q (16 rows) + k, v (8 rows each) of 48 inputs, o (16 columns) of 48 outputs
    assert costs[0] - costs[1] == costs[1] - costs[2] == 2 * 48 * (16 + 8 + 8 + 16)


@pytest.mark.parametrize("kv", [3, 2, 1])
def test_extraction_keeps_whole_kv_groups_and_equals_the_super_network(kv, tmp_path):
    from transformers import AutoModelForCausalLM

    from nncf_elastic_lora.extract import extract_subnet

    sn = _supernet()
    merged = {n: m.merged_weight(6).detach().clone() for n, m in sn.adapters.items()}
    config = _with(sn, kv=kv, widths=(48, 48))
    sn.activate_config(config)
    expected = model_logits(sn.model)
    small = extract_subnet(sn, config)
    torch.testing.assert_close(model_logits(small), expected, atol=1e-5, rtol=0)
    assert (small.config.num_attention_heads, small.config.num_key_value_heads, small.config.head_dim) == (
        2 * kv,
        kv,
        8,
    )
    for a in attentions(small):  # every kept query head keeps its KV head: the first kv groups, whole
        assert (a.num_heads, a.num_kv_heads) == (2 * kv, kv)
        q_rows, kv_rows = torch.arange(16 * kv), torch.arange(8 * kv)
        torch.testing.assert_close(small.get_submodule(a.q).weight, merged[a.q][q_rows])
        torch.testing.assert_close(small.get_submodule(a.k).weight, merged[a.k][kv_rows])
        torch.testing.assert_close(small.get_submodule(a.o).weight, merged[a.o][:, q_rows])
    small.save_pretrained(tmp_path / "small")  # a plain config: stock transformers reloads it
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    torch.testing.assert_close(model_logits(plain), expected, atol=1e-5, rtol=0)


def test_set_kv_groups_outside_the_layout_is_refused():
    model = _model()
    with pytest.raises(ValueError, match=r"4 KV groups is outside \[1, 3\]"):
        set_kv_groups(model, 4)


def test_head_group_round_trips_with_the_super_adapter(tmp_path):
    from nncf_elastic_lora.elastic import ElasticLoraSuperNet

    sn = _supernet()
    config = _with(sn, kv=2)
    sn.activate_config(config)
    expected = model_logits(sn.model)
    sn.save_super_adapter(tmp_path / "super")
    sn.save_sub_adapter(tmp_path / "sub", config)
    loaded = ElasticLoraSuperNet.load_super_adapter(_model(), tmp_path / "super")
    assert loaded.get_search_space() == sn.get_search_space()
    loaded.activate_config(config)
    torch.testing.assert_close(model_logits(loaded.model), expected, atol=1e-6, rtol=0)
    record = json.loads((tmp_path / "sub" / "elastic_lora_sub.json").read_text())
    assert (record["kv_groups"], record["kv_heads"]) == (2, 3)
    from nncf_elastic_lora.merge import MergeError, check_not_channel_sliced

    with pytest.raises(MergeError, match="keeps 2 of 3 KV groups per attention"):
        check_not_channel_sliced(tmp_path / "sub")


def test_kv_groups_above_the_model_fail_and_leave_it_untouched():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"kv_groups: \[4\] exceed the model's 3 key-value heads per layer"):
        _supernet(model, (3, 4))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "lora_A") for m in model.modules())


@pytest.mark.parametrize("kv_groups", [[3, 0], [2, 2], []])
def test_kv_group_lists_must_be_distinct_positive_counts(kv_groups):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"must be a non-empty list of distinct positive ints"):
        HeadElasticityConfig(kv_groups=kv_groups)


def test_a_super_adapter_on_a_base_with_other_kv_heads_is_refused(tmp_path):
    from nncf_elastic_lora.elastic import ElasticLoraSuperNet

    _supernet().save_super_adapter(tmp_path / "super")
    spec_file = tmp_path / "super" / "elastic_lora.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "kv_heads": 6}))
    with pytest.raises(ValueError, match="trained with 6 KV heads per attention, this base has 3"):
        ElasticLoraSuperNet.load_super_adapter(_model(), tmp_path / "super")


def test_heads_need_mode_b():
    from nncf_elastic_lora.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"elasticity.heads is set but mode is 'rank'"):
        parse_config({"bootstrapNAS": {"elasticity": {"mode": "rank", "heads": {"kv_groups": [2, 1]}}}})


def test_verbs_reorder_train_extract_export_with_elastic_heads(tmp_path):
    """The CLI on the tiny LoNAS config with heads elastic: ordered, trained, extracted with 1 of 2 KV groups,
    reloaded by stock transformers, exported, and the IR matches torch."""
    from transformers import AutoModelForCausalLM

    from nncf_elastic_lora.cli import main

    common = list(TINY_LONAS_HEADS)
    assert main(["reorder", *common, "--output", str(tmp_path / "ordered")]) == 0
    report = json.loads((tmp_path / "ordered" / "report.json").read_text())
    assert report["max_logit_change"] < 1e-4 and report["head_ordering"]["fractions"] == [0.5]
    assert report["head_ordering"]["kept_ordered"][0] >= report["head_ordering"]["kept_original"][0]
    base = ["--model", str(tmp_path / "ordered")]
    assert main(["train", *common, *base, "--output", str(tmp_path / "nls")]) == 0
    subnet = json.loads((tmp_path / "nls" / "sub_adapter_heuristic" / "subnet_config.json").read_text())
    assert subnet["attention_kv_groups"] == 1  # the middle of [2, 1]
    extract = ["extract", *common, *base, "--super-adapter", str(tmp_path / "nls" / "super_adapter")]
    assert main([*extract, "--output", str(tmp_path / "small")]) == 0
    small = json.loads((tmp_path / "small" / "extract_report.json").read_text())
    assert (small["kv_groups"], small["kv_heads"]) == (1, 2) and small["params"] < small["params_before"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert (plain.config.num_attention_heads, plain.config.num_key_value_heads) == (2, 1)
    assert plain.model.layers[0].self_attn.k_proj.out_features == plain.config.head_dim == 16
    adapter = ["--adapter", str(tmp_path / "nls" / "sub_adapter_heuristic")]
    assert main(["export", *common, *base, *adapter, "--output", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert_export_matches_torch(common, tmp_path / "small", tmp_path / "ir")


def test_heads_on_an_int4_base_extract_whole_quantization_groups(tmp_path):
    """LoNAS heads + QA-SparsePEFT: the extracted INT4 model keeps whole KV groups and whole quantization
    groups, its logits are the super-network's, and its IR holds exactly its codes."""
    from nncf_elastic_lora.cli import main
    from nncf_elastic_lora.deploy.ir import check_ir_codes
    from nncf_elastic_lora.extract import slice_quantized
    from nncf_elastic_lora.int4 import load_quantized_weights
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.pipeline import load_supernet

    common = list(TINY_LONAS_HEADS)
    common += ["--set", "quantization.weight_format=int4", "--set", "quantization.group_size=32"]
    common += [
        "--set",
        "bootstrapNAS.training.adapter_kind=qa_sparsepeft",
        "--set",
        "export.weight_format=int4",
    ]
    common += ["--set", 'bootstrapNAS.elasticity.channels={"channels": [128, 64], "channel_step": 32}']
    assert main(["quantize", *common, "--output", str(tmp_path / "int4")]) == 0
    base = ["--model", str(tmp_path / "int4")]
    assert main(["train", *common, *base, "--output", str(tmp_path / "nls")]) == 0
    super_adapter = tmp_path / "nls" / "super_adapter"
    assert (
        main(
            [
                "extract",
                *common,
                *base,
                "--super-adapter",
                str(super_adapter),
                "--output",
                str(tmp_path / "small"),
            ]
        )
        == 0
    )
    codes, before = load_quantized_weights(tmp_path / "small"), load_quantized_weights(tmp_path / "int4")
    o, k = "model.layers.0.self_attn.o_proj", "model.layers.0.self_attn.k_proj"
    assert (
        codes[o].codes.shape == (64, 32)
        and codes[o].scale.shape == (64, 1)
        and codes[k].codes.shape == (16, 64)
    )
    assert torch.equal(codes[o].scale, slice_quantized(before[o], cols=32).scale)  # the base's grid, sliced
    supernet, _ = load_supernet(ModelConfig(name_or_path=str(tmp_path / "int4")), super_adapter)
    supernet.activate_heuristic_subnet()
    small, _ = load_model(ModelConfig(name_or_path=str(tmp_path / "small")))
    assert small.config.num_key_value_heads == 1
    torch.testing.assert_close(model_logits(small), model_logits(supernet.model), atol=1e-5, rtol=0)
    assert (
        main(["export", *common, "--model", str(tmp_path / "small"), "--output", str(tmp_path / "ir")]) == 0
    )
    check_ir_codes(tmp_path / "ir" / "openvino_model.xml", codes)  # raises on any differing code


def test_an_architecture_that_ignores_head_dim_is_refused(monkeypatch):
    import copy

    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_config

    def ignoring_head_dim(config, **kwargs):  # as an architecture computing hidden_size / num_attention_heads
        config = copy.deepcopy(config)
        config.head_dim = config.hidden_size // config.num_attention_heads
        return real(config, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", ignoring_head_dim)
    with pytest.raises(ValueError, match=r"does not read head_dim from its config"):
        set_kv_groups(_model(), 2)


def test_bench_lonas_order_refuses_bad_kv_group_counts():
    """`bench/lonas_order.py --kv-groups`: a bad list is one argparse error line, before any model is read."""
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "bench" / "lonas_order.py"
    results = script.parent / "results"
    before = {p: p.stat().st_mtime_ns for p in results.glob("lonas_order*")}
    done = subprocess.run(
        [sys.executable, str(script), "--kv-groups", "2,x"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("argument --kv-groups: '2,x' is not a comma-separated list of positive integers")
    )
    assert {p: p.stat().st_mtime_ns for p in results.glob("lonas_order*")} == before
