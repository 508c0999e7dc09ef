import random

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from nncf_elastic_lora.config import load_config
from nncf_elastic_lora.elastic import ElasticLoraLinear, ElasticLoraSuperNet
from nncf_elastic_lora.models import build_tiny_llama
from nncf_elastic_lora.pipeline import build_supernet

from .conftest import TINY
from .helpers import QKV_UP_DOWN, TARGETS, make_supernet


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_active_rank_equals_plain_lora_from_sliced_weights(rank):
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10)
    layer = ElasticLoraLinear(base, max_rank=8, alpha=16)
    torch.nn.init.normal_(layer.lora_B.weight)
    layer.set_active_rank(rank)
    x = torch.randn(3, 5, 12)
    # peft's LoRA of rank `rank` with the sliced weights and alpha scaled to keep alpha / max_rank
    plain = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(12, 10)),
        LoraConfig(r=rank, lora_alpha=16 * rank / 8, target_modules=["0"]),
    )
    lora = plain.base_model.model[0]
    with torch.no_grad():
        lora.base_layer.weight.copy_(base.weight)
        lora.base_layer.bias.copy_(base.bias)
        lora.lora_A["default"].weight.copy_(layer.lora_A.weight[:rank])
        lora.lora_B["default"].weight.copy_(layer.lora_B.weight[:, :rank])
        expected = plain(x)
        manual = base(x) + (16 / 8) * x @ layer.lora_A.weight[:rank].T @ layer.lora_B.weight[:, :rank].T
        got = layer(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, manual)


def test_adapter_init_is_seeded():
    torch.manual_seed(1)
    a = ElasticLoraSuperNet.attach(
        build_tiny_llama(TINY), target_modules=["q_proj"], max_rank=4, alpha=8, seed=3
    )
    torch.manual_seed(2)
    b = ElasticLoraSuperNet.attach(
        build_tiny_llama(TINY), target_modules=["q_proj"], max_rank=4, alpha=8, seed=3
    )
    c = ElasticLoraSuperNet.attach(
        build_tiny_llama(TINY), target_modules=["q_proj"], max_rank=4, alpha=8, seed=4
    )
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(a.adapters[name].lora_A.weight, b.adapters[name].lora_A.weight)
    assert not torch.equal(a.adapters[name].lora_A.weight, c.adapters[name].lora_A.weight)
    assert not a.adapters[name].lora_B.weight.any()


def test_rank_zero_and_out_of_range():
    layer = ElasticLoraLinear(torch.nn.Linear(4, 4), max_rank=2, alpha=2)
    layer.set_active_rank(0)
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), layer.base_layer(x))
    with pytest.raises(ValueError, match="outside"):
        layer.set_active_rank(3)


def test_groups_one_per_layer_index_and_controller():
    sn = make_supernet(build_tiny_llama(TINY))
    space = sn.get_search_space()
    assert list(space) == ["group0[0]", "group1[0]", "group2[0]", "group0[1]", "group1[1]", "group2[1]"]
    assert sn.space_size() == 3**6
    assert sn.get_heuristic_config() == dict.fromkeys(space, 6)
    sn.activate_minimal_subnet()
    assert set(sn.module_ranks().values()) == {4}
    assert sn.adapters["model.layers.1.self_attn.k_proj"].active_rank == 4
    config = sn.sample_config(random.Random(3))
    sn.activate_config(config)
    assert sn.get_active_config() == config
    assert sn.config_from_json(sn.config_to_json()) == config
    with pytest.raises(ValueError, match="not one of"):
        sn.activate_config({**config, "group0[0]": 5})


def test_params_and_macs():
    sn = make_supernet(build_tiny_llama(TINY))
    sn.activate_maximal_subnet()
    a = sn.adapters["model.layers.0.mlp.up_proj"]
    assert a.in_features == 32 and a.out_features == 64
    kv_out = sn.adapters["model.layers.0.self_attn.k_proj"].out_features
    per_layer = 8 * (32 + 32) + 2 * 8 * (32 + kv_out) + 8 * (32 + 64) + 8 * (64 + 32)
    assert sn.get_active_params() == 2 * per_layer
    assert sn.get_macs_for_active_config(seq_len=10) == 10 * 2 * per_layer
    assert sn.get_active_params(sn.get_minimal_config()) == 2 * per_layer // 2
    base = sum(m.in_features * m.out_features for m in sn.adapters.values())
    assert sn.get_macs_for_active_config(include_base=True) == 2 * per_layer + base


def test_bad_groups_fail_clearly():
    with pytest.raises(ValueError, match="matches no adapted module"):
        ElasticLoraSuperNet.attach(
            build_tiny_llama(TINY),
            target_modules=TARGETS,
            max_rank=8,
            alpha=16,
            overwrite_groups=[["model.layers.{*}.mlp.gate_proj"]],
            overwrite_groups_widths=[[8]],
        )
    with pytest.raises(ValueError, match=r"widths \[12\] exceed the maximal rank 8"):
        ElasticLoraSuperNet.attach(
            build_tiny_llama(TINY),
            target_modules=TARGETS,
            max_rank=8,
            alpha=16,
            overwrite_groups=QKV_UP_DOWN,
            overwrite_groups_widths=[[12, 8], [8], [8]],
        )
    with pytest.raises(ValueError, match="in two groups"):
        ElasticLoraSuperNet.attach(
            build_tiny_llama(TINY),
            target_modules=TARGETS,
            max_rank=8,
            alpha=16,
            overwrite_groups=[["q_proj"], ["model.layers.{*}.self_attn.q_proj"]],
            overwrite_groups_widths=[[8], [8]],
        )


def test_legacy_nncf_scope_config_builds_the_same_groups(tmp_path):
    from pathlib import Path

    legacy = load_config(Path(__file__).parent.parent / "configs" / "shears_smollm2_nncf_scopes.json")
    modern = load_config(Path(__file__).parent.parent / "configs" / "shears_smollm2.json")
    a = build_supernet(build_tiny_llama(TINY), legacy.bootstrapNAS)
    b = build_supernet(build_tiny_llama(TINY), modern.bootstrapNAS)
    assert [(g.modules, g.widths) for g in a.groups] == [(g.modules, g.widths) for g in b.groups]
    assert len(a.groups) == 3 * 2


@pytest.mark.parametrize("which", ["sample", "heuristic", "minimal"])
def test_sub_adapter_loads_in_stock_peft_with_same_logits(tmp_path, which):
    sn = make_supernet(build_tiny_llama(TINY))
    config = {
        "sample": sn.sample_config(random.Random(1)),
        "heuristic": sn.get_heuristic_config(),
        "minimal": sn.get_minimal_config(),
    }[which]
    sn.activate_config(config)
    ids = torch.randint(0, 2000, (2, 12))
    with torch.no_grad():
        ours = sn.model(input_ids=ids).logits
    sn.save_sub_adapter(tmp_path / "sub", base_model="tiny")
    sn.activate_maximal_subnet()  # saving must not depend on what is active afterwards
    peft_model = PeftModel.from_pretrained(build_tiny_llama(TINY), tmp_path / "sub")
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    lora_q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_q.r["default"] == config["group0[0]"]


def test_super_adapter_round_trip(tmp_path):
    sn = make_supernet(build_tiny_llama(TINY))
    sn.save_super_adapter(tmp_path / "super")
    loaded = ElasticLoraSuperNet.load_super_adapter(build_tiny_llama(TINY), tmp_path / "super")
    assert loaded.get_search_space() == sn.get_search_space()
    config = sn.sample_config(random.Random(5))
    sn.activate_config(config)
    loaded.activate_config(config)
    ids = torch.randint(0, 2000, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, sn.model(input_ids=ids).logits)
    # the super-adapter folder is also a stock peft folder: the maximal sub-adapter
    sn.activate_maximal_subnet()
    peft_model = PeftModel.from_pretrained(build_tiny_llama(TINY), tmp_path / "super")
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=ids).logits, sn.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
