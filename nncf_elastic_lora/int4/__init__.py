"""INT4 bases (SQFT): made by NNCF (:mod:`.quantize`), stored as a checkpoint (:mod:`.checkpoint`).

The IR side (reading codes back out of an OpenVINO model) is :mod:`nncf_elastic_lora.deploy.ir`.
"""

from .checkpoint import (
    QuantizedBaseError,
    check_codes_match_weights,
    linear_module,
    load_quantized_weights,
    read_quantization_info,
    save_quantized_base,
    save_quantized_weights,
    scales_fingerprint,
)
from .quantize import FALLBACKS, adjusted_group_size, exact_int4_weights, plan_group_sizes, quantize_base

__all__ = [
    "FALLBACKS",
    "QuantizedBaseError",
    "adjusted_group_size",
    "check_codes_match_weights",
    "exact_int4_weights",
    "linear_module",
    "load_quantized_weights",
    "plan_group_sizes",
    "quantize_base",
    "read_quantization_info",
    "save_quantized_base",
    "save_quantized_weights",
    "scales_fingerprint",
]
