"""LoNAS Mode B on tiny models: channel order, elastic MLP widths, extraction of a smaller model."""

from pathlib import Path

import pytest
import torch

from nncf_elastic_lora.elastic.channels import (
    ChannelMask,
    gated_mlps,
    order_mlp_channels,
    permute_mlp,
    slice_mlp,
)
from nncf_elastic_lora.models import build_tiny_llama

from .conftest import TINY
from .helpers import (
    EXAMPLES,
    QKV_UP_DOWN,
    TARGETS,
    assert_export_matches_torch,
    calibration_ids,
    model_logits,
    training_config,
)


def test_channel_permutation_leaves_the_logits_unchanged():
    model = build_tiny_llama(TINY).eval()
    before = model_logits(model)
    for m in gated_mlps(model):
        permute_mlp(model, m, torch.randperm(64, generator=torch.Generator().manual_seed(m.layer)))
    torch.testing.assert_close(model_logits(model), before, atol=1e-5, rtol=0)


def test_importance_ordering_keeps_the_function_and_puts_important_channels_first():
    model = build_tiny_llama(TINY).eval()
    before = model_logits(model)
    report = order_mlp_channels(model, calibration_ids())
    torch.testing.assert_close(model_logits(model), before, atol=1e-5, rtol=0)
    # Every prefix keeps at least the importance of the same prefix in the original order.
    for ordered, original in zip(report.kept_ordered, report.kept_original, strict=True):
        assert ordered >= original
    assert report.kept_ordered[-1] > report.kept_original[-1]  # half the channels: strictly more


def test_masked_width_equals_the_sliced_mlp():
    masked, sliced = build_tiny_llama(TINY).eval(), build_tiny_llama(TINY).eval()
    widths = [40, 24]
    for m, w in zip(gated_mlps(masked), widths, strict=True):
        mask = ChannelMask(masked.get_submodule(m.down), 64)
        mask.set_width(w)
    for m, w in zip(gated_mlps(sliced), widths, strict=True):
        slice_mlp(sliced, m, w)
    assert [sliced.get_submodule(m.down).in_features for m in gated_mlps(sliced)] == widths
    torch.testing.assert_close(model_logits(sliced), model_logits(masked), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in masked.parameters())


@pytest.mark.parametrize("rows,cols", [(None, 3), (5, None), (4, 2), (None, 7)])
def test_sliced_linear_reuses_the_weights_storage(rows, cols):
    from nncf_elastic_lora.elastic.channels import sliced_linear

    linear = torch.nn.Linear(7, 9)
    want = linear.weight.data[:rows, :cols].clone()
    ptr = linear.weight.data_ptr()
    out = sliced_linear(linear, rows=rows, cols=cols)
    # The slice, moved to the front of the old storage: no second copy of a model's MLPs.
    assert torch.equal(out.weight, want) and out.weight.is_contiguous() and out.weight.data_ptr() == ptr
    assert (out.in_features, out.out_features) == (want.shape[1], want.shape[0])
    assert out.bias.shape == (want.shape[0],)


def test_mask_width_outside_the_mlp_is_refused():
    model = build_tiny_llama(TINY)
    mask = ChannelMask(model.get_submodule(gated_mlps(model)[0].down), 64)
    with pytest.raises(ValueError, match=r"width 65 is outside \[1, 64\]"):
        mask.set_width(65)


# ---------------------------------------------------------------------- Mode B super-network and extraction


def _mode_b(model=None, channels=None):
    from nncf_elastic_lora.config import ChannelElasticityConfig
    from nncf_elastic_lora.elastic import ElasticLoraSuperNet

    sn = ElasticLoraSuperNet.attach(
        model or build_tiny_llama(TINY).eval(),
        target_modules=TARGETS,
        max_rank=8,
        alpha=16,
        overwrite_groups=QKV_UP_DOWN,
        overwrite_groups_widths=[[8, 6, 4]] * 3,
        channels=channels or ChannelElasticityConfig(),
    )
    gen = torch.Generator().manual_seed(0)
    for a in sn.adapters.values():  # non-zero B so every rank and width changes the output
        a.lora_B.weight.data = torch.randn(a.lora_B.weight.shape, generator=gen) * 0.05
    return sn


def _config(sn, ranks, widths):
    config = {}
    for g in sn.groups:
        config[g.name] = widths.pop(0) if g.kind == "channels" else ranks
    return config


def test_mode_b_adds_one_channel_group_per_layer_with_the_configured_widths():
    sn = _mode_b()
    channel_groups = [g for g in sn.groups if g.kind == "channels"]
    assert [g.name for g in channel_groups] == ["mlp_channels[0]", "mlp_channels[1]"]
    assert all(g.widths == (64, 56, 48, 40, 32) for g in channel_groups)  # 100 % .. 50 % of 64
    maximal, minimal = sn.get_macs_for_active_config(sn.get_maximal_config(), include_base=True), None
    minimal = sn.get_macs_for_active_config(sn.get_minimal_config(), include_base=True)
    assert minimal < maximal
    sn.activate_config(_config(sn, 6, [40, 56]))
    assert (
        sn.get_active_config()["mlp_channels[0]"] == 40
        and sn.mlp_widths()[sn.mlps[next(iter(sn.mlps))].down] == 40
    )


@pytest.mark.parametrize(("widths", "ranks"), [([40, 56], 6), ([48, 48], 8), ([32, 32], 4)])
def test_extracted_subnet_equals_the_super_network_at_that_configuration(widths, ranks, tmp_path):
    from transformers import AutoModelForCausalLM

    from nncf_elastic_lora.config import ModelConfig
    from nncf_elastic_lora.extract import extract_subnet
    from nncf_elastic_lora.formats import PER_LAYER_KEY
    from nncf_elastic_lora.models import load_model

    sn = _mode_b()
    config = _config(sn, ranks, list(widths))
    sn.activate_config(config)
    expected = model_logits(sn.model)
    small = extract_subnet(sn, config)
    torch.testing.assert_close(model_logits(small), expected, atol=1e-5, rtol=0)
    assert [small.get_submodule(m.down).in_features for m in gated_mlps(small)] == widths
    small.save_pretrained(tmp_path / "small")
    reloaded, _ = load_model(ModelConfig(name_or_path=str(tmp_path / "small")))
    torch.testing.assert_close(model_logits(reloaded), expected, atol=1e-5, rtol=0)
    per_layer = getattr(reloaded.config, PER_LAYER_KEY, None)
    if len(set(widths)) == 1:  # a plain checkpoint: stock transformers loads it
        assert per_layer is None and reloaded.config.intermediate_size == widths[0]
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
        torch.testing.assert_close(model_logits(plain), expected, atol=1e-5, rtol=0)
    else:
        assert per_layer == widths and reloaded.config.intermediate_size == max(widths)


def test_mode_b_super_adapter_round_trip_keeps_the_channel_groups(tmp_path):
    from nncf_elastic_lora.elastic import ElasticLoraSuperNet

    sn = _mode_b()
    config = _config(sn, 6, [40, 56])
    sn.activate_config(config)
    expected = model_logits(sn.model)
    sn.save_super_adapter(tmp_path / "super")
    loaded = ElasticLoraSuperNet.load_super_adapter(build_tiny_llama(TINY).eval(), tmp_path / "super")
    assert loaded.get_search_space() == sn.get_search_space()
    loaded.activate_config(config)
    torch.testing.assert_close(model_logits(loaded.model), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": [64, 72]}, r"widths \[72\] exceed the layer's 64 intermediate channels"),
        ({"fractions": [1.0, 0.7]}, r"widths \[45\] \(of 64 channels\) are not multiples of channel_step=8"),
        ({"channels": [64, 30], "channel_step": 2}, None),
    ],
)
def test_bad_channel_widths_fail_naming_them(kwargs, message):
    from nncf_elastic_lora.config import ChannelElasticityConfig

    model = build_tiny_llama(TINY).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if message is None:
        _mode_b(model, ChannelElasticityConfig(**kwargs))
        return
    with pytest.raises(ValueError, match=message):
        _mode_b(model, ChannelElasticityConfig(**kwargs))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "lora_A") for m in model.modules())  # the model was not touched


def test_nls_trains_mode_b_sampling_widths_and_ranks(tmp_path, tokenizer):
    from nncf_elastic_lora.training import train_super_adapter

    sn = _mode_b()
    before = {k: v.clone() for k, v in sn.adapter_state_dict().items()}
    result, nls = train_super_adapter(
        sn, tokenizer, EXAMPLES, training_config(max_steps=6), tmp_path, progress=False
    )
    assert result.steps == 6 and all(loss == loss for loss in result.losses)
    channel_slots = [i for i, g in enumerate(sn.groups) if g.kind == "channels"]
    sampled = {tuple(widths[i] for i in channel_slots) for _, widths in nls.steps}
    assert len(sampled) > 1  # the MLP widths changed between steps
    assert any(not torch.equal(v, before[k]) for k, v in sn.adapter_state_dict().items())
    assert sn.get_active_config() == sn.get_maximal_config()


def test_verbs_reorder_train_extract_export_a_smaller_model(tmp_path):
    """The CLI path on the tiny config: the extracted checkpoint is smaller, reloads, and its IR matches torch."""
    import json

    from nncf_elastic_lora.cli import main
    from nncf_elastic_lora.config import ModelConfig
    from nncf_elastic_lora.models import load_model

    config = str(Path(__file__).parent.parent / "configs" / "tiny_lonas.json")
    common = ["--config", config, "--no-progress"]
    assert main(["reorder", *common, "--output", str(tmp_path / "ordered")]) == 0
    report = json.loads((tmp_path / "ordered" / "report.json").read_text())
    assert report["max_logit_change"] < 1e-4 and report["ordering"]["kept_ordered"][-1] > 0.5
    base = ["--model", str(tmp_path / "ordered")]
    assert main(["train", *common, *base, "--output", str(tmp_path / "nls")]) == 0
    subnet = json.loads((tmp_path / "nls" / "sub_adapter_heuristic" / "subnet_config.json").read_text())
    subnet.update({"mlp_channels[0]": 112, "mlp_channels[1]": 80})  # per-layer widths
    (tmp_path / "subnet.json").write_text(json.dumps(subnet))
    extract = ["extract", *common, *base, "--super-adapter", str(tmp_path / "nls" / "super_adapter")]
    assert (
        main([*extract, "--subnet", str(tmp_path / "subnet.json"), "--output", str(tmp_path / "small")]) == 0
    )
    small = json.loads((tmp_path / "small" / "extract_report.json").read_text())
    assert small["mlp_widths"] == [112, 80] and small["params"] < small["params_before"]
    model, _ = load_model(ModelConfig(name_or_path=str(tmp_path / "small")))
    assert [model.get_submodule(m.down).in_features for m in gated_mlps(model)] == [112, 80]
    # The super-adapter on the base before ordering (another base) is refused, writing nothing.
    original = [a for a in extract if a not in base] + ["--model", "tiny-random-llama"]
    assert main([*original, "--output", str(tmp_path / "wrong")]) == 2
    assert not (tmp_path / "wrong").exists()
    # A Mode B sub-adapter is refused as a peft adapter by export and merge; the extracted model exports.
    adapter = ["--adapter", str(tmp_path / "nls" / "sub_adapter_heuristic")]
    assert main(["export", *common, *base, *adapter, "--output", str(tmp_path / "bad")]) == 2
    assert main(["merge", *common, *base, *adapter, "--output", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert_export_matches_torch(common, tmp_path / "small", tmp_path / "ir")


@pytest.mark.parametrize("heads", [False, True], ids=["mlp", "mlp_and_heads"])
def test_run_chains_lonas_to_an_ir_of_the_extracted_model(heads, tmp_path, capsys, monkeypatch):
    """`run` on the tiny config, searching with NSGA-II at cost 'latency': the latency model is fitted on
    exported sub-networks and the search's costs are its predictions; the extracted model is exported.
    With elastic heads the latency model measures a sub-network with fewer KV groups too.

    A tiny model's decode time is all overhead and noise, so the measurement is replaced by one that
    grows with the exported IR's weight bytes (the real measurement is GenAI's, tested in test_benchmark)."""
    import json

    from nncf_elastic_lora import latency as latency_module
    from nncf_elastic_lora.cli import main
    from nncf_elastic_lora.deploy.benchmark import weights_bytes
    from nncf_elastic_lora.latency import LatencyModel

    measured = []

    def by_bytes(ir, **_):
        measured.append(weights_bytes(ir))
        return 1.0 + weights_bytes(ir) / 1e6

    monkeypatch.setattr(latency_module, "measure_decode_ms", by_bytes)

    config = str(Path(__file__).parent.parent / "configs" / "tiny_lonas.json")
    out = tmp_path / "run"
    argv = ["run", config, "--output", str(out), "--no-progress"]
    argv += ["--set", "benchmark.enabled=false", "--set", "evaluation.limit=4"]
    argv += ["--set", "bootstrapNAS.elasticity.channels.fractions=[1.0, 0.5]"]
    argv += ["--set", "bootstrapNAS.search.algorithm=NSGA2", "--set", "bootstrapNAS.search.cost=latency"]
    argv += [
        "--set",
        'bootstrapNAS.search.latency={"holdout": 1, "repeats": 1, "new_tokens": 4, "prompt_tokens": 8}',
    ]
    if heads:
        argv += ["--set", 'bootstrapNAS.elasticity.heads={"kv_groups": [2, 1]}']
    else:  # the floor: the cheapest front point at least as good as the plain alternative on validation
        argv += ["--set", "bootstrapNAS.search.select=cheapest_above_plain"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    names = report["stages"]
    assert (
        names.index("reorder") < names.index("train") < names.index("latency_model") < names.index("search")
    )
    assert names.index("search") < names.index("extract") < names.index("export")
    latency = LatencyModel.load(out / "latency_model")
    fits = ["fit", "fit", "fit"] if heads else ["fit", "fit"]
    assert [p.role for p in latency.points] == [*fits, "holdout"]
    assert [p.widths for p in latency.points[:2]] == [[128, 128], [64, 64]]
    assert (
        latency.weight_format == "int8" and len(measured) == len(fits) + 1 and measured[0] > measured[1]
    )  # IRs exported
    if heads:  # the third fit point: full MLPs, one KV group of two
        assert latency.kv_heads == 2 and [p.kv_groups for p in latency.points[:3]] == [2, 2, 1]
        assert latency.points[2].widths == [128, 128] and measured[0] > measured[2]
    assert latency.ms_per_mparam > 0 and all(p.measured_ms > 1 for p in latency.points)
    assert (
        latency.points[-1].predicted_ms is not None
        and (out / "latency_model" / "latency_model.png").is_file()
    )
    entries = [json.loads(line) for line in (out / "search" / "evaluations.jsonl").read_text().splitlines()]
    entries = [e for e in entries if "config" in e]
    assert len(entries) >= 3
    for e in entries:
        widths = [e["config"][f"mlp_channels[{i}]"] for i in range(2)]
        kv = e["config"].get("attention_kv_groups")
        assert (kv is not None) == heads and e["cost"] == pytest.approx(latency.predict_ms(widths, kv))
    searched = json.loads((out / "search" / "search_report.json").read_text())
    assert searched["details"]["cost"] == "latency"
    if not heads:  # the plain LoRA's validation quality, measured in the search stage, is the floor
        floor = report["search"]["floor"]
        assert floor["select"] == "cheapest_above_plain" and floor["quality"] < 0  # a log-likelihood
        assert report["plain"]["reused"]  # the search stage trained it; the plain stage found it in the cache
        if floor["reached"]:
            assert searched["chosen_quality"] >= floor["quality"]
        else:
            assert searched["chosen_quality"] == max(e["quality"] for e in searched["front"])
        assert "floor (plain's validation quality)" in (out / "report.md").read_text()
    extracted = report["extract"]  # the searched sub-network, at its widths
    assert extracted["mlp_widths"] == [searched["chosen"][f"mlp_channels[{i}]"] for i in range(2)]
    assert extracted["kv_groups"] == searched["chosen"].get("attention_kv_groups")
    assert extracted["params"] <= extracted["params_before"]
    assert report["export"]["adapter"] is None  # the IR is the extracted model itself
    assert any("extracted" in label for label in report["evaluation"])
    assert main([*argv, "--resume"]) == 0  # every stage reused, the latency model too
    assert LatencyModel.load(out / "latency_model") == latency
    assert "Extracted sub-network (LoNAS)" in (out / "report.md").read_text()


def test_mode_b_super_adapter_on_mlps_of_other_sizes_is_refused(tmp_path):
    import json

    from nncf_elastic_lora.elastic import ElasticLoraSuperNet

    _mode_b().save_super_adapter(tmp_path / "super")
    spec_file = tmp_path / "super" / "elastic_lora.json"
    spec = json.loads(spec_file.read_text())
    spec["mlp_sizes"] = {k: 96 for k in spec["mlp_sizes"]}
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(
        ValueError, match=r"trained on MLPs of other sizes \(model.layers.0.mlp.down_proj: 96 channels"
    ):
        ElasticLoraSuperNet.load_super_adapter(build_tiny_llama(TINY).eval(), tmp_path / "super")


TINY_LONAS = str(Path(__file__).parent.parent / "configs" / "tiny_lonas.json")


def _int4_lonas_flags(kind: str) -> list[str]:
    """``--set`` flags of tiny LoNAS on an INT4 base (group 32) with ``kind`` adapters, shipping an INT4 IR."""
    sets = [
        "quantization.weight_format=int4",
        "quantization.group_size=32",
        f"bootstrapNAS.training.adapter_kind={kind}",
        "bootstrapNAS.training.lora_dropout=0",
        "bootstrapNAS.elasticity.channels.fractions=[1.0, 0.75, 0.5]",
        "export.weight_format=int4",
        "bootstrapNAS.search.algorithm=heuristic",
        'evaluation.subnets=["heuristic"]',
    ]
    return [x for s in sets for x in ("--set", s)]


def _run_int4_lonas(tmp_path: Path, flags: list[str]) -> tuple[Path, dict]:
    """``run`` of tiny LoNAS with ``flags`` (no benchmark, 4 examples): its folder and report."""
    import json

    from nncf_elastic_lora.cli import main

    out = tmp_path / "run"
    argv = ["run", TINY_LONAS, "--output", str(out), "--no-progress", "--set", "benchmark.enabled=false"]
    assert main([*argv, "--set", "evaluation.limit=4", "--set", "evaluation.tasks=null", *flags]) == 0
    return out, json.loads((out / "report.json").read_text())


def _extracted_and_supernet(out: Path):
    """The run's super-network at its heuristic sub-network, and its extracted model."""
    from nncf_elastic_lora.config import ModelConfig
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.pipeline import load_supernet

    supernet, _ = load_supernet(ModelConfig(name_or_path=str(out / "int4_model")), out / "nls" / "super_adapter")
    supernet.activate_heuristic_subnet()
    small, _ = load_model(ModelConfig(name_or_path=str(out / "extracted_model")))
    return supernet, small


def test_lonas_on_an_int4_base_extracts_the_qa_merged_codes(tmp_path):
    """LoNAS + QA-SparsePEFT: reorder, then INT4; the extracted sub-network is an INT4 model whose codes are
    the merged, sliced codes, whose logits equal the super-network's, and whose IR holds those codes."""
    import json

    from nncf_elastic_lora.cli import main
    from nncf_elastic_lora.deploy.ir import check_ir_codes
    from nncf_elastic_lora.extract import slice_quantized
    from nncf_elastic_lora.int4 import load_quantized_weights

    # on the ordered float weights, as configs/lonas_qa_smollm2.json trains: the merge still writes the trained codes
    qa = [*_int4_lonas_flags("qa_sparsepeft"), "--set", "bootstrapNAS.training.qa_base_weight=float"]
    out, report = _run_int4_lonas(tmp_path, qa)
    names = report["stages"]
    assert (
        names.index("reorder") < names.index("quantize_base") < names.index("train") < names.index("extract")
    )
    assert report["extract"]["precision"] == "int4" and report["extract"]["mlp_widths"] == [96, 96]
    extracted = load_quantized_weights(out / "extracted_model")  # checked against the sliced config's shapes
    base = load_quantized_weights(out / "int4_model")
    down = "model.layers.0.mlp.down_proj"
    assert extracted[down].codes.shape == (64, 96) and extracted[down].scale.shape == (64, 3)
    # The sliced scales are the base's: the extracted model lives on the INT4 grid the adapter trained through.
    assert torch.equal(extracted[down].scale, slice_quantized(base[down], cols=96).scale)
    moved = sum(
        int((extracted[n].codes != slice_quantized(base[n], **_cut(n, 96)).codes).sum()) for n in base
    )
    assert moved > 0  # the merge really wrote new codes
    check_ir_codes(out / "openvino" / "openvino_model.xml", extracted)  # raises on any differing code
    assert report["export"]["parity"]["greedy_identical_genai"] == report["export"]["parity"]["prompts"]
    # The extracted model's logits are the super-network's at the heuristic configuration.
    supernet, small = _extracted_and_supernet(out)
    torch.testing.assert_close(model_logits(small), model_logits(supernet.model), atol=1e-5, rtol=0)
    # Per-layer widths: the INT4 checkpoint records them, reloads, and exports with exactly its codes.
    subnet = supernet.get_heuristic_config() | {"mlp_channels[0]": 128, "mlp_channels[1]": 64}
    (tmp_path / "subnet.json").write_text(json.dumps(subnet))
    common = ["--config", TINY_LONAS, "--no-progress", *qa]
    extract = [
        "extract",
        *common,
        "--model",
        str(out / "int4_model"),
        "--super-adapter",
        str(out / "nls" / "super_adapter"),
    ]
    assert (
        main([*extract, "--subnet", str(tmp_path / "subnet.json"), "--output", str(tmp_path / "mixed")]) == 0
    )
    mixed = load_quantized_weights(tmp_path / "mixed")
    assert mixed[down].codes.shape == (64, 128) and mixed["model.layers.1.mlp.down_proj"].codes.shape == (
        64,
        64,
    )
    assert (
        main(["export", *common, "--model", str(tmp_path / "mixed"), "--output", str(tmp_path / "mixed_ir")])
        == 0
    )
    check_ir_codes(tmp_path / "mixed_ir" / "openvino_model.xml", mixed)


def test_lonas_with_fq_lora_extracts_int4_codes_under_the_trained_scales(tmp_path):
    """LoNAS + FQ-LoRA: reorder, INT4, NLS through FQ(W + s·BA) with training scales; the extracted sub-network's
    codes are the merged, sliced ones under the trained scales, its logits the super-network's, its IR holds them."""

    from nncf_elastic_lora.deploy.ir import check_ir_codes
    from nncf_elastic_lora.extract import slice_quantized
    from nncf_elastic_lora.int4 import load_quantized_weights

    out, report = _run_int4_lonas(tmp_path, _int4_lonas_flags("fq_lora"))
    assert report["stages"].index("reorder") < report["stages"].index("quantize_base")
    assert report["extract"]["precision"] == "int4" and report["extract"]["mlp_widths"] == [96, 96]
    extracted = load_quantized_weights(out / "extracted_model")
    base = load_quantized_weights(out / "int4_model")
    down = "model.layers.0.mlp.down_proj"
    assert extracted[down].codes.shape == (64, 96) and extracted[down].scale.shape == (64, 3)
    # FQ-LoRA trains the scales of the adapted linears: the extracted grid is not the base's.
    assert not torch.equal(extracted[down].scale, slice_quantized(base[down], cols=96).scale)
    check_ir_codes(out / "openvino" / "openvino_model.xml", extracted)
    supernet, small = _extracted_and_supernet(out)
    # Up to the trained scales' float16 rounding in the INT4 format (< 1 % of a step, tests/test_fq_lora.py).
    torch.testing.assert_close(model_logits(small), model_logits(supernet.model), atol=1e-3, rtol=0)


def _cut(name: str, width: int) -> dict:
    if name.endswith(("gate_proj", "up_proj")):
        return {"rows": width}
    return {"cols": width} if name.endswith("down_proj") else {}
