import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The plain LoRA references runs reuse: one cache per test process, never a stale one from older code.
os.environ.setdefault("NNCF_ELASTIC_LORA_PLAIN_CACHE", tempfile.mkdtemp(prefix="plain-reference-"))

import pytest  # noqa: E402

pytest.register_assert_rewrite("tests.helpers")  # its asserts explain their failures as a test's do

import torch  # noqa: E402

from nncf_elastic_lora.config import ModelConfig, TinyModelConfig  # noqa: E402
from nncf_elastic_lora.models import build_tiny_llama, load_tokenizer  # noqa: E402

# Under pytest-xdist (the default: one worker per core) each worker computes on one thread: the tiny models
# gain nothing from a second one, and two workers of two threads each would fight over the two cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

TINY = ModelConfig(
    name_or_path="tiny-random-llama",
    tiny=TinyModelConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(TINY)


@pytest.fixture
def tiny_model():
    return build_tiny_llama(TINY).eval()


# Whole pipelines (notebooks, `run` end to end): the longest files. pytest-xdist hands out whole files
# (--dist loadfile) in collection order (--no-loadscope-reorder), so these go first and the short files fill
# in behind them: otherwise its default order (most tests first) left the notebooks for last, on one worker.
LONGEST_FIRST = ("test_notebooks.py", "test_cli.py", "test_lonas.py", "test_sqft_run.py", "test_fq_lora.py",
                 "test_genai_adapters.py", "test_distributed.py", "test_export.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
