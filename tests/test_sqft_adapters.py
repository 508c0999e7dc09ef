"""SQFT adapters: SparsePEFT and QA-SparsePEFT with elastic ranks, and their exact merges."""

import json

import pytest
import torch
from torch import nn

from nncf_elastic_lora.elastic import (
    AdapterKind,
    ElasticLoraLinear,
    ElasticLoraSuperNet,
    QASparsePeftLinear,
    SparsePeftLinear,
)
from nncf_elastic_lora.elastic import lora as lora_module
from nncf_elastic_lora.int4 import scales_fingerprint
from nncf_elastic_lora.merge import (
    MergeError,
    check_zeros_kept,
    merge_adapter_from_dirs,
    merge_qa,
    merge_sparse,
    merge_to_directory,
    merged_model,
)
from nncf_elastic_lora.models import build_tiny_llama
from nncf_elastic_lora.quantization import QuantizedWeight, quantize
from nncf_elastic_lora.sparsity import sparsify_model

from .conftest import TINY

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
ALL_LINEARS = [*TARGETS, "o_proj", "gate_proj"]
GROUPS = [
    [
        "model.layers.{*}.self_attn.q_proj",
        "model.layers.{*}.self_attn.k_proj",
        "model.layers.{*}.self_attn.v_proj",
    ],
    ["model.layers.{*}.mlp.up_proj"],
    ["model.layers.{*}.mlp.down_proj"],
]
SUBNETS = ["maximal", "heuristic", "minimal"]


def sparse_base() -> nn.Module:
    model = build_tiny_llama(TINY).eval()
    sparsify_model(model, method="magnitude", ratio=0.5, target_modules=ALL_LINEARS, progress=False)
    return model


def minmax_int4(w: torch.Tensor, group_size: int = 32) -> QuantizedWeight:
    """Asymmetric min-max INT4 per group of ``group_size`` inputs (what a data-free INT4 base holds)."""
    g = w.float().reshape(w.shape[0], -1, group_size)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-6).to(torch.float16)
    zp = torch.round(-lo / scale.float()).clamp(0, 15).to(torch.uint8)
    return QuantizedWeight(quantize(w, scale, zp, group_size), scale, zp, group_size)


def int4_base() -> tuple[nn.Module, dict[str, QuantizedWeight]]:
    """A sparse base whose linears hold their dequantized INT4 weights, and those INT4 weights."""
    model = sparse_base()
    qweights = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.rpartition(".")[2] in ALL_LINEARS:
                qweights[name] = minmax_int4(module.weight)
                module.weight.copy_(qweights[name].dequantize())
    return model, qweights


def attach(model, kind, quantized=None, seed=0) -> ElasticLoraSuperNet:
    sn = ElasticLoraSuperNet.attach(
        model,
        target_modules=TARGETS,
        max_rank=8,
        alpha=16,
        overwrite_groups=GROUPS,
        overwrite_groups_widths=[[8, 6, 4]] * 3,
        adapter_kind=kind,
        quantized=quantized,
    )
    gen = torch.Generator().manual_seed(seed)
    for a in sn.adapters.values():  # non-zero B: every rank changes the output (and the INT4 codes)
        a.lora_B.weight.data = torch.randn(a.lora_B.weight.shape, generator=gen) * 0.05
    return sn


def subnet(sn: ElasticLoraSuperNet, which: str) -> dict[str, int]:
    return getattr(sn, f"get_{which}_config")()


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def zeros_of(model) -> dict[str, torch.Tensor]:
    return {
        n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, nn.Linear | ElasticLoraLinear)
    }


# ---------------------------------------------------------------------- SparsePEFT


@pytest.mark.parametrize("which", SUBNETS)
def test_sparsepeft_merge_keeps_every_zero_and_the_logits(which):
    model = sparse_base()
    base_zeros = {n: z for n, z in zeros_of(model).items() if n.rpartition(".")[2] in TARGETS}
    sn = attach(model, "sparsepeft")
    assert all(
        isinstance(a, SparsePeftLinear) and a.kind is AdapterKind.SPARSEPEFT for a in sn.adapters.values()
    )
    config = subnet(sn, which)
    sn.activate_config(config)
    expected = logits(model, IDS)
    weights = merge_sparse(supernet=sn, config=config)
    merged = merged_model(supernet=sn, config=config)

    assert not any(isinstance(m, ElasticLoraLinear) for m in merged.modules())
    assert any(isinstance(m, ElasticLoraLinear) for m in model.modules()), "the live model was modified"
    for name, zero in base_zeros.items():
        w = merged.get_submodule(name).weight
        assert zero.any() and torch.equal(w == 0, zero), name  # the same zeros, position for position
        assert torch.equal(w, weights[name])
        assert not torch.equal(w, sn.adapters[name].base_layer.weight), f"{name}: the update was not merged"
        delta = sn.adapters[name].delta_weight(config_rank := sn.module_ranks(config)[name])
        assert config_rank > 0 and not delta[zero].any()
    torch.testing.assert_close(logits(merged, IDS), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model, IDS), expected, atol=0, rtol=0)  # live model untouched


def test_sparsepeft_rank_zero_is_the_base_and_merged_checkpoint_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    model = sparse_base()
    reference = logits(model, IDS)
    layer = SparsePeftLinear(nn.Linear(32, 16), max_rank=4, alpha=8)
    layer.set_active_rank(0)
    x = torch.randn(3, 32)
    assert torch.equal(layer(x), layer.base_layer(x))

    sn = attach(model, AdapterKind.SPARSEPEFT)
    sn.activate_heuristic_subnet()
    merged = merged_model(supernet=sn)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, IDS), logits(merged, IDS), atol=0, rtol=0)
    assert not torch.allclose(logits(reloaded, IDS), reference)
    # in place: the live model becomes the plain merged model
    inplace = merged_model(supernet=sn, inplace=True)
    assert inplace is model and not any(isinstance(m, ElasticLoraLinear) for m in model.modules())


def test_sparsepeft_dropout_acts_on_the_adapter_input_only():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    with torch.no_grad():
        base.weight[:, ::2] = 0
    layer = SparsePeftLinear(base, max_rank=4, alpha=8, dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(5, 32)
    layer.eval()
    eval_out = layer(x)
    torch.testing.assert_close(
        eval_out, nn.functional.linear(x, base.weight + layer.delta_weight(), base.bias)
    )
    layer.train()
    torch.manual_seed(1)
    train_out = layer(x)
    torch.manual_seed(1)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(train_out, base(x) + nn.functional.linear(dropped, layer.delta_weight()))


# ---------------------------------------------------------------------- QA-SparsePEFT


@pytest.mark.parametrize("which", SUBNETS)
def test_qa_merge_codes_are_the_forward_codes(which, monkeypatch):
    model, qweights = int4_base()
    base_zeros = {n: z for n, z in zeros_of(model).items() if n in qweights}
    sn = attach(model, "qa_sparsepeft", qweights)
    config = subnet(sn, which)
    sn.activate_config(config)

    seen: dict[int, torch.Tensor] = {}  # what the forward fake-quantises, by the merged tensor's shape/id
    real_fq = lora_module.fake_quantize

    def spy(w, scale, zero_point, group_size, bits=4):
        seen[id(scale)] = w.detach().clone()
        return real_fq(w, scale, zero_point, group_size, bits)

    monkeypatch.setattr(lora_module, "fake_quantize", spy)
    expected = logits(model, IDS)
    monkeypatch.undo()

    merged, merged_q = merge_qa(supernet=sn, config=config)
    assert set(merged_q) == set(qweights)
    changed = 0
    for name, q in merged_q.items():
        w = merged.get_submodule(name).weight
        assert torch.equal(w, q.dequantize()), name  # the model holds its dequantized INT4 weights
        zero = base_zeros[name]
        assert torch.equal(q.scale, qweights[name].scale) and torch.equal(
            q.zero_point, qweights[name].zero_point
        )
        assert not w[zero].any() and (q.codes[zero] == q.zero_point.repeat_interleave(32, 1)[zero]).all()
        if name in sn.adapters:
            layer = sn.adapters[name]
            forward_codes = quantize(seen[id(layer.scale)], layer.scale, layer.zero_point, 32)
            assert torch.equal(q.codes, forward_codes), name
            assert torch.equal(q.codes, layer.codes(sn.module_ranks(config)[name]))
            changed += int((q.codes != qweights[name].codes).sum())
        else:
            assert torch.equal(q.codes, qweights[name].codes), name
    assert changed > 0, "the adapter should move some codes"
    torch.testing.assert_close(logits(merged, IDS), expected, atol=1e-5, rtol=0)


def test_qa_with_zero_update_is_the_int4_base_exactly():
    model, qweights = int4_base()
    reference = logits(model, IDS)
    sn = ElasticLoraSuperNet.attach(
        model, target_modules=TARGETS, max_rank=8, alpha=16, adapter_kind="qa_sparsepeft", quantized=qweights
    )
    for which in SUBNETS:
        sn.activate_config(subnet(sn, which))
        assert torch.equal(logits(model, IDS), reference)
    _, merged_q = merge_qa(supernet=sn)
    for name, q in merged_q.items():
        assert torch.equal(q.codes, qweights[name].codes), name


@pytest.mark.parametrize("kind", ["sparsepeft", "qa_sparsepeft"])
def test_gradients_reach_a_and_b_only_and_the_grid_stays_frozen(kind):
    model, qweights = int4_base()
    sn = attach(model, kind, qweights if kind == "qa_sparsepeft" else None)
    frozen = {
        n: b.clone() for n, b in model.named_buffers() if n.endswith((".scale", ".zero_point", ".mask"))
    }
    assert {n.rpartition(".")[2] for n in frozen} == (
        {"scale", "zero_point", "mask"} if kind == "qa_sparsepeft" else {"mask"}
    )
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainable = sn.trainable_parameters()
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for step in range(3):
        sn.activate_config(subnet(sn, SUBNETS[step]))
        opt.zero_grad()
        model(input_ids=IDS, labels=IDS).loss.backward()
        for name, layer in sn.adapters.items():
            assert layer.lora_A.weight.grad is not None and layer.lora_A.weight.grad.abs().sum() > 0, name
            assert layer.lora_B.weight.grad is not None and layer.lora_B.weight.grad.abs().sum() > 0, name
        assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
        opt.step()
    for n, b in model.named_buffers():
        if n in frozen:
            assert torch.equal(b, frozen[n]), n
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    model.eval()
    sn.activate_maximal_subnet()
    if kind == "qa_sparsepeft":
        merge_qa(supernet=sn)  # still mergeable, zeros kept after training
    else:
        merge_sparse(supernet=sn)


def test_qa_straight_through_gradient_is_the_gradient_at_the_quantised_weight():
    torch.manual_seed(0)
    base = nn.Linear(32, 8, bias=False)
    with torch.no_grad():
        base.weight[:, 1::2] = 0
    q = minmax_int4(base.weight)
    base.weight.data = q.dequantize()
    layer = QASparsePeftLinear(base, max_rank=4, alpha=8, quantized=q)
    nn.init.normal_(layer.lora_B.weight, std=0.1)
    x = torch.randn(6, 32)
    layer(x).pow(2).sum().backward()
    # by hand: dL/dW̃ at W̃ = FQ(W + Lp), passed straight to W + Lp, masked, then through s·B A
    w_tilde = layer.effective_weight().detach().requires_grad_(True)
    nn.functional.linear(x, w_tilde).pow(2).sum().backward()
    g = torch.where(layer.mask, w_tilde.grad, 0) * layer.scaling
    torch.testing.assert_close(layer.lora_B.weight.grad, g @ layer.lora_A.weight.T)
    torch.testing.assert_close(layer.lora_A.weight.grad, layer.lora_B.weight.T @ g)


@pytest.mark.parametrize("kind", ["sparsepeft", "qa_sparsepeft"])
def test_lean_backward_equals_autograd_through_the_plain_expression(kind):
    torch.manual_seed(0)
    base = nn.Linear(64, 24)
    with torch.no_grad():
        base.weight[base.weight.abs() < 0.05] = 0
    q = minmax_int4(base.weight)
    if kind == "qa_sparsepeft":
        base.weight.data = q.dequantize()
        layer = QASparsePeftLinear(base, max_rank=6, alpha=12, quantized=q)
    else:
        layer = SparsePeftLinear(base, max_rank=6, alpha=12)
    base.bias.requires_grad_(True)  # the lean backward also serves a trainable bias
    nn.init.normal_(layer.lora_B.weight, std=0.1)
    layer.set_active_rank(4)
    x = torch.randn(2, 5, 64, requires_grad=True)
    layer(x).square().sum().backward()
    got = [t.grad.clone() for t in (x, layer.lora_A.weight, layer.lora_B.weight, base.bias)]
    for t in (x, layer.lora_A.weight, layer.lora_B.weight, base.bias):
        t.grad = None
    a, b = layer.lora_weights()
    merged = base.weight + (b @ a) * layer.scaling * layer.mask
    if kind == "qa_sparsepeft":
        merged = lora_module.fake_quantize(merged, q.scale, q.zero_point, q.group_size)
    nn.functional.linear(x, merged, base.bias).square().sum().backward()
    want = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad, base.bias.grad]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert not got[1][4:].any() and not got[2][:, 4:].any()  # inactive rank components get no gradient


# ---------------------------------------------------------------------- from disk, provenance, bad inputs


@pytest.mark.parametrize("kind", ["sparsepeft", "qa_sparsepeft"])
def test_sub_adapter_merges_from_disk_like_the_live_merge(kind, tmp_path):
    from peft import PeftModel

    model, qweights = int4_base()
    quantized = qweights if kind == "qa_sparsepeft" else None
    sn = attach(model, kind, quantized)
    config = sn.get_heuristic_config()
    sn.save_sub_adapter(tmp_path / "sub", config, base_fingerprint="base-1")
    record = json.loads((tmp_path / "sub" / "elastic_lora_sub.json").read_text())
    assert record["adapter_kind"] == kind and record["base_fingerprint"] == "base-1"
    assert record["scales_fingerprint"] == (scales_fingerprint(qweights) if quantized else None)
    assert json.loads((tmp_path / "sub" / "subnet_config.json").read_text()) == config

    if kind == "qa_sparsepeft":
        live, live_q = merge_qa(supernet=sn, config=config)
    else:
        live, live_q = merged_model(supernet=sn, config=config), None
    fresh, _ = int4_base()
    result = merge_to_directory(
        model=fresh,
        adapter_dir=tmp_path / "sub",
        output=tmp_path / "merged",
        quantized=quantized,
        base_fingerprint="base-1",
        write_quantized=lambda d, q: torch.save({n: x.codes for n, x in q.items()}, d / "codes.pt"),
    )
    assert result.kind is AdapterKind(kind)
    assert any(isinstance(m, nn.Linear) for m in fresh.modules())
    for name in sn.adapters:
        assert torch.equal(result.model.get_submodule(name).weight, live.get_submodule(name).weight), name
        if live_q:
            assert torch.equal(result.quantized[name].codes, live_q[name].codes), name
    assert (tmp_path / "merged" / "config.json").is_file()
    assert json.loads((tmp_path / "merged" / "merge_report.json").read_text())["adapter_kind"] == kind
    assert (tmp_path / "merged" / "codes.pt").is_file() == (kind == "qa_sparsepeft")
    # stock peft still loads the folder (it applies the update unmasked: merge with this package)
    PeftModel.from_pretrained(int4_base()[0], tmp_path / "sub")


def test_merge_into_another_base_is_refused(tmp_path):
    sn = attach(sparse_base(), "sparsepeft")
    sn.save_sub_adapter(tmp_path / "sub", base_fingerprint="base-1")
    with pytest.raises(ValueError, match="trained on another base"):
        merge_to_directory(
            model=sparse_base(),
            adapter_dir=tmp_path / "sub",
            output=tmp_path / "out",
            base_fingerprint="base-2",
        )
    other = build_tiny_llama(
        TINY.model_copy(update={"tiny": TINY.tiny.model_copy(update={"hidden_size": 64})})
    )
    with pytest.raises(ValueError, match="does not fit the base model"):
        merge_to_directory(model=other, adapter_dir=tmp_path / "sub", output=tmp_path / "out")
    # the zero check itself (the mask is the base's, so a merge cannot trip it; it guards the maths)
    base = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert check_zeros_kept(name="m", base=base, merged=torch.tensor([[0.0, 0.0], [3.0, 0.0]])) == 1
    with pytest.raises(MergeError, match="'m': the merge fills 1 of the base's 2 zeros"):
        check_zeros_kept(name="m", base=base, merged=torch.tensor([[0.5, 1.0], [2.0, 0.0]]))
    assert not (tmp_path / "out").exists()


def test_qa_with_other_scales_or_without_them_is_refused(tmp_path):
    model, qweights = int4_base()
    sn = attach(model, "qa_sparsepeft", qweights)
    sn.save_sub_adapter(tmp_path / "sub")
    sn.save_super_adapter(tmp_path / "super")
    fresh, _ = int4_base()
    other = {
        n: QuantizedWeight(q.codes, q.scale * 2, q.zero_point, q.group_size) for n, q in qweights.items()
    }
    with pytest.raises(ValueError, match="other INT4 scales"):
        merge_to_directory(
            model=fresh, adapter_dir=tmp_path / "sub", output=tmp_path / "out", quantized=other
        )
    with pytest.raises(ValueError, match="needs the INT4 base's quantized weights"):
        merge_to_directory(model=fresh, adapter_dir=tmp_path / "sub", output=tmp_path / "out")
    with pytest.raises(ValueError, match="needs the INT4 base's quantized weights"):
        ElasticLoraSuperNet.load_super_adapter(int4_base()[0], tmp_path / "super")
    with pytest.raises(ValueError, match="other INT4 scales"):
        ElasticLoraSuperNet.load_super_adapter(int4_base()[0], tmp_path / "super", quantized=other)
    # a base that is not the dequantisation of the scales given (right fingerprint, wrong weights)
    with pytest.raises(ValueError, match="belong to another base"):
        merge_to_directory(
            model=sparse_base(), adapter_dir=tmp_path / "sub", output=tmp_path / "out", quantized=qweights
        )
    assert not (tmp_path / "out").exists()
    # attaching: scales of another base, missing modules, no scales, scales for a non-qa kind
    with pytest.raises(ValueError, match="belong to another base"):
        attach(sparse_base(), "qa_sparsepeft", qweights)
    with pytest.raises(ValueError, match="do not cover"):
        attach(int4_base()[0], "qa_sparsepeft", {n: q for n, q in qweights.items() if "q_proj" not in n})
    with pytest.raises(ValueError, match="pass quantized="):
        attach(int4_base()[0], "qa_sparsepeft")
    with pytest.raises(ValueError, match="only used by qa_sparsepeft"):
        attach(int4_base()[0], "sparsepeft", qweights)
    untouched = int4_base()[0]
    with pytest.raises(ValueError, match="belong to another base"):
        bad = {**qweights, "model.layers.1.mlp.down_proj": other["model.layers.1.mlp.down_proj"]}
        attach(untouched, "qa_sparsepeft", bad)
    assert not any(isinstance(m, ElasticLoraLinear) for m in untouched.modules()), (
        "a failed attach wrapped modules"
    )
    assert all(p.requires_grad for p in untouched.parameters()), "a failed attach froze the model"


@pytest.mark.parametrize("kind", ["sparsepeft", "qa_sparsepeft"])
def test_nan_in_an_adapter_fails_naming_the_module_and_writes_nothing(kind, tmp_path):
    model, qweights = int4_base()
    quantized = qweights if kind == "qa_sparsepeft" else None
    sn = attach(model, kind, quantized)
    bad = "model.layers.1.mlp.up_proj"
    with torch.no_grad():
        sn.adapters[bad].lora_B.weight[3, 0] = float("nan")
    merge = merge_qa if kind == "qa_sparsepeft" else merged_model
    with pytest.raises(MergeError, match=rf"'{bad}'.*NaN"):
        merge(supernet=sn)
    sn.save_sub_adapter(tmp_path / "sub")
    with pytest.raises(MergeError, match=rf"'{bad}'.*NaN"):
        merge_to_directory(
            model=int4_base()[0],
            adapter_dir=tmp_path / "sub",
            output=tmp_path / "out",
            quantized=quantized,
            write_quantized=lambda d, q: None,
        )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_wrong_merge_for_the_kind_and_plain_lora_folders_are_refused(tmp_path):
    sn = attach(sparse_base(), "lora")
    with pytest.raises(MergeError, match="fills the base's zeros"):
        merge_sparse(supernet=sn)
    sn.save_sub_adapter(tmp_path / "lora_sub")
    with pytest.raises(MergeError, match="plain lora adapter"):
        merge_adapter_from_dirs(model=sparse_base(), adapter_dir=tmp_path / "lora_sub")
    model, qweights = int4_base()
    with pytest.raises(MergeError, match="use merge_qa"):
        merge_sparse(supernet=attach(model, "qa_sparsepeft", qweights))
    (tmp_path / "lora_sub" / "elastic_lora_sub.json").unlink()  # a plain peft folder: the kind must be named
    with pytest.raises(ValueError, match="say which kind it is"):
        merge_adapter_from_dirs(model=sparse_base(), adapter_dir=tmp_path / "lora_sub")


def test_plain_peft_folder_merges_with_peft_scaling_when_the_kind_is_named(tmp_path):
    model = sparse_base()
    sn = attach(model, "sparsepeft")
    config = sn.get_minimal_config()
    sn.save_sub_adapter(tmp_path / "sub", config)
    (tmp_path / "sub" / "elastic_lora_sub.json").unlink()
    result = merge_adapter_from_dirs(
        model=sparse_base(), adapter_dir=tmp_path / "sub", adapter_kind="sparsepeft"
    )
    live = merged_model(supernet=sn, config=config)
    torch.testing.assert_close(logits(result.model, IDS), logits(live, IDS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["sparsepeft", "qa_sparsepeft"])
def test_super_adapter_round_trip(kind, tmp_path):
    model, qweights = int4_base()
    quantized = qweights if kind == "qa_sparsepeft" else None
    sn = attach(model, kind, quantized)
    sn.save_super_adapter(tmp_path / "super", base_fingerprint="base-1")
    spec = json.loads((tmp_path / "super" / "elastic_lora.json").read_text())
    assert spec["adapter_kind"] == kind and spec["base_fingerprint"] == "base-1"
    loaded = ElasticLoraSuperNet.load_super_adapter(
        int4_base()[0], tmp_path / "super", quantized=quantized, base_fingerprint="base-1"
    )
    assert loaded.kind is AdapterKind(kind) and loaded.get_search_space() == sn.get_search_space()
    for which in SUBNETS:
        sn.activate_config(subnet(sn, which))
        loaded.activate_config(subnet(sn, which))
        torch.testing.assert_close(logits(loaded.model, IDS), logits(model, IDS), atol=0, rtol=0)
    with pytest.raises(ValueError, match="trained on another base"):
        ElasticLoraSuperNet.load_super_adapter(
            int4_base()[0], tmp_path / "super", quantized=quantized, base_fingerprint="base-2"
        )


# ---------------------------------------------------------------------- QA-SparsePEFT on the float weights


def float_sourced_int4_base(
    with_float: bool = True,
) -> tuple[nn.Module, dict[str, QuantizedWeight], dict[str, torch.Tensor]]:
    """The INT4 base of :func:`int4_base` with each INT4 weight's float source attached (unless not
    ``with_float``), and those float weights."""
    model = sparse_base()
    floats = {n: m.weight.detach().clone() for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.rpartition(".")[2] in ALL_LINEARS}  # fmt: skip
    qweights = {}
    with torch.no_grad():
        for name, w in floats.items():
            q = qweights[name] = minmax_int4(w)
            model.get_submodule(name).weight.copy_(q.dequantize())
            q.float_weight = w.clone() if with_float else None
    return model, qweights, floats


def test_an_update_under_half_a_step_moves_codes_only_on_the_float_weight():
    """The straight-through estimator's resolution: on the dequantized weight a small update rounds back to the
    base's codes (the forward never sees it), on the float weight it moves the codes near a boundary."""
    changed = {}
    for base_weight in ("dequantized", "float"):
        model, qweights, _ = float_sourced_int4_base(with_float=base_weight == "float")
        sn = attach(model, "qa_sparsepeft", qweights)
        assert sn.base_weight() == base_weight
        changed[base_weight] = 0
        for name, layer in sn.adapters.items():
            with torch.no_grad():  # every |update| under a quarter of its quantization step
                step = layer.scale.float().repeat_interleave(layer.group_size, dim=1)
                delta = layer.delta_weight()
                layer.lora_B.weight.mul_(0.25 / float((delta.abs() / step).max()))
                assert float((layer.delta_weight().abs() / step).max()) <= 0.25 + 1e-6
            changed[base_weight] += int((layer.codes() != qweights[name].codes).sum())
    assert changed["dequantized"] == 0 and changed["float"] > 0


def test_qa_on_float_weights_merges_what_it_trained_live_and_from_disk(tmp_path):
    model, qweights, floats = float_sourced_int4_base()
    qweights_deq = {n: q.dequantize() for n, q in qweights.items()}
    sn = attach(model, "qa_sparsepeft", qweights)
    for name, layer in sn.adapters.items():
        assert layer.on_float_weight and torch.equal(layer.base_layer.weight, floats[name])
        assert torch.equal(layer.mask, floats[name] != 0)  # the sparse model's zeros
    config = sn.get_heuristic_config()
    sn.activate_config(config)
    expected = logits(model, IDS)
    live, live_q = merge_qa(supernet=sn, config=config)
    torch.testing.assert_close(logits(live, IDS), expected, atol=1e-5, rtol=0)
    differ = 0
    for name, layer in sn.adapters.items():
        w = live.get_submodule(name).weight
        assert not w[floats[name] == 0].any(), name  # the pruned weights stay zero through the INT4 merge
        assert torch.equal(w, live_q[name].dequantize())
        on_dequantized = lora_module.qa_codes(qweights_deq[name] + layer.delta_weight(), layer.grid)
        differ += int((on_dequantized != live_q[name].codes).sum())
    assert differ > 0, "the float weights should round to other codes than the dequantized ones"

    sn.save_sub_adapter(tmp_path / "sub", config, base_fingerprint="base-1")
    assert json.loads((tmp_path / "sub" / "elastic_lora_sub.json").read_text())["base_weight"] == "float"
    fresh, fresh_q, _ = float_sourced_int4_base()
    result = merge_adapter_from_dirs(model=fresh, adapter_dir=tmp_path / "sub", quantized=fresh_q,
                                     base_fingerprint="base-1")  # fmt: skip
    for name in sn.adapters:
        assert torch.equal(result.quantized[name].codes, live_q[name].codes), name
    # without the float weights the merge would round another weight than the one trained: refused
    fresh, fresh_q, _ = float_sourced_int4_base(with_float=False)
    with pytest.raises(MergeError, match="trained on the float weights"):
        merge_adapter_from_dirs(model=fresh, adapter_dir=tmp_path / "sub", quantized=fresh_q, base_fingerprint="base-1")
    # a plain peft folder (no record) merges on the weights its caller loaded: the float ones here
    (tmp_path / "sub" / "elastic_lora_sub.json").unlink()
    fresh, fresh_q, _ = float_sourced_int4_base()
    result = merge_adapter_from_dirs(model=fresh, adapter_dir=tmp_path / "sub", adapter_kind="qa_sparsepeft",
                                     quantized=fresh_q)  # fmt: skip
    for name in sn.adapters:
        assert torch.equal(result.quantized[name].codes, live_q[name].codes), name


def boundary_flipped(model: nn.Module, qweights: dict[str, QuantizedWeight]) -> None:
    """One code per INT4 weight moved by a step, as a float16 scale's rounding moves a weight at a boundary: the
    base's codes then differ from those its float source rounds to (the base still its own dequantisation)."""
    with torch.no_grad():
        for name, q in qweights.items():
            q.codes[0, 0] = 1 if int(q.codes[0, 0]) == 0 else int(q.codes[0, 0]) - 1
            model.get_submodule(name).weight.copy_(q.dequantize())


def test_a_module_at_rank_zero_merges_from_disk_as_its_forward_rounds_it(tmp_path):
    model, qweights, _ = float_sourced_int4_base()
    boundary_flipped(model, qweights)
    sn = ElasticLoraSuperNet.attach(model, target_modules=TARGETS, max_rank=8, alpha=16, overwrite_groups=GROUPS,
                                    overwrite_groups_widths=[[8, 0]] * 3, adapter_kind="qa_sparsepeft",
                                    quantized=qweights)  # fmt: skip
    config = {name: 0 for name in sn.get_search_space()}
    config[next(iter(config))] = 8
    sn.activate_config(config)
    live, live_q = merge_qa(supernet=sn, config=config)
    sn.save_sub_adapter(tmp_path / "sub", config)
    fresh, fresh_q, _ = float_sourced_int4_base()
    boundary_flipped(fresh, fresh_q)
    result = merge_adapter_from_dirs(model=fresh, adapter_dir=tmp_path / "sub", quantized=fresh_q)
    for name in sn.adapters:
        assert torch.equal(result.quantized[name].codes, live_q[name].codes), name
        assert torch.equal(result.model.get_submodule(name).weight, live.get_submodule(name).weight), name


def test_a_super_adapter_loads_on_the_weights_it_trained_on(tmp_path):
    for base_weight in ("float", "dequantized"):
        model, qweights, _ = float_sourced_int4_base(with_float=base_weight == "float")
        sn = attach(model, "qa_sparsepeft", qweights)
        sn.save_super_adapter(tmp_path / base_weight)
        assert json.loads((tmp_path / base_weight / "elastic_lora.json").read_text())["base_weight"] == base_weight
        expected = logits(model, IDS)
        fresh, fresh_q, _ = float_sourced_int4_base()  # float weights given either way
        loaded = ElasticLoraSuperNet.load_super_adapter(fresh, tmp_path / base_weight, quantized=fresh_q)
        assert loaded.base_weight() == base_weight
        torch.testing.assert_close(logits(loaded.model, IDS), expected, atol=0, rtol=0)
    fresh, fresh_q, _ = float_sourced_int4_base(with_float=False)
    with pytest.raises(ValueError, match="was trained on the float weights"):
        ElasticLoraSuperNet.load_super_adapter(fresh, tmp_path / "float", quantized=fresh_q)


def test_a_float_source_the_codes_did_not_come_from_is_refused_before_the_model_changes():
    model, qweights, floats = float_sourced_int4_base()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    name = sorted(n for n in qweights if n.endswith("up_proj"))[-1]  # the last target: the others come first
    qweights[name].float_weight = floats[name] * 1.5  # rescaled, as AWQ does to the weights it quantizes
    with pytest.raises(ValueError, match=f"module '{name}': the float source rounds to other INT4 codes"):
        attach(model, "qa_sparsepeft", qweights)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    qweights[name].float_weight = None  # float weights for some targets only: a mix is refused too
    with pytest.raises(ValueError, match="for none"):
        attach(model, "qa_sparsepeft", qweights)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_an_unknown_recorded_base_weight_is_an_error():
    assert lora_module.trains_on_float_weights("fq_lora", None) and not lora_module.trains_on_float_weights(
        "fq_lora", {"base_weight": "dequantized"})
    assert not lora_module.trains_on_float_weights("qa_sparsepeft", None)
    with pytest.raises(ValueError, match="base_weight is 'Float'; expected 'float' or 'dequantized'"):
        lora_module.trains_on_float_weights("qa_sparsepeft", {"base_weight": "Float"})
