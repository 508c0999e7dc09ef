"""The plain reference's cache key: what LoRA on the dense model trains with, nothing of the method's own."""

from pathlib import Path

from nncf_elastic_lora.config import apply_overrides, load_config
from nncf_elastic_lora.stages.plain import plain_config, plain_key

QA = Path(__file__).parent.parent / "configs" / "tiny_sqft_qa_sparsepeft.json"


def test_the_key_ignores_the_methods_own_training_settings_and_follows_the_plain_ones():
    config = load_config(QA)
    key = plain_key(config)
    same = [
        "bootstrapNAS.training.qa_base_weight=float",  # the INT4 base's adapter only; plain LoRA is on the dense model
        "bootstrapNAS.training.distillation.enabled=true",
        "bootstrapNAS.training.adapter_kind=sparsepeft",
    ]
    for override in same:
        assert plain_key(apply_overrides(config, [override])) == key, override
    lr, seed = config.bootstrapNAS.training.learning_rate, config.bootstrapNAS.training.seed
    assert plain_key(apply_overrides(config, [f"bootstrapNAS.training.learning_rate={2 * lr}"])) != key
    assert plain_key(apply_overrides(config, [f"bootstrapNAS.training.seed={seed + 1}"])) != key
    trained = plain_config(apply_overrides(config, ["bootstrapNAS.training.qa_base_weight=float"])).bootstrapNAS.training
    assert (trained.adapter_kind, trained.qa_base_weight, trained.distillation.enabled) == ("lora", "dequantized", False)
