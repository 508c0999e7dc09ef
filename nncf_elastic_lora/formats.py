"""File names and on-disk formats, in one place: what each directory this tool writes or reads holds.

This module imports nothing of the package, so every layer can ask "is this an IR directory?",
"is this an INT4 base?" the same way. The formats themselves:

- **OpenVINO IR directory** (``export``): :data:`OV_MODEL` (+ ``.bin``), :data:`OV_TOKENIZER`,
  :data:`OV_DETOKENIZER`, ``export_report.json``, ``parity.json``; loads in optimum-intel and GenAI.
- **INT4 base** (``quantize``, a QA-SparsePEFT ``merge`` or ``extract``): a Hugging Face checkpoint of
  the dequantized weights plus :data:`QUANTIZED_WEIGHTS` (codes, fp16 scales, zero points) and
  :data:`QUANTIZATION_JSON` (``format`` :data:`INT4_FORMAT`, group size, symmetry, module list).
- **LoNAS extraction with per-layer MLP widths**: ``config.json`` carries :data:`PER_LAYER_KEY`.
- **PEFT adapter folder**: :data:`ADAPTER_CONFIG` and :data:`ADAPTER_WEIGHTS` (stock peft reads it).
- **Merged model**: a checkpoint with :data:`MERGE_REPORT`; **latency model**: :data:`LATENCY_MODEL`.
"""

from __future__ import annotations

import json
from pathlib import Path

OV_MODEL = "openvino_model.xml"
OV_WEIGHTS = "openvino_model.bin"
OV_TOKENIZER = "openvino_tokenizer.xml"
OV_DETOKENIZER = "openvino_detokenizer.xml"

INT4_FORMAT = "nncf-elastic-lora-int4"
INT4_FORMAT_VERSION = 1
QUANTIZED_WEIGHTS = "quantized_weights.safetensors"
# Checkpoints are written in shards of at most this size (the hub's convention), not one file of the whole model.
MAX_SHARD_SIZE = "5GB"
QUANTIZATION_JSON = "quantization.json"

PER_LAYER_KEY = "intermediate_size_per_layer"

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# fq_lora adapters keep their INT4 quantisers' trained ranges beside lora_A/lora_B in ADAPTER_WEIGHTS,
# as ``<module>.fq_quantizer.input_low`` (stock peft ignores these names).
QUANTIZER_PREFIX = "fq_quantizer."

MERGE_REPORT = "merge_report.json"
LATENCY_MODEL = "latency_model.json"


def is_openvino_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an exported OpenVINO model (:data:`OV_MODEL`)."""
    return (Path(path) / OV_MODEL).is_file()


def is_quantized_base(directory: str | Path) -> bool:
    """Whether ``directory`` holds an INT4 base (:data:`QUANTIZATION_JSON` or :data:`QUANTIZED_WEIGHTS`).

    Either file is enough, so that a base missing the other one is reported by the loader
    (:func:`nncf_elastic_lora.int4.load_quantized_weights`) rather than taken for a float checkpoint.
    """
    directory = Path(directory).expanduser()
    return (directory / QUANTIZATION_JSON).is_file() or (directory / QUANTIZED_WEIGHTS).is_file()


def per_layer_mlp_widths(model_dir: str | Path) -> list[int] | None:
    """The per-layer MLP widths a LoNAS extraction recorded in ``config.json`` (None: uniform widths)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        widths = json.loads(path.read_text()).get(PER_LAYER_KEY)
    except ValueError:
        return None  # from_pretrained names the broken file
    return [int(w) for w in widths] if widths else None
