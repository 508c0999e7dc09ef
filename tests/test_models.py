import pytest
import torch

from nncf_elastic_lora.config import ModelConfig
from nncf_elastic_lora.models import ModelNotFoundError, NonFiniteWeightsError, build_tiny_llama, load_model

from .conftest import TINY


def test_tiny_model_is_seeded():
    a, b = build_tiny_llama(TINY), build_tiny_llama(TINY)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    other = build_tiny_llama(TINY.model_copy(update={"tiny": TINY.tiny.model_copy(update={"seed": 1})}))
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, other.model.layers[0].mlp.up_proj.weight)


def test_bundled_tokenizer_is_plain_smollm2(tokenizer):
    ids = tokenizer("Calculate 5 + 91 =")["input_ids"]
    assert ids[0] != tokenizer.bos_token_id  # no BOS prepended, as SmolLM2's own tokenizer
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.decode(ids) == "Calculate 5 + 91 ="


def test_missing_model_says_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        load_model(ModelConfig(name_or_path=str(tmp_path / "no_model")))
    assert str(tmp_path / "no_model") in str(err.value) and "bundled models" in str(err.value)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(ModelConfig(name_or_path=str(tmp_path)))


def test_saved_checkpoint_round_trips(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_model(ModelConfig(name_or_path=str(tmp_path)))
    assert torch.equal(
        model.model.layers[0].self_attn.q_proj.weight, tiny_model.model.layers[0].self_attn.q_proj.weight
    )
    assert tok.eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize("value, counts", [(float("nan"), "3 NaN and 0 inf"), (float("inf"), "0 NaN and 3 inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_on_load(tmp_path, tiny_model, tokenizer, value, counts):
    with torch.no_grad():
        tiny_model.model.layers[1].mlp.down_proj.weight[0, :3] = value
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(NonFiniteWeightsError, match=rf"model\.layers\.1\.mlp\.down_proj\.weight holds {counts}"):
        load_model(ModelConfig(name_or_path=str(tmp_path)))
