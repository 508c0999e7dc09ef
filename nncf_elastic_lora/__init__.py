"""nncf-elastic-lora: elastic low-rank adapters (Shears, SQFT, LoNAS) for compressing LLMs, shipped to OpenVINO.

The public one-call API is :mod:`nncf_elastic_lora.pipeline`; the command line is :mod:`nncf_elastic_lora.cli`.
The layers and where a new stage, method, verb or on-disk format goes: ARCHITECTURE.md at the repository root.
"""
