import copy
import itertools

import pytest
import torch

from nncf_elastic_lora.config import DEFAULT_DECODER_LINEARS
from nncf_elastic_lora.patterns import find_linears
from nncf_elastic_lora.sparsity import (
    calibration_batches,
    layer_sparsity,
    magnitude_mask,
    n_m_mask,
    sparsify_model,
    wanda_mask,
    wanda_scores,
)
from nncf_elastic_lora.sparsity.calibration import decoder_layers


def _direct_wanda_mask(weight, x, ratio):
    """The paper's formula, element by element: S_ij = |W_ij| * ||X_j||_2, lowest per row removed."""
    rows, cols = weight.shape
    norms = [sum(float(x[t, j]) ** 2 for t in range(x.shape[0])) ** 0.5 for j in range(cols)]
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    k = int(cols * ratio)
    for i in range(rows):
        scores = [abs(float(weight[i, j])) * norms[j] for j in range(cols)]
        for j in sorted(range(cols), key=lambda j: scores[j])[:k]:
            mask[i, j] = True
    return mask


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7])
def test_wanda_mask_equals_direct_formula(ratio):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, generator=gen)
    x = torch.randn(17, 10, generator=gen) * torch.linspace(0.1, 3, 10)
    mask = wanda_mask(weight, (x.double() ** 2).sum(0), ratio)
    assert torch.equal(mask, _direct_wanda_mask(weight, x, ratio))


def test_wanda_differs_from_magnitude_when_inputs_are_uneven():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    sq = torch.tensor([100.0, 100.0, 0.01, 0.01])  # large inputs make small weights matter
    assert wanda_scores(weight, sq).argsort().tolist()[0][:2] == [2, 3]
    assert wanda_mask(weight, sq, 0.5).tolist() == [[False, False, True, True]]
    assert magnitude_mask(weight, 0.5).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_per_row_ratio_is_exact(ratio):
    weight = torch.randn(32, 48)
    mask = wanda_mask(weight, torch.rand(48), ratio)
    assert (mask.sum(1) == int(48 * ratio)).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_n_m_pattern_is_valid(n, m):
    scores = torch.rand(8, 32)
    mask = n_m_mask(scores, n, m)
    groups = mask.reshape(8, 32 // m, m)
    assert (groups.sum(-1) == n).all()
    # the removed ones are the lowest of their group
    vals = scores.reshape(8, 32 // m, m)
    kept_min = vals.masked_fill(groups, float("inf")).min(-1).values
    removed_max = vals.masked_fill(~groups, float("-inf")).max(-1).values
    assert (removed_max <= kept_min).all()


def test_n_m_needs_divisible_inputs():
    with pytest.raises(ValueError, match="divisible by 4"):
        n_m_mask(torch.rand(2, 6), 2, 4)


def test_magnitude_layer_mask_count_is_exact():
    weight = torch.randn(16, 16)
    mask = magnitude_mask(weight, 0.5)
    assert int(mask.sum()) == 128
    assert weight.abs()[mask].max() <= weight.abs()[~mask].min()


def _calibration(tokenizer):
    from nncf_elastic_lora.data import Example

    texts = [
        Example(id=str(i), prompt=f"Question: Calculate {i} + {2 * i} =\nAnswer:", target=f" {3 * i}")
        for i in range(40)
    ]
    return calibration_batches(texts, tokenizer, num_samples=6, seq_len=16, seed=0)


def test_sparsify_model_prunes_half_of_every_row(tiny_model, tokenizer):
    embeddings = tiny_model.model.embed_tokens.weight.clone()
    report = sparsify_model(
        tiny_model,
        method="wanda",
        ratio=0.5,
        target_modules=DEFAULT_DECODER_LINEARS,
        calibration=_calibration(tokenizer),
        progress=False,
    )
    targets = find_linears(tiny_model, DEFAULT_DECODER_LINEARS)
    assert len(targets) == 7 * len(decoder_layers(tiny_model))
    for linear in targets.values():
        assert ((linear.weight == 0).sum(1) == linear.in_features // 2).all()
    assert report.sparsity == pytest.approx(0.5)
    assert set(report.layers) == set(targets)
    assert report.calibration["num_samples"] == 6
    # layers outside the targets are untouched
    assert torch.equal(tiny_model.model.embed_tokens.weight, embeddings)


@torch.no_grad()
def test_layers_are_pruned_in_order_on_pruned_inputs(tiny_model, tokenizer):
    """Reference: layer i's statistics come from a full forward of the model whose earlier layers are pruned."""
    calibration = _calibration(tokenizer)
    reference = copy.deepcopy(tiny_model)
    sparsify_model(
        tiny_model,
        method="wanda",
        ratio=0.5,
        target_modules=DEFAULT_DECODER_LINEARS,
        calibration=calibration,
        progress=False,
    )
    for layer in decoder_layers(reference):
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        inputs = {n: [] for n in linears}
        hooks = [
            m.register_forward_hook(
                lambda mod, a, o, n=n, inputs=inputs: inputs[n].append(a[0].reshape(-1, a[0].shape[-1]))
            )
            for n, m in linears.items()
        ]
        for ids in calibration:
            reference(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        for n, m in linears.items():
            x = torch.cat(inputs[n]).double()
            m.weight[wanda_mask(m.weight, (x * x).sum(0), 0.5)] = 0
    for (n, a), (_, b) in zip(tiny_model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a == 0, b == 0), n


def test_magnitude_and_n_m_on_model(tiny_model):
    report = sparsify_model(
        tiny_model, method="magnitude", ratio=0.3, target_modules=["q_proj"], progress=False
    )
    assert report.sparsity == pytest.approx(0.3, abs=1e-3)
    assert set(layer_sparsity(tiny_model, ["k_proj"]).values()) == {0.0}
    sparsify_model(tiny_model, method="magnitude", pattern="2:4", target_modules=["up_proj"], progress=False)
    for linear in find_linears(tiny_model, ["up_proj"]).values():
        assert ((linear.weight == 0).reshape(linear.out_features, -1, 4).sum(-1) == 2).all()


def test_pattern_matching_nothing_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="matches no linear layer"):
        sparsify_model(tiny_model, method="magnitude", target_modules=["qq_proj"], progress=False)


def test_wanda_without_calibration_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="calibration"):
        sparsify_model(tiny_model, method="wanda", target_modules=DEFAULT_DECODER_LINEARS, progress=False)


def test_patterns_and_legacy_scopes():
    from nncf_elastic_lora.patterns import compile_pattern, translate_nncf_scope

    scope = (
        "{re}PeftModelForCausalLM/LoraModel[base_model]/LlamaForCausalLM[model]/LlamaModel[model]/"
        "ModuleList[layers]/LlamaDecoderLayer[{*}]/LlamaAttention[self_attn]/Linear[q_proj]/"
        "ModuleDict[lora_A]/NNCFLinear[default]/linear_0"
    )
    assert translate_nncf_scope(scope) == "model.layers.{*}.self_attn.q_proj"
    names = [f"model.layers.{i}.self_attn.{p}" for i, p in itertools.product(range(3), ["q_proj", "k_proj"])]
    hits = [n for n in names if compile_pattern(scope).fullmatch(n)]
    assert hits == [n for n in names if n.endswith("q_proj")]
    assert compile_pattern("k_proj").fullmatch("model.layers.2.self_attn.k_proj")
    assert not compile_pattern("proj").fullmatch("model.layers.2.self_attn.k_proj")
