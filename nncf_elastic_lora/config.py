"""The NNCF-style JSON config that drives a whole pipeline.

One file, several sections (``model``, ``data``, ``sparsity``, ``bootstrapNAS``, ``evaluation``,
``export``). Every section is a pydantic model with ``extra="forbid"``, so a misspelt key fails
before any work starts, with the key's path, the bad value and what is allowed
(:class:`ConfigError`). ``nncf-elastic-lora schema`` prints the JSON Schema generated from these
models.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Every linear layer inside the decoder blocks (LLaMA, Mistral, Qwen, Phi-3 naming).
DEFAULT_DECODER_LINEARS = ["{re}(.*\\.)?layers\\.\\d+\\..+"]


# model.device: checked here for its form; nncf_elastic_lora.devices checks that it is there.
_DEVICE_SPEC = re.compile(r"^(auto|cpu|(cuda|xpu|mps)(:\d+)?)$")


class _Section(BaseModel):
    # No NaN or inf in any number; 8.0 is taken for an integer 8, but neither "8" nor true is a number.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: Any) -> Any:
        kinds = set(get_args(cls.model_fields[info.field_name].annotation) or ())
        kinds.add(cls.model_fields[info.field_name].annotation)
        if kinds & {int, float} and not kinds & {str, bool} and isinstance(value, str | bool):
            raise ValueError(f"{value!r} is a {type(value).__name__}, expected a number")
        return value


class TinyModelConfig(_Section):
    """A random LLaMA built in-process (tests, notebooks in CI); uses the bundled tokenizer."""

    hidden_size: int = Field(64, gt=0)
    intermediate_size: int = Field(128, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    max_position_embeddings: int = Field(1024, gt=0)
    seed: int = 0


class ModelConfig(_Section):
    name_or_path: str = Field(
        "smollm2-135m",
        description="A bundled model id ('smollm2-135m', 'tiny-random-llama'), a local Hugging Face "
        "model directory, or a hub id (only when online).",
    )
    device: str = Field(
        "auto",
        description="Torch device of every torch stage (calibration, training, evaluation, merge, extract): "
        "'auto' (CUDA if there is one, else XPU, else CPU), or 'cpu', 'cuda', 'cuda:N', 'xpu:N', 'mps'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights' dtype: 'auto' is bfloat16 on an accelerator and float32 on the CPU (where "
        "bfloat16 trains about 30x slower).",
    )
    cache_dir: str | None = Field(
        None,
        description="Where bundled models are converted once and cached. Default: "
        "$NNCF_ELASTIC_LORA_CACHE or ~/.cache/nncf_elastic_lora.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    trust_remote_code: bool = False

    @field_validator("device")
    @classmethod
    def _device_spec(cls, value: str) -> str:
        if not _DEVICE_SPEC.match(value):
            raise ValueError(
                f"{value!r} is not a torch device; allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'xpu', 'xpu:N', 'mps'"
            )
        return value


class SplitSizes(_Section):
    """How many examples each split gets; the three are disjoint."""

    train: int = Field(1000, ge=0)
    validation: int = Field(100, ge=0)
    test: int = Field(200, ge=0)


class DataConfig(_Section):
    task: str = Field(
        "basic_arithmetic",
        description="A bundled task (see `nncf-elastic-lora tasks`), 'json' for a local file "
        "given by `path`, or 'hf:<dataset id>' for a hub dataset (online only).",
    )
    path: str | None = Field(None, description="Local JSON/JSONL file when task is 'json'.")
    hf_subset: str | None = None
    hf_split: str | None = None
    splits: SplitSizes = Field(default_factory=SplitSizes)
    seed: int = 42
    max_length: int = Field(256, gt=8, description="Token limit of one training example.")

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.task == "json" and not self.path:
            raise ValueError("data.task is 'json' but data.path is not set")
        return self


class CalibrationConfig(_Section):
    task: str | None = Field(None, description="Calibration task; default: data.task (its train split).")
    num_samples: int = Field(128, gt=0)
    seq_len: int = Field(128, gt=1)
    seed: int = 0


class SparsityConfig(_Section):
    method: Literal["wanda", "magnitude", "none"] = "wanda"
    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="Fraction of weights zeroed (unstructured).")
    pattern: Literal["unstructured", "2:4", "4:8"] = Field(
        "unstructured", description="N:M semi-structured: N of every M consecutive inputs are zeroed."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DECODER_LINEARS),
        description="Module-name patterns: exact names, '{re}' regular expressions, '{*}' wildcards.",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)


class DistillationConfig(_Section):
    """In-place distillation, the sandwich rule of BigNAS / Once-for-All: every optimizer step also trains
    the maximal sub-network on the labels, and its logits (detached) teach the step's sampled one."""

    enabled: bool = Field(
        False,
        description="Train the maximal sub-network every step and distil it into the sampled one; a step "
        "costs about two plain NLS steps (two forwards and two backwards). Needs algorithm 'nls'.",
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of teacher and student (KL × T²).")
    weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the distillation term in the sampled sub-network's loss; the rest is its "
        "cross-entropy on the labels (BigNAS: 1.0, distillation only).",
    )


class NLSTrainingConfig(_Section):
    """Super-adapter training: NLS (a random sub-adapter per optimizer step) or plain LoRA."""

    algorithm: Literal["nls", "lora"] = Field(
        "nls", description="'nls' samples a sub-adapter per step; 'lora' trains the maximal one only."
    )
    frozen_layers_allowed: bool = Field(
        True, description="Accepted for NNCF configs; the base is always frozen."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        description="Linear layers that get an adapter (module patterns).",
    )
    lora_r: int = Field(32, gt=0, description="The super-adapter's (maximal) rank.")
    lora_alpha: float = Field(64.0, gt=0, description="Scaling is lora_alpha / lora_r at every active rank.")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    adapter_kind: Literal["lora", "sparsepeft", "qa_sparsepeft", "fq_lora", "fq_sparsepeft"] = Field(
        "lora",
        description="'lora': a plain low-rank update, shipped unmerged (Shears, SQFT); 'sparsepeft': the "
        "update is masked by the base's zeros, so it merges into a model exactly as sparse (SQFT + "
        "SparsePEFT); 'qa_sparsepeft': masked and trained through the INT4 base's frozen scales and zero "
        "points, so it merges into an INT4 model equal to the trained one (SQFT + QA-SparsePEFT; needs "
        "quantization.weight_format 'int4'); 'fq_lora': NNCF's FQ+LoRA (CompressionFormat.FQ_LORA_NLS): the "
        "update is added inside the INT4 base's fake quantiser, whose per-group ranges train too, and merges into "
        "an INT4 model under the trained scales; not masked, so a sparse base's zeros are not kept (needs "
        "quantization.weight_format 'int4'); 'fq_sparsepeft': fq_lora's trainable quantiser with SparsePEFT's "
        "mask, so the merged INT4 model keeps the sparse base's zeros under the trained scales (needs "
        "quantization.weight_format 'int4').",
    )
    qa_base_weight: Literal["dequantized", "float"] = Field(
        "dequantized",
        description="'qa_sparsepeft' only: the weight its masked update is added to inside the frozen INT4 "
        "quantiser. 'dequantized': the INT4 base's own weights, as SQFT's reference (every update under half a "
        "quantization step rounds away, so the forward cannot see it); 'float': the float weights the base was "
        "quantized from (as fq_lora, fq_sparsepeft and NNCF's FQ_LORA), so an update moves the codes of the weights near a "
        "rounding boundary. The mask is the zeros of that weight; the merge uses the same, so it still equals "
        "the trained model.",
    )
    quantizer_lr_ratio: float = Field(
        0.1,
        gt=0,
        le=1,
        description="'fq_lora' and 'fq_sparsepeft' only: the quantisers' ranges train at learning_rate × this "
        "(NNCF's example: 0.1).",
    )
    learning_rate: float = Field(3e-4, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Overrides epochs when > 0.")
    per_device_train_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    bf16: bool = Field(
        False,
        description="bf16 autocast. On GPUs and AMX CPUs it is faster; measured on an AVX-512 CPU without AMX "
        "(torch 2.13) a training step was ~35x slower than float32.",
    )
    gradient_checkpointing: bool = False
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(
        100, ge=0, description="Checkpoint every N steps (0: never); `run --resume` continues."
    )
    seed: int = 42
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)

    @model_validator(mode="after")
    def _distillation_needs_nls(self) -> NLSTrainingConfig:
        if self.distillation.enabled and self.algorithm != "nls":
            raise ValueError(
                f"distillation.enabled: in-place distillation teaches sampled sub-networks, but algorithm is "
                f"{self.algorithm!r} (the maximal one only); set algorithm 'nls' or distillation.enabled false"
            )
        return self


class WidthElasticityConfig(_Section):
    overwrite_groups: list[list[str]] = Field(
        default_factory=list,
        description="Groups of module patterns sharing one width; '{*}' (a layer index) makes one group per index.",
    )
    overwrite_groups_widths: list[list[int]] = Field(
        default_factory=list, description="The widths (ranks) each group may take, largest first."
    )
    default_widths: list[int] | None = Field(
        None, description="Widths of adapters no group names; default: [lora_r] (not elastic)."
    )

    @model_validator(mode="after")
    def _same_length(self) -> WidthElasticityConfig:
        if len(self.overwrite_groups) != len(self.overwrite_groups_widths):
            raise ValueError(
                f"overwrite_groups has {len(self.overwrite_groups)} groups but overwrite_groups_widths "
                f"has {len(self.overwrite_groups_widths)} width lists; they must pair up"
            )
        lists = [(f"overwrite_groups_widths[{i}]", w) for i, w in enumerate(self.overwrite_groups_widths)]
        if self.default_widths is not None:
            lists.append(("default_widths", self.default_widths))
        for where, widths in lists:
            if not widths or any(w <= 0 for w in widths) or len(set(widths)) != len(widths):
                raise ValueError(f"{where} = {widths}: must be a non-empty list of distinct positive ints")
        return self


class ChannelElasticityConfig(_Section):
    """LoNAS Mode B: the MLP intermediate width of every decoder layer is elastic, with the ranks."""

    fractions: list[float] | None = Field(
        None,
        description="Widths as fractions of each layer's intermediate size, largest first; default "
        "[1.0, 0.875, 0.75, 0.625, 0.5] (LoNAS: 100 % down to 50 % in 12.5 % steps). Exclusive with `channels`.",
    )
    channels: list[int] | None = Field(
        None,
        description="Widths as channel counts, largest first (the same for every layer). Exclusive with `fractions`.",
    )
    channel_step: int = Field(
        8,
        gt=0,
        description="Every width must be a multiple of this many channels (kernels like multiples of 32).",
    )
    order: Literal["importance", "original"] = Field(
        "importance",
        description="'importance': channels are permuted most important first on calibration data before "
        "slicing (function unchanged); 'original': prefixes in the checkpoint's order, as the LoNAS reference.",
    )
    calibration: CalibrationConfig = Field(
        default_factory=lambda: CalibrationConfig(num_samples=32),
        description="Calibration windows (train split) that score the channels for `reorder`.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ChannelElasticityConfig:
        if self.fractions is not None and self.channels is not None:
            raise ValueError("give the widths as `fractions` or as `channels`, not both")
        if self.fractions is not None:
            if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
                raise ValueError(f"fractions = {self.fractions}: must be a non-empty list in (0, 1]")
            if len(set(self.fractions)) != len(self.fractions):
                raise ValueError(f"fractions = {self.fractions}: must be distinct")
        if self.channels is not None:
            if (
                not self.channels
                or any(c <= 0 for c in self.channels)
                or len(set(self.channels)) != len(self.channels)
            ):
                raise ValueError(
                    f"channels = {self.channels}: must be a non-empty list of distinct positive ints"
                )
        return self

    def fractions_below_full(self, model: Any) -> list[float]:
        """The configured widths below 100 %, as fractions of the first MLP's size (for the ordering report)."""
        from .elastic.channels import gated_mlps, intermediate_size  # lazy: the schema loads without torch

        size = intermediate_size(model, gated_mlps(model)[0])
        return [w / size for w in self.widths_for(size) if w < size] or [0.5]

    def widths_for(self, size: int) -> list[int]:
        """The channel counts for an MLP of ``size`` intermediate channels (checked against it)."""
        if self.channels is not None:
            widths, source = list(self.channels), "channels"
        else:
            fractions = self.fractions or [1.0, 0.875, 0.75, 0.625, 0.5]
            widths, source = [round(f * size) for f in fractions], "fractions"
        too_wide = [w for w in widths if w > size]
        if too_wide:
            raise ValueError(
                f"bootstrapNAS.elasticity.channels.{source}: widths {too_wide} exceed the layer's "
                f"{size} intermediate channels"
            )
        off_step = [w for w in widths if w % self.channel_step]
        if off_step:
            raise ValueError(
                f"bootstrapNAS.elasticity.channels.{source}: widths {off_step} (of {size} channels) are not "
                f"multiples of channel_step={self.channel_step}"
            )
        if len(set(widths)) != len(widths):
            raise ValueError(
                f"bootstrapNAS.elasticity.channels.{source}: widths {widths} of a {size}-channel layer repeat"
            )
        return widths


class HeadElasticityConfig(_Section):
    """LoNAS Mode B, attention: how many whole key-value groups (a KV head with its query heads) every
    decoder layer keeps, elastic with the MLP widths and the ranks. GQA stays valid: no group is split."""

    kv_groups: list[int] = Field(
        description="KV-group counts to choose from, largest first, the same in every layer (e.g. [3, 2] for "
        "SmolLM2-135M's 3 KV heads); each at most the model's num_key_value_heads.",
    )
    order: Literal["importance", "original"] = Field(
        "importance",
        description="'importance': KV groups are permuted most important first on calibration data "
        "(bootstrapNAS.elasticity.channels.calibration) before slicing (function unchanged); 'original': "
        "the checkpoint's order.",
    )

    @field_validator("kv_groups")
    @classmethod
    def _distinct_positive(cls, v: list[int]) -> list[int]:
        if not v or any(c <= 0 for c in v) or len(set(v)) != len(v):
            raise ValueError(f"kv_groups = {v}: must be a non-empty list of distinct positive ints")
        return v

    def counts_for(self, num_kv_heads: int) -> list[int]:
        """The configured counts, checked against a model with ``num_kv_heads`` KV heads per layer."""
        over = [c for c in self.kv_groups if c > num_kv_heads]
        if over:
            raise ValueError(
                f"bootstrapNAS.elasticity.heads.kv_groups: {over} exceed the model's {num_kv_heads} "
                "key-value heads per layer"
            )
        return list(self.kv_groups)


class ElasticityConfig(_Section):
    available_elasticity_dims: list[Literal["width"]] = Field(default_factory=lambda: ["width"])
    mode: Literal["rank", "rank_and_channels"] = Field(
        "rank",
        description="'rank' (Shears/SQFT, Mode A): only the LoRA ranks are elastic; 'rank_and_channels' "
        "(LoNAS, Mode B): the MLP intermediate width of every decoder layer too (see `channels`).",
    )
    width: WidthElasticityConfig = Field(default_factory=WidthElasticityConfig)
    channels: ChannelElasticityConfig | None = Field(
        None, description="Mode B's channel widths (mode 'rank_and_channels'); defaults apply when absent."
    )
    heads: HeadElasticityConfig | None = Field(
        None,
        description="Mode B, optional: elastic attention heads by whole KV groups (mode 'rank_and_channels').",
    )

    @model_validator(mode="after")
    def _channels_need_mode(self) -> ElasticityConfig:
        if self.channels is not None and self.mode != "rank_and_channels":
            raise ValueError(
                f"bootstrapNAS.elasticity.channels is set but mode is {self.mode!r}; "
                "set mode to 'rank_and_channels' to make the channel widths elastic"
            )
        if self.heads is not None and self.mode != "rank_and_channels":
            raise ValueError(
                f"bootstrapNAS.elasticity.heads is set but mode is {self.mode!r}; "
                "set mode to 'rank_and_channels' (LoNAS) to make the attention heads elastic"
            )
        return self

    def channel_spec(self) -> ChannelElasticityConfig | None:
        """The channel elasticity in effect (Mode B), or None (Mode A)."""
        if self.mode != "rank_and_channels":
            return None
        return self.channels or ChannelElasticityConfig()

    def head_spec(self) -> HeadElasticityConfig | None:
        """The head elasticity in effect (Mode B with ``heads``), or None."""
        return self.heads if self.mode == "rank_and_channels" else None


class LatencyConfig(_Section):
    """The latency model of cost 'latency': sub-networks extracted, exported and measured on this machine."""

    batch_size: int = Field(1, gt=0, description="Decode batch size the latency is measured at.")
    weight_format: Literal["fp32", "fp16", "int8", "int4"] | None = Field(
        None, description="Weight format of the measured IRs; default: export.weight_format."
    )
    holdout: int = Field(
        2,
        ge=0,
        description="Random per-layer width mixes measured only to report the model's prediction error.",
    )
    repeats: int = Field(3, gt=0, description="Timed generations per sub-network (the median counts).")
    prompt_tokens: int = Field(32, gt=0)
    new_tokens: int = Field(32, gt=1)
    seed: int = 0


class SearchConfig(_Section):
    """How the sub-adapter is chosen after training (on the validation split, never on test)."""

    algorithm: Literal["heuristic", "hill_climbing", "NSGA2", "RNSGA2"] = Field(
        "heuristic",
        description="'heuristic': the middle width of each group; 'hill_climbing': from the heuristic; "
        "'NSGA2'/'RNSGA2': a Pareto front of quality against cost (pymoo).",
    )
    num_evals: int = Field(30, gt=0, description="Evaluation budget: distinct configurations measured.")
    population: int = Field(8, gt=1, description="NSGA-II population.")
    generations: int | None = Field(
        None, gt=0, description="NSGA-II generations; default num_evals // population."
    )
    ref_points: list[list[float]] | None = Field(
        None, description="R-NSGA-II reference points in (-quality, cost) space."
    )
    metric: Literal["loss", "acc"] = Field(
        "loss",
        description="Validation quality: 'loss' (log-likelihood of the gold answers) or 'acc' (multiple choice).",
    )
    cost: Literal["params", "macs", "latency"] = Field(
        "params",
        description="Adapter parameters, MACs of the adapted linears, or 'latency': decode milliseconds per "
        "token predicted by a latency model of this machine's OpenVINO runtime (LoNAS Mode B; see `latency`).",
    )
    latency: LatencyConfig = Field(
        default_factory=lambda: LatencyConfig(),
        description="How the latency model behind cost 'latency' is measured and fitted.",
    )
    seq_len: int = Field(128, gt=0, description="Tokens for the MACs cost.")
    subset_size: int = Field(64, gt=0, description="Validation examples each evaluation uses (fixed subset).")
    patience: int = Field(0, ge=0, description="Hill-climbing: non-improving moves allowed in a row.")
    select: Literal["auto", "best_quality", "cheapest_above_heuristic", "cheapest_above_plain"] = Field(
        "auto",
        description="NSGA-II's pick from the Pareto front: the highest quality, the cheapest sub-adapter "
        "at least as good as the heuristic on validation, or the cheapest at least as good as the plain "
        "alternative (LoRA on the dense model, merged; measured by `run` on the same validation examples and "
        "metric, at `floor_precision`; the best sub-adapter when none is). 'auto': 'cheapest_above_plain' where the plain "
        "alternative is measured (`run` with plain.enabled, `search --plain-quality`), else 'best_quality'.",
    )
    floor_precision: Literal["auto", "float"] = Field(
        "auto",
        description="Precision of select 'cheapest_above_plain''s floor. 'auto': the candidates' own, so on a "
        "base the run quantizes to INT4 the plain LoRA is merged and rounded data-free to that INT4 grid (the "
        "plain INT4 alternative); 'float': the plain LoRA unrounded, a bar near plain INT8's that INT4 "
        "candidates, scored with their rounding, rarely reach on 'loss'.",
    )
    seed: int = 42

    def resolved_select(self, plain_measured: bool) -> str:
        """``select`` with 'auto' decided: the plain alternative's floor where NSGA-II runs and it is measured."""
        if self.select != "auto":
            return self.select
        front = self.algorithm in ("NSGA2", "RNSGA2")
        return "cheapest_above_plain" if front and plain_measured else "best_quality"

    @model_validator(mode="after")
    def _ref_points_for_rnsga2(self) -> SearchConfig:
        if self.algorithm == "RNSGA2" and not self.ref_points:
            raise ValueError("algorithm 'RNSGA2' needs ref_points (points in (-quality, cost) space)")
        if self.ref_points and any(len(p) != 2 for p in self.ref_points):
            raise ValueError("each reference point has two values: (-quality, cost)")
        if self.select == "cheapest_above_plain" and self.algorithm not in ("NSGA2", "RNSGA2"):
            raise ValueError(
                f"select 'cheapest_above_plain' picks from NSGA-II's Pareto front, but algorithm is "
                f"{self.algorithm!r}: set algorithm to 'NSGA2' or 'RNSGA2'"
            )
        return self


class ExportCalibrationConfig(_Section):
    """Texts for data-aware weight compression (AWQ, scale estimation): a task's train split."""

    task: str | None = Field(None, description="Task whose train texts calibrate; default: data.task.")
    num_samples: int = Field(64, gt=0)


class BaseQuantizationConfig(_Section):
    """INT4 weights for the (sparse) base before the adapters train (SQFT), by NNCF on the torch model."""

    weight_format: Literal["none", "int4"] = Field(
        "none", description="'int4': quantize the base's target linears with nncf.compress_weights."
    )
    sym: bool = Field(False, description="Symmetric INT4 (no zero points); default asymmetric.")
    group_size: int = Field(64, gt=0, description="Input channels per scale.")
    group_size_fallback: Literal["error", "adjust", "ignore"] = Field(
        "adjust",
        description="When a layer's width is not a multiple of group_size: fail, use the largest valid "
        "group size >= 32, or leave the layer in full precision.",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DECODER_LINEARS),
        description="Module-name patterns of the linears to quantize (embeddings and head stay as they are).",
    )
    awq: bool = Field(
        False, description="NNCF's activation-aware weight quantization, calibrated on `calibration` texts."
    )
    scale_estimation: bool = Field(False, description="NNCF's scale estimation on `calibration` texts.")
    calibration: ExportCalibrationConfig = Field(default_factory=lambda: ExportCalibrationConfig())


class BootstrapNASConfig(_Section):
    enabled: bool = Field(True, description="Train elastic adapters after sparsification.")
    training: NLSTrainingConfig = Field(default_factory=NLSTrainingConfig)
    elasticity: ElasticityConfig = Field(default_factory=ElasticityConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @model_validator(mode="after")
    def _latency_needs_channels(self) -> BootstrapNASConfig:
        if self.search.cost == "latency" and self.elasticity.mode != "rank_and_channels":
            raise ValueError(
                f"bootstrapNAS.search.cost 'latency' needs bootstrapNAS.elasticity.mode 'rank_and_channels' "
                f"(LoNAS): the latency model predicts from the MLP widths, and mode is {self.elasticity.mode!r}; "
                "use cost 'params' or 'macs'"
            )
        spec = self.elasticity.channel_spec()
        listed = (spec.channels or spec.fractions or [1.0, 0.875, 0.75, 0.625, 0.5]) if spec else []
        if self.search.cost == "latency" and spec is not None and len(listed) < 2:
            raise ValueError(
                f"bootstrapNAS.search.cost 'latency' fits a line through sub-networks of different MLP widths, but "
                f"bootstrapNAS.elasticity.channels gives one width ({listed}); give at least two"
            )
        return self


class EvaluationConfig(_Section):
    tasks: list[str] | None = Field(None, description="Tasks to evaluate; default: data.task only.")
    split: Literal["validation", "test"] = "test"
    limit: int | None = Field(None, gt=0, description="At most this many examples per task.")
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(16, gt=0)
    perplexity: bool = Field(False, description="Also report perplexity of the split's gold texts.")
    baseline: bool = Field(True, description="`run` also evaluates the dense and the sparse model.")
    subnets: list[Literal["maximal", "heuristic", "minimal"]] = Field(
        default_factory=lambda: ["heuristic"], description="Sub-adapters `run` evaluates after training."
    )


def check_compression_options(
    weight_format: str,
    *,
    awq: bool = False,
    scale_estimation: bool = False,
    data_aware: bool = False,
    ratio: float = 1.0,
    unmerged_adapter: bool = False,
) -> None:
    """Raise ValueError for weight-compression options that cannot work together."""
    if weight_format != "int4":
        used = [
            name
            for name, on in (("awq", awq), ("scale_estimation", scale_estimation), ("data_aware", data_aware))
            if on
        ]
        if used or ratio != 1.0:
            raise ValueError(
                f"{', '.join(used) or 'ratio < 1'} applies to int4 weights, not {weight_format} "
                "(int8 is per-channel and data-free)"
            )
    if data_aware and not (awq or scale_estimation or ratio < 1.0):
        raise ValueError("data_aware has no effect unless awq, scale_estimation or ratio < 1 uses the data")
    if awq and unmerged_adapter:
        raise ValueError(
            "awq rescales the activations that an unmerged adapter's branch also reads, which would change "
            "the adapter's output; merge the adapter (merge_adapter) or drop awq (scale_estimation is fine)"
        )


class ParityConfig(_Section):
    """After export, compare the IR with torch on the first test prompts of data.task."""

    num_prompts: int = Field(4, ge=0, description="0 skips the comparison.")
    max_new_tokens: int = Field(16, gt=0)


class ExportConfig(_Section):
    """OpenVINO IR export through optimum-intel, weight compression with NNCF."""

    enabled: bool = Field(
        False,
        description="`run` exports the chosen sub-adapter with its base to OpenVINO IR (openvino/) and "
        "evaluates the IR on evaluation.tasks.",
    )
    weight_format: Literal["fp32", "fp16", "int8", "int4"] = "fp32"
    group_size: int = Field(64, gt=0, description="INT4 group size (input channels per scale).")
    group_size_fallback: Literal["error", "adjust", "ignore"] = Field(
        "adjust",
        description="When a layer's width is not a multiple of group_size: fail, use the largest valid "
        "group size >= 32 (else INT8), or leave the layer uncompressed.",
    )
    ratio: float = Field(1.0, gt=0, le=1, description="INT4: fraction of layers in INT4, the rest INT8.")
    sym: bool = Field(False, description="Symmetric quantization (no zero points).")
    awq: bool = Field(False, description="INT4: activation-aware weight quantization (AWQ).")
    scale_estimation: bool = Field(False, description="INT4: scale estimation on the calibration data.")
    data_aware: bool = Field(
        False,
        description="Calibrate the compression on `calibration` texts (implied by awq/scale_estimation).",
    )
    calibration: ExportCalibrationConfig = Field(default_factory=ExportCalibrationConfig)
    activations: Literal["none", "int8"] = Field(
        "none",
        description="'int8': quantize the activations too (W8A8: `nncf.quantize` through optimum-intel, as "
        "`optimum-cli export openvino --quant-mode int8`), calibrated on the `calibration` texts; needs "
        "weight_format 'int8'. The only kind of IR in which OpenVINO's CPU sparse-weight kernels can run "
        "(with AMX and runtime property CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE).",
    )
    backup_precision: Literal["int8_asym", "int8_sym", "none"] = Field(
        "int8_asym",
        description="INT4: the precision of the weights left out of INT4 (embeddings, LM head, layers without a "
        "valid group size), also in an INT4 base's exact-codes IR; 'int8_asym' as optimum-intel's INT4 exports, "
        "'none' keeps them float.",
    )
    merge_adapter: bool = Field(
        False,
        description="Merge the adapter into the weights; default keeps it as a low-rank branch in the IR, "
        "which keeps a sparse base sparse.",
    )
    device: str = Field("CPU", description="OpenVINO device for the IR's evaluation and checks.")
    runtime_properties: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="OpenVINO runtime properties for evaluating the IR, e.g. "
        '{"INFERENCE_PRECISION_HINT": "f32"}; default: the runtime\'s own defaults, as deployed.',
    )
    parity: ParityConfig = Field(default_factory=ParityConfig)

    @model_validator(mode="after")
    def _compatible_compression(self) -> ExportConfig:
        if self.activations == "int8" and self.weight_format != "int8":
            raise ValueError(
                f"activations 'int8' (W8A8) quantizes int8 weights and activations together, but weight_format is "
                f"{self.weight_format!r}: set weight_format to 'int8', or activations to 'none'"
            )
        if self.backup_precision != "int8_asym" and self.weight_format != "int4":
            raise ValueError(
                f"backup_precision {self.backup_precision!r} applies to int4 weights (the layers left out of INT4), "
                f"not {self.weight_format}"
            )
        check_compression_options(
            self.weight_format,
            awq=self.awq,
            scale_estimation=self.scale_estimation,
            data_aware=self.data_aware,
            ratio=self.ratio,
        )
        return self


class BenchmarkRunConfig(_Section):
    """What `run` measures after export: the shipped IR against dense IRs of the original model."""

    enabled: bool = Field(
        True, description="Benchmark the exported IR against the references (needs export.enabled)."
    )
    references: list[Literal["fp32", "fp16", "int8", "int4"]] = Field(
        default_factory=lambda: ["fp32"],
        description="Dense IRs of the original model exported, evaluated and benchmarked in the same run; "
        "the first is the reference of every speed ratio.",
    )
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4], description="Decode batch sizes.")
    prompt_tokens: int = Field(128, gt=0)
    new_tokens: int = Field(64, ge=2)
    repeats: int = Field(3, ge=1, description="Median over this many generations per batch size.")
    warmup: int = Field(1, ge=0)
    rounds: int = Field(
        2,
        ge=1,
        description="Measure every IR once per round, in reverse order every other round, and pool the runs: "
        "measured on a quiet 2-core machine, the IR timed first in a single round decoded ~25 % slower than "
        "the same IR later, which one round alone reads as a difference between the IRs.",
    )
    paired_rounds: int = Field(
        20,
        ge=0,
        description="Then every IR again, all loaded in one process, one batch-1 generation each per round, in "
        "reverse order every other round: the verdict's batch-1 ratio pairs two IRs round by round, which "
        "cancels a shared machine's drift (on these 2-core VMs: about ± 0.03 over 20 rounds, against ± 0.1 "
        "for pooled medians). 0 turns it off (then a single round is refused: it pairs nothing); skipped, "
        "and said so, when the IRs' weights together exceed half the machine's memory.",
    )

    @model_validator(mode="after")
    def _valid(self) -> BenchmarkRunConfig:
        if self.enabled and not self.references:
            raise ValueError("references is empty: give at least one dense IR to compare with, e.g. ['fp32']")
        if len(set(self.references)) != len(self.references):
            raise ValueError(f"references {self.references} repeats a format")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes {self.batch_sizes}: need at least one, each >= 1")
        if self.paired_rounds == 1:
            raise ValueError("paired_rounds 1: a ratio pairs at least 2 rounds; give 0 (off) or >= 2, e.g. 20")
        return self


class PlainReferenceConfig(_Section):
    """The plain alternative every shipped IR is measured against: what a user without this package does."""

    enabled: bool = Field(
        True,
        description="`run` (with export.enabled) also trains plain LoRA on the original dense model with the same "
        "data, steps, learning rate and maximal rank, merges it, exports it like `optimum-cli export openvino "
        "--weight-format`, evaluates it on the same split and benchmarks it beside the shipped IR; the report's "
        "verdict compares the two. Reused from `cache_dir` when every input is the same.",
    )
    weight_formats: list[Literal["fp32", "fp16", "int8", "int4"]] | None = Field(
        None,
        description="Formats of the plain export; default: the shipped IR's, plus int8 and int4 when it is neither.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where plain references are kept across runs, one folder per set of inputs; default "
        "$NNCF_ELASTIC_LORA_PLAIN_CACHE, else <model cache>/plain_reference.",
    )

    @model_validator(mode="after")
    def _valid(self) -> PlainReferenceConfig:
        if self.weight_formats is not None:
            if not self.weight_formats:
                raise ValueError("plain.weight_formats is empty: give at least one format, or null for the default")
            if len(set(self.weight_formats)) != len(self.weight_formats):
                raise ValueError(f"plain.weight_formats {self.weight_formats} repeats a format")
        return self


# Options added after runs were first saved, with the value that reproduces what versions without them did. A
# saved config that lacks one is read with that value (resume, reuse of a finished run's training); any other
# missing or changed key is a change. An option whose default does not reproduce the old behaviour stays out.
ADDED_OPTIONS: dict[str, Any] = {
    "bootstrapNAS.training.qa_base_weight": "dequantized",
    "bootstrapNAS.search.floor_precision": "float",  # the default became "auto": such a run resumes only with float
}


def with_added_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config (``model_dump(mode="json")`` of an older version) with :data:`ADDED_OPTIONS` it lacks filled
    in; a copy, the rest untouched."""
    out = copy.deepcopy(saved)
    for dotted, value in ADDED_OPTIONS.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return out


class PipelineConfig(_Section):
    """The whole JSON file."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    quantization: BaseQuantizationConfig = Field(default_factory=BaseQuantizationConfig)
    bootstrapNAS: BootstrapNASConfig = Field(default_factory=BootstrapNASConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    benchmark: BenchmarkRunConfig = Field(default_factory=BenchmarkRunConfig)
    plain: PlainReferenceConfig = Field(default_factory=PlainReferenceConfig)
    # NNCF configs carry input_info for graph tracing; we accept and ignore it so old files load.
    input_info: list[dict[str, Any]] | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _export_of_the_trained_adapter(self) -> PipelineConfig:
        ex = self.export
        unmerged = self.bootstrapNAS.training.adapter_kind == "lora" and not ex.merge_adapter
        if ex.enabled and self.bootstrapNAS.enabled and ex.awq and unmerged:
            raise ValueError(
                "export.awq with the adapter unmerged: awq rescales activations that the adapter branch also "
                "reads; set export.merge_adapter or drop export.awq"
            )
        return self


def int4_base_export_conflicts(
    *, awq: bool, scale_estimation: bool, data_aware: bool, ratio: float
) -> list[str]:
    """Export compression options that would re-quantize an INT4 base whose codes are fixed."""
    used = [
        n
        for n, on in (("awq", awq), ("scale_estimation", scale_estimation), ("data_aware", data_aware))
        if on
    ]
    return used + (["ratio"] if ratio != 1.0 else [])


class ConfigError(ValueError):
    """An invalid config: every problem with its key path, bad value and what is allowed."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys a section accepts, following ``loc`` down nested models."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")),
            annotation,
        )
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields is not None else None


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "<root>"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(PipelineConfig, loc[:-1])
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key{hint}"
    value = error.get("input")
    shown = (
        json.dumps(value)
        if isinstance(value, str | int | float | bool | type(None))
        else type(value).__name__
    )
    return f"{path}: got {shown}; {error['msg']}"


def parse_config(data: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    """Validate a config dict; raise :class:`ConfigError` listing every problem."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def load_config(path: str | Path | None) -> PipelineConfig:
    """Load a JSON config file (``None`` gives the defaults)."""
    if path is None:
        return PipelineConfig()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path.resolve()}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), [f"not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a JSON object"])
    return parse_config(data, str(path))


def apply_overrides(config: PipelineConfig, overrides: list[str]) -> PipelineConfig:
    """Apply ``key.path=value`` overrides (value parsed as JSON, else taken as a string)."""
    data = config.model_dump(mode="json")
    for item in overrides:
        if "=" not in item:
            raise ConfigError("override", [f"{item!r}: expected KEY.PATH=VALUE"])
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return parse_config(data, "after overrides")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config, generated from the pydantic models."""
    return PipelineConfig.model_json_schema()
