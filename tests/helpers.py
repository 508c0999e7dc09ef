"""Helpers shared by several test modules (fixtures and ``TINY`` live in ``conftest.py``)."""

from pathlib import Path

import torch

from nncf_elastic_lora.config import NLSTrainingConfig
from nncf_elastic_lora.data import Example
from nncf_elastic_lora.elastic import ElasticLoraSuperNet

# ---------------------------------------------------------------------- elastic LoRA super-network

QKV_UP_DOWN = [
    [
        "model.layers.{*}.self_attn.q_proj",
        "model.layers.{*}.self_attn.k_proj",
        "model.layers.{*}.self_attn.v_proj",
    ],
    ["model.layers.{*}.mlp.up_proj"],
    ["model.layers.{*}.mlp.down_proj"],
]
"""Three rank groups: the attention's q/k/v projections, the MLP's up projection, its down projection."""

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
"""The linears the test super-adapters target."""


def make_supernet(model, widths=(8, 6, 4), max_rank=8):
    """A super-network on ``model`` with the QKV_UP_DOWN groups at ``widths`` and non-zero, seeded B."""
    sn = ElasticLoraSuperNet.attach(
        model,
        target_modules=TARGETS,
        max_rank=max_rank,
        alpha=16,
        overwrite_groups=QKV_UP_DOWN,
        overwrite_groups_widths=[list(widths)] * 3,
    )
    gen = torch.Generator().manual_seed(0)
    for a in sn.adapters.values():  # non-zero B so every rank changes the output
        a.lora_B.weight.data = torch.randn(a.lora_B.weight.shape, generator=gen) * 0.05
    return sn


# ---------------------------------------------------------------------- training

EXAMPLES = [
    Example(id=str(i), prompt=f"Question: Calculate {i} + {i % 7} =\nAnswer:", target=f" {i + i % 7}")
    for i in range(40)
]
"""Forty small arithmetic examples to train on."""


def training_config(**kw):
    """A short NLS training config (4 steps, batch 4 x 2, seeded), with ``kw`` overriding its fields."""
    base = dict(
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_steps=0,
        seed=7,
    )
    return NLSTrainingConfig(**{**base, **kw})


def adapter_weights(supernet):
    """A copy of the super-network's adapter tensors, by name."""
    return {k: v.clone() for k, v in supernet.adapter_state_dict().items()}


# ---------------------------------------------------------------------- LoNAS

IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29], [2, 4, 6, 8, 10, 12, 14, 16]])
"""Two fixed rows of token ids, the default input of :func:`model_logits`."""


def model_logits(model, ids=IDS):
    """``model``'s logits on ``ids``, without gradients."""
    with torch.no_grad():
        return model(input_ids=ids).logits


def calibration_ids():
    """Four seeded rows of 16 random token ids, as calibration data for channel/head ordering."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 200, (1, 16), generator=g) for _ in range(4)]


def assert_export_matches_torch(common: list[str], model: Path, output: Path) -> None:
    """`export --model <extracted>` as FP32: the IR's logits and greedy tokens match torch's."""
    import json

    from nncf_elastic_lora.cli import main

    export = ["export", *common, "--model", str(model), "--set", 'export.weight_format="fp32"']
    assert main([*export, "--output", str(output)]) == 0
    parity = json.loads((output / "parity.json").read_text())["summary"]
    assert parity["logits_max_abs_diff"] < 1e-3
    assert parity["greedy_identical_genai"] == parity["prompts"] == parity["greedy_identical_optimum"]
