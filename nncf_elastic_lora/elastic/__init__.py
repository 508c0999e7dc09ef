"""Elastic low-rank adapters: the layer, the search space, the super-network controller."""

from .lora import ElasticLoraLinear
from .search_space import Group, build_groups
from .supernet import ElasticLoraSuperNet, SubnetConfig

__all__ = ["ElasticLoraLinear", "ElasticLoraSuperNet", "Group", "SubnetConfig", "build_groups"]
