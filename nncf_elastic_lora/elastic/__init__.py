"""Elastic low-rank adapters: the layers, the search space, the super-network controller."""

from .lora import (
    ADAPTER_LAYERS,
    AdapterKind,
    ElasticLoraLinear,
    FQLoraLinear,
    FQSparsePeftLinear,
    QASparsePeftLinear,
    SparsePeftLinear,
    create_adapter_layer,
)
from .search_space import Group, build_groups
from .supernet import ElasticLoraSuperNet, SubnetConfig

__all__ = [
    "ADAPTER_LAYERS",
    "AdapterKind",
    "ElasticLoraLinear",
    "ElasticLoraSuperNet",
    "FQLoraLinear",
    "FQSparsePeftLinear",
    "Group",
    "QASparsePeftLinear",
    "SparsePeftLinear",
    "SubnetConfig",
    "build_groups",
    "create_adapter_layer",
]
