"""Models that are not LLaMA-shaped: Gemma 3 (sliding and full attention), GPT-NeoX, MPT, GPT-2."""

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MptConfig,
    MptForCausalLM,
)

from nncf_elastic_lora.architecture import decoder_blocks, in_head, output_head_names
from nncf_elastic_lora.config import DEFAULT_DECODER_LINEARS
from nncf_elastic_lora.patterns import find_linears
from nncf_elastic_lora.sparsity import sparsify_model, wanda_mask
from nncf_elastic_lora.sparsity.calibration import capture_layer_inputs

VOCAB = 128
NEOX_LINEARS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
MPT_LINEARS = ["Wqkv", "out_proj", "up_proj", "down_proj"]


def _seeded(build, config):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build(config).eval()


def gemma3() -> Gemma3ForCausalLM:
    """A 4-layer Gemma 3 whose sliding window (4) is far shorter than the calibration windows (24)."""
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=64,
    )
    return _seeded(Gemma3ForCausalLM, config)


def gpt_neox(vocab_size: int = VOCAB) -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return _seeded(GPTNeoXForCausalLM, config)


def mpt() -> MptForCausalLM:
    return _seeded(MptForCausalLM, MptConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=3))


def _calibration(num: int = 3, seq_len: int = 24) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (1, seq_len), generator=gen) for _ in range(num)]


def _accumulate(x: torch.Tensor, total: torch.Tensor) -> None:
    """Add the sum over tokens of each input feature's square to ``total``."""
    x = x.reshape(-1, x.shape[-1]).double()
    total += (x * x).sum(0)


@torch.no_grad()
def _reference_wanda(model: torch.nn.Module, calibration, targets: list[str], ratio: float) -> None:
    """Wanda by whole-model forwards: for each block in order, input norms from the full (partly pruned) model."""
    names = {module: name for name, module in model.named_modules()}
    linears = find_linears(model, targets)
    for block in decoder_blocks(model)[1]:
        prefix = names[block] + "."
        in_block = {n: m for n, m in linears.items() if n.startswith(prefix)}
        sq_sum = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in in_block.items()}
        hooks = [
            m.register_forward_hook(lambda mod, a, o, total=sq_sum[n]: _accumulate(a[0], total))
            for n, m in in_block.items()
        ]
        for ids in calibration:
            model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        for n, m in in_block.items():
            m.weight[wanda_mask(m.weight, sq_sum[n], ratio)] = 0


def _assert_same_zeros(model, reference, targets):
    pruned, expected = find_linears(model, targets), find_linears(reference, targets)
    assert pruned.keys() == expected.keys()
    for name, linear in pruned.items():
        assert torch.equal(linear.weight == 0, expected[name].weight == 0), name


def test_gemma3_blocks_get_their_own_masks_and_rotary_embeddings():
    model = gemma3()
    calibration = _calibration(4)
    captured, other_batch = capture_layer_inputs(
        model, [torch.cat(calibration[:2]), torch.cat(calibration[2:])]
    )
    (_, sliding), (_, full) = captured.blocks[:2]
    # Local and global rotary tables differ, and so do the masks: block 0's inputs do not fit block 1.
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])
    assert sliding["attention_mask"] is not None
    assert full["attention_mask"] is None or not torch.equal(
        sliding["attention_mask"], full["attention_mask"]
    )
    # Blocks of one type share their tensors instead of holding copies.
    (_, sliding_again), (_, full_again) = captured.blocks[2:]
    assert sliding_again["attention_mask"] is sliding["attention_mask"]
    assert sliding_again["position_embeddings"][0] is sliding["position_embeddings"][0]
    assert full_again["position_embeddings"][1] is full["position_embeddings"][1]
    # ... and batches of one shape share equal ones.
    assert other_batch.blocks[0][1]["attention_mask"] is sliding["attention_mask"]
    assert not torch.equal(other_batch.hidden_states, captured.hidden_states)


def test_gemma3_wanda_equals_whole_model_reference():
    """Sliding-window and full-attention layers are each calibrated on their own mask and rotary embeddings."""
    model = gemma3()
    reference = copy.deepcopy(model)
    calibration = _calibration()
    report = sparsify_model(
        model,
        method="wanda",
        ratio=0.5,
        target_modules=DEFAULT_DECODER_LINEARS,
        calibration=calibration,
        batch_size=2,  # batches of 2 and 1: inputs of two shapes
        progress=False,
    )
    assert report.sparsity == pytest.approx(0.5)
    _reference_wanda(reference, calibration, DEFAULT_DECODER_LINEARS, 0.5)
    _assert_same_zeros(model, reference, DEFAULT_DECODER_LINEARS)


@pytest.mark.parametrize(
    "build,targets,blocks_name",
    [(gpt_neox, NEOX_LINEARS, "gpt_neox.layers"), (mpt, MPT_LINEARS, "transformer.blocks")],
    ids=["gpt-neox", "mpt"],
)
def test_wanda_on_blocks_not_named_layers(build, targets, blocks_name):
    model = build()
    assert decoder_blocks(model)[0] == blocks_name
    reference = copy.deepcopy(model)
    head = model.get_output_embeddings().weight.clone()
    calibration = _calibration()
    report = sparsify_model(
        model, method="wanda", ratio=0.5, target_modules=targets, calibration=calibration, progress=False
    )
    linears = find_linears(model, targets)
    assert len(linears) == len(targets) * model.config.num_hidden_layers
    assert set(report.layers) == set(linears)
    for linear in linears.values():
        assert ((linear.weight == 0).sum(1) == linear.in_features // 2).all()
    assert torch.equal(model.get_output_embeddings().weight, head)
    _reference_wanda(reference, calibration, targets, 0.5)
    _assert_same_zeros(model, reference, targets)


def test_decoder_blocks_by_structure(tiny_model):
    gpt2 = _seeded(GPT2LMHeadModel, GPT2Config(vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=2))
    assert decoder_blocks(gpt2)[0] == "transformer.h"
    name, blocks = decoder_blocks(tiny_model)
    assert name == "model.layers" and blocks is tiny_model.model.layers


def test_decoder_blocks_prefers_the_largest_list():
    class TwoLists(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(n_layer=2)
            self.gates = torch.nn.ModuleList(torch.nn.Linear(2, 1) for _ in range(2))
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))

    assert decoder_blocks(TwoLists())[0] == "blocks"


def test_output_head_names(tiny_model):
    assert output_head_names(gpt_neox()) == {"embed_out"}
    assert output_head_names(tiny_model) == {"lm_head"}
    # A LoRA on the head wraps it: its base layer is still the head.
    assert in_head("lm_head.base_layer", {"lm_head"}) and in_head("embed_out", {"embed_out"})
    assert not in_head("lm_head_norm", {"lm_head"}) and not in_head("model.lm_head", {"lm_head"})


def test_no_block_list_is_a_clear_error():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(num_hidden_layers=3)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    with pytest.raises(ValueError, match=r"Flat: no list of 3 same-class decoder blocks.*layers \(2\)"):
        decoder_blocks(Flat())
    with pytest.raises(ValueError, match="Sequential: .*number of layers"):
        decoder_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="Flat"):
        sparsify_model(
            Flat(), method="wanda", target_modules=["0"], calibration=_calibration(), progress=False
        )


def test_exported_gpt_neox_sparsity_leaves_out_embed_out(tmp_path, tokenizer):
    """The head (GPT-NeoX's ``embed_out``, dense) counts neither in the torch nor in the IR figure."""
    from nncf_elastic_lora.deploy.export import export_openvino
    from nncf_elastic_lora.sparsity import linear_sparsity

    model = gpt_neox(vocab_size=len(tokenizer))
    sparsify_model(model, method="magnitude", ratio=0.5, target_modules=NEOX_LINEARS, progress=False)
    model.save_pretrained(tmp_path / "sparse")
    tokenizer.save_pretrained(tmp_path / "sparse")
    assert linear_sparsity(model) == pytest.approx(0.5)
    report = export_openvino(tmp_path / "sparse", tmp_path / "ir", genai_device=None)
    assert report["source_sparsity"] == pytest.approx(0.5)
    assert report["ir_sparsity"] == pytest.approx(0.5)
