"""The elastic-LoRA super-network and its controller.

:class:`ElasticLoraSuperNet` attaches :class:`ElasticLoraLinear` adapters to a model's target
linears and steers them. Its vocabulary mirrors NNCF BootstrapNAS's ``TrainedSuperNet``:
``get_search_space``, ``activate_config``, ``activate_maximal_subnet``, ``activate_minimal_subnet``,
``activate_heuristic_subnet``, ``get_active_config``, ``get_macs_for_active_config``. A
configuration is a ``{group name: width}`` dict.

Saving: the super-adapter is a peft LoRA folder at the maximal rank (stock peft loads it as the
maximal sub-adapter) plus ``elastic_lora.json`` with the search space and the adapter kind. A
sub-adapter is a standard peft LoRA folder with per-module ranks in ``rank_pattern`` and
``alpha_pattern``, plus ``subnet_config.json`` (the configuration) and ``elastic_lora_sub.json``
(kind, scaling, the fingerprints of the base and of its INT4 scales), which
:func:`nncf_elastic_lora.merge.merge_adapter_from_dirs` checks before merging. Stock peft loads a
``sparsepeft``/``qa_sparsepeft`` folder too, but applies the update unmasked and unquantised: merge it
with this package instead.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..adapters import check_adapter_fits
from ..formats import ADAPTER_WEIGHTS, QUANTIZER_PREFIX
from ..outputs import atomic_directory, json_number, write_json
from ..patterns import find_linears
from ..quantization import QuantizedWeight, scales_fingerprint
from .channels import ChannelMask, GatedMLP, gated_mlps, intermediate_size
from .heads import Attention, attentions, uniform_attentions
from .lora import (
    AdapterKind,
    ElasticLoraLinear,
    FQLoraLinear,
    check_float_source,
    create_adapter_layer,
    trains_on_float_weights,
)
from .search_space import Group, build_groups

log = logging.getLogger(__name__)

SubnetConfig = dict[str, int]
SEARCH_SPACE_FILE = "elastic_lora.json"
SUB_ADAPTER_FILE = "elastic_lora_sub.json"
SUBNET_CONFIG_FILE = "subnet_config.json"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class ElasticLoraSuperNet:
    """Controller of the elastic adapters inside ``model`` (which it modifies in place)."""

    def __init__(
        self,
        model: nn.Module,
        adapters: dict[str, ElasticLoraLinear],
        groups: list[Group],
        quantized: dict[str, QuantizedWeight] | None = None,
    ):
        self.model = model
        self.adapters = adapters
        self.groups = groups
        self._by_name = {g.name: g for g in groups}
        kinds = {a.kind for a in adapters.values()}
        if len(kinds) > 1:
            raise ValueError(f"all adapters of a super-network must be of one kind, got {sorted(kinds)}")
        self.kind: AdapterKind = kinds.pop() if kinds else AdapterKind.LORA
        self.quantized = quantized  # the base's INT4 weights (qa_sparsepeft), all quantized modules
        # Mode B: one elastic width per MLP ("channels" groups), keyed by the MLP's down_proj name.
        self.channel_masks: dict[str, ChannelMask] = {}
        self.mlps: dict[str, GatedMLP] = {}
        if any(g.kind == "channels" for g in groups):
            self.mlps = {m.down: m for m in gated_mlps(model)}
            for g in groups:
                if g.kind == "channels":
                    down = g.modules[0]
                    if down not in self.mlps:
                        raise ValueError(
                            f"channel group {g.name}: {down} is not the down projection of a gated MLP"
                        )
                    size = intermediate_size(model, self.mlps[down])
                    if max(g.widths) > size:
                        raise ValueError(
                            f"channel group {g.name}: widths {list(g.widths)} exceed the {size} channels"
                        )
                    if self.kind.int4_trained:  # sliced along INT4 groups
                        _check_whole_groups(g, down, quantized)
                    self.channel_masks[down] = ChannelMask(model.get_submodule(down), size)
        # Mode B, attention: one KV-group count for every layer ("heads" group), masked on each o_proj.
        self.head_masks: dict[str, ChannelMask] = {}
        self.attentions: dict[str, Attention] = {}
        for g in groups:
            if g.kind != "heads":
                continue
            self.attentions = {a.o: a for a in attentions(model)}
            for o in g.modules:
                att = self.attentions.get(o)
                if att is None:
                    raise ValueError(f"head group {g.name}: {o} is not the output projection of an attention")
                if max(g.widths) > att.num_kv_heads:
                    raise ValueError(
                        f"head group {g.name}: KV-group counts {list(g.widths)} exceed {att.name}'s "
                        f"{att.num_kv_heads} KV heads"
                    )
                if self.kind.int4_trained:
                    _check_whole_groups(g, o, quantized, step=att.channels_per_group)
                self.head_masks[o] = ChannelMask(
                    model.get_submodule(o), att.num_kv_heads * att.channels_per_group
                )

    # ------------------------------------------------------------------ construction

    @classmethod
    def attach(
        cls,
        model: nn.Module,
        *,
        target_modules: list[str],
        max_rank: int,
        alpha: float,
        dropout: float = 0.0,
        overwrite_groups: list[list[str]] | None = None,
        overwrite_groups_widths: list[list[int]] | None = None,
        default_widths: list[int] | None = None,
        seed: int = 0,
        adapter_kind: AdapterKind | str = AdapterKind.LORA,
        quantized: dict[str, QuantizedWeight] | None = None,
        channels: Any = None,
        heads: Any = None,
    ) -> ElasticLoraSuperNet:
        """Freeze ``model`` and wrap every target linear with an elastic adapter of rank ``max_rank``.

        ``lora_A`` is initialised from a generator seeded with ``seed`` (``lora_B`` is zero), so the
        super-adapter's starting point depends on the config only, whatever the kind.
        ``adapter_kind``: ``lora``, ``sparsepeft``, ``qa_sparsepeft``, ``fq_lora`` or ``fq_sparsepeft``; the last
        three need ``quantized``
        (``{module name: QuantizedWeight}`` of the INT4 base, covering every target), checked
        against the model's weights before anything is modified. ``channels`` (a
        :class:`~nncf_elastic_lora.config.ChannelElasticityConfig`, Mode B) adds one group per decoder
        layer whose choices are that MLP's intermediate widths; ``heads`` (a
        :class:`~nncf_elastic_lora.config.HeadElasticityConfig`) one group for every layer's attention whose
        choices are the number of KV groups kept.
        """
        kind = AdapterKind.parse(adapter_kind)
        default_widths = default_widths or [max_rank]
        if max(default_widths) > max_rank:
            raise ValueError(f"default widths {default_widths} exceed the maximal rank {max_rank}")
        targets = find_linears(model, target_modules)
        groups = build_groups(
            list(targets), overwrite_groups or [], overwrite_groups_widths or [], default_widths, max_rank
        )
        if channels is not None:  # resolved (and checked) for every layer before the model is touched
            groups += [
                Group(f"mlp_channels[{m.layer}]", (m.down,), tuple(channels.widths_for(intermediate_size(model, m))),
                      "channels")
                for m in gated_mlps(model)
            ]  # fmt: skip
        if heads is not None:
            atts = uniform_attentions(model)
            groups.append(
                Group("attention_kv_groups", tuple(a.o for a in atts), tuple(heads.counts_for(atts[0].num_kv_heads)),
                      "heads")
            )  # fmt: skip
        if kind.int4_trained:
            _check_quantized_covers(targets, quantized, kind)
            _check_float_sources(targets, quantized)
        elif quantized is not None:
            raise ValueError(
                f"quantized weights are only used by qa_sparsepeft, fq_lora and fq_sparsepeft adapters, not {kind.value!r}"
            )
        layers = {}
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        trainable = {p: p.requires_grad for p in model.parameters()}
        try:  # construct (and check) every layer before the model is touched
            for name, linear in targets.items():
                layers[name] = create_adapter_layer(
                    kind, linear, max_rank, alpha, dropout, generator,
                    quantized=quantized[name] if quantized is not None else None, name=name,
                )  # fmt: skip
        except Exception:
            for p, flag in trainable.items():  # the layers built so far froze their bases
                p.requires_grad_(flag)
            raise
        for p in model.parameters():
            p.requires_grad_(False)
        for name, layer in layers.items():
            _set_module(model, name, layer)
        for q in (quantized or {}).values():
            # fq_lora: the adapted layers copied their float weights into their bases; holding them here too
            # (and those of every other INT4 module) would keep a second float model alive while training
            q.float_weight = None
        return cls(model, layers, groups, quantized)

    # ------------------------------------------------------------------ the search space

    def get_search_space(self) -> dict[str, list[int]]:
        return {g.name: list(g.widths) for g in self.groups}

    def space_size(self) -> int:
        size = 1
        for g in self.groups:
            size *= len(set(g.widths))
        return size

    def get_maximal_config(self) -> SubnetConfig:
        return {g.name: max(g.widths) for g in self.groups}

    def get_minimal_config(self) -> SubnetConfig:
        return {g.name: min(g.widths) for g in self.groups}

    def get_heuristic_config(self) -> SubnetConfig:
        return {g.name: g.heuristic for g in self.groups}

    def sample_config(self, rng: random.Random) -> SubnetConfig:
        return {g.name: rng.choice(g.widths) for g in self.groups}

    def validate_config(self, config: SubnetConfig) -> None:
        missing = set(self._by_name) - set(config)
        unknown = set(config) - set(self._by_name)
        if missing or unknown:
            raise ValueError(
                f"sub-network config does not fit the search space: missing groups {sorted(missing)[:5]}, "
                f"unknown groups {sorted(unknown)[:5]}"
            )
        for name, width in config.items():
            if width not in self._by_name[name].widths:
                raise ValueError(
                    f"group {name}: width {width} is not one of {list(self._by_name[name].widths)}"
                )

    # ------------------------------------------------------------------ activation

    def activate_config(self, config: SubnetConfig) -> None:
        self.validate_config(config)
        for name, width in config.items():
            group = self._by_name[name]
            if group.kind == "channels":
                self.channel_masks[group.modules[0]].set_width(width)
                continue
            if group.kind == "heads":
                for o in group.modules:
                    self.head_masks[o].set_width(width * self.attentions[o].channels_per_group)
                continue
            for module in group.modules:
                self.adapters[module].set_active_rank(width)

    def activate_maximal_subnet(self) -> None:
        self.activate_config(self.get_maximal_config())

    def activate_minimal_subnet(self) -> None:
        self.activate_config(self.get_minimal_config())

    def activate_heuristic_subnet(self) -> None:
        self.activate_config(self.get_heuristic_config())

    def _active_width(self, g: Group) -> int:
        if g.kind == "channels":
            return self.channel_masks[g.modules[0]].width
        if g.kind == "heads":
            o = g.modules[0]
            return self.head_masks[o].width // self.attentions[o].channels_per_group
        return self.adapters[g.modules[0]].active_rank

    def get_active_config(self) -> SubnetConfig:
        return {g.name: self._active_width(g) for g in self.groups}

    def module_ranks(self, config: SubnetConfig | None = None) -> dict[str, int]:
        """``{module name: rank}`` of a configuration (default: the active one)."""
        config = config or self.get_active_config()
        return {m: config[g.name] for g in self.groups if g.kind == "rank" for m in g.modules}

    def mlp_widths(self, config: SubnetConfig | None = None) -> dict[str, int]:
        """``{down_proj name: intermediate width}`` of a configuration (Mode B; empty in Mode A)."""
        config = config or self.get_active_config()
        return {g.modules[0]: config[g.name] for g in self.groups if g.kind == "channels"}

    def kv_groups(self, config: SubnetConfig | None = None) -> int | None:
        """KV groups every attention keeps in a configuration (None without head elasticity)."""
        config = config or self.get_active_config()
        return next((config[g.name] for g in self.groups if g.kind == "heads"), None)

    def kv_heads(self) -> int | None:
        """The base's KV heads per layer when the heads are elastic, else None."""
        return next(iter(self.attentions.values())).num_kv_heads if self.head_masks else None

    def mlp_sizes(self) -> dict[str, int]:
        """``{down_proj name: the base's intermediate size}`` of the elastic MLPs (Mode B; empty in Mode A)."""
        return {d: m.size for d, m in self.channel_masks.items()}

    def _dims(self, config: SubnetConfig | None) -> dict[str, tuple[int, int]]:
        """``{linear name: (in, out)}`` of the sub-network: the adapted linears and, in Mode B, every MLP
        projection, with the MLP widths applied."""
        dims = {m: (a.in_features, a.out_features) for m, a in self.adapters.items()}
        for down, width in self.mlp_widths(config).items():
            mlp = self.mlps[down]
            for name, cut_input in ((mlp.gate, False), (mlp.up, False), (mlp.down, True)):
                linear = self.model.get_submodule(name)
                n_in, n_out = linear.in_features, linear.out_features
                dims[name] = (width, n_out) if cut_input else (n_in, width)
        kept = self.kv_groups(config)
        if kept is not None:
            for att in self.attentions.values():
                q_width, kv_width = kept * att.channels_per_group, kept * att.head_dim
                for name, rows in ((att.q, q_width), (att.k, kv_width), (att.v, kv_width)):
                    dims[name] = (self.model.get_submodule(name).in_features, rows)
                dims[att.o] = (q_width, self.model.get_submodule(att.o).out_features)
        return dims

    # ------------------------------------------------------------------ cost

    def get_active_params(self, config: SubnetConfig | None = None) -> int:
        """Parameters of the (active) sub-adapter: ``r · (in + out)`` per module (MLP widths applied)."""
        ranks, dims = self.module_ranks(config), self._dims(config)
        return sum(r * sum(dims[m]) for m, r in ranks.items())

    def get_active_base_params(self, config: SubnetConfig | None = None) -> int:
        """Weights of the adapted linears and, in Mode B, of every MLP projection (and attention projection
        when the heads are elastic), at the sub-network's widths."""
        return sum(i * o for i, o in self._dims(config).values())

    def get_macs_for_active_config(
        self, config: SubnetConfig | None = None, seq_len: int = 1, include_base: bool = False
    ) -> int:
        """Multiply-accumulates for ``seq_len`` tokens of the adapter branches, optionally + the base weights of the
        adapted linears and, in Mode B, of every MLP projection (all at the sub-network's widths)."""
        macs = self.get_active_params(config)
        if include_base:
            macs += self.get_active_base_params(config)
        return macs * seq_len

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            *(p for a in self.adapters.values() for p in (a.lora_A.weight, a.lora_B.weight)),
            *self.quantizer_parameters(),
        ]

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """The INT4 quantisers' trainable ranges (``fq_lora``); empty for the other kinds."""
        return [
            p for a in self.adapters.values() if isinstance(a, FQLoraLinear) for p in a.quantizer_parameters()
        ]

    # ------------------------------------------------------------------ (de)serialisation

    def config_to_json(self, config: SubnetConfig | None = None) -> str:
        return json.dumps(config or self.get_active_config(), indent=2)

    def config_from_json(self, text: str) -> SubnetConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a sub-network is an object of widths by group name, not a {type(data).__name__}")
        config = {k: _whole(v, k) for k, v in data.items()}
        self.validate_config(config)
        return config

    def describe(self) -> dict[str, Any]:
        any_adapter = next(iter(self.adapters.values()))
        return {
            "adapter_kind": self.kind.value,
            "base_weight": self.base_weight(),
            "scales_fingerprint": self.scales_fingerprint(),
            "max_rank": any_adapter.max_rank,
            "alpha": any_adapter.alpha,
            "dropout": getattr(any_adapter.lora_dropout, "p", 0.0),
            "groups": [
                {"name": g.name, "modules": list(g.modules), "widths": list(g.widths), "kind": g.kind}
                for g in self.groups
            ],
            "mlp_sizes": self.mlp_sizes() or None,
            "kv_heads": self.kv_heads(),
        }

    def adapter_state_dict(
        self, config: SubnetConfig | None = None, prefix: str = "base_model.model."
    ) -> dict:
        """peft-named adapter tensors, sliced to ``config``'s ranks (default: full maximal weights)."""
        ranks = self.module_ranks(config) if config else {m: a.max_rank for m, a in self.adapters.items()}
        state = {}
        for name, rank in ranks.items():
            a, b = self.adapters[name].lora_weights(rank)
            state[f"{prefix}{name}.lora_A.weight"] = a.detach().to("cpu", torch.float32).contiguous()
            state[f"{prefix}{name}.lora_B.weight"] = b.detach().to("cpu", torch.float32).contiguous()
            layer = self.adapters[name]
            if isinstance(layer, FQLoraLinear):  # the trained ranges belong to every sub-adapter
                for key, tensor in layer.quantizer_state().items():
                    state[f"{prefix}{name}.{QUANTIZER_PREFIX}{key}"] = tensor.detach().to(
                        "cpu", torch.float32
                    )
        return state

    def _peft_config(self, ranks: dict[str, int], base_model: str | None):
        from peft import LoraConfig

        any_adapter = next(iter(self.adapters.values()))
        max_rank, alpha = any_adapter.max_rank, any_adapter.alpha
        default_rank = max(set(ranks.values()), key=list(ranks.values()).count)
        # Escaped full names: peft treats pattern keys as regexes matched at the end of a module name.
        rank_pattern = {re.escape(m): r for m, r in ranks.items() if r != default_rank}
        alpha_pattern = {re.escape(m): alpha * r / max_rank for m, r in ranks.items() if r != default_rank}
        return LoraConfig(
            r=default_rank,
            lora_alpha=alpha * default_rank / max_rank,
            lora_dropout=getattr(any_adapter.lora_dropout, "p", 0.0),
            target_modules=sorted(ranks),
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            bias="none",
            task_type="CAUSAL_LM",
            base_model_name_or_path=base_model,
        )

    def base_weight(self) -> str | None:
        """What an INT4-trained adapter's update is added to inside the quantiser: ``"float"`` (the weights the
        base was quantized from) or ``"dequantized"`` (the base's own); None for other kinds. Loading and
        merging it again need the same (:func:`~nncf_elastic_lora.elastic.lora.trains_on_float_weights`)."""
        if not self.kind.int4_trained:
            return None
        return "float" if all(getattr(a, "on_float_weight", False) for a in self.adapters.values()) else "dequantized"

    def scales_fingerprint(self) -> str | None:
        """The fingerprint of the INT4 base's scales and zero points (qa_sparsepeft), else None."""
        return scales_fingerprint(self.quantized) if self.quantized is not None else None

    def sub_adapter_record(self, config: SubnetConfig, base_fingerprint: str | None = None) -> dict[str, Any]:
        """What :data:`SUB_ADAPTER_FILE` holds: enough to merge the sub-adapter from disk, and to refuse
        a base it was not trained on."""
        any_adapter = next(iter(self.adapters.values()))
        return {
            "adapter_kind": self.kind.value,
            "base_weight": self.base_weight(),
            "max_rank": any_adapter.max_rank,
            "alpha": any_adapter.alpha,
            "scaling": any_adapter.scaling,
            "base_fingerprint": base_fingerprint,
            "scales_fingerprint": self.scales_fingerprint(),
            "module_ranks": self.module_ranks(config),
            # LoNAS (Mode B): the MLP widths of this sub-network and the base's; export refuses sliced ones.
            "mlp_widths": self.mlp_widths(config) or None,
            "mlp_sizes": self.mlp_sizes() or None,
            "kv_groups": self.kv_groups(config),
            "kv_heads": self.kv_heads(),
        }

    def save_sub_adapter(
        self,
        directory: str | Path,
        config: SubnetConfig | None = None,
        base_model: str | None = None,
        base_fingerprint: str | None = None,
    ) -> Path:
        """A standard peft LoRA folder for ``config`` (default: the active configuration).

        ``base_fingerprint`` (e.g. :func:`nncf_elastic_lora.provenance.model_fingerprint` of the base)
        is recorded so that a merge into another base is refused.
        """
        config = config or self.get_active_config()
        self.validate_config(config)
        ranks = {m: r for m, r in self.module_ranks(config).items() if r > 0}
        with atomic_directory(directory) as tmp:
            self._peft_config(ranks, base_model).save_pretrained(tmp)
            weights = self.adapter_state_dict(config)
            save_file(
                {k: v for k, v in weights.items() if v.numel()}, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"}
            )
            write_json(tmp / SUBNET_CONFIG_FILE, config)
            write_json(tmp / SUB_ADAPTER_FILE, self.sub_adapter_record(config, base_fingerprint))
        return Path(directory)

    def save_super_adapter(
        self, directory: str | Path, base_model: str | None = None, base_fingerprint: str | None = None
    ) -> Path:
        """The full super-adapter (peft folder at maximal rank) plus the search space and the kind."""
        ranks = {m: a.max_rank for m, a in self.adapters.items()}
        with atomic_directory(directory) as tmp:
            self._peft_config(ranks, base_model).save_pretrained(tmp)
            save_file(self.adapter_state_dict(), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            write_json(tmp / SEARCH_SPACE_FILE, {**self.describe(), "base_fingerprint": base_fingerprint})
        return Path(directory)

    def load_adapter_weights(self, state: dict[str, torch.Tensor], prefix: str = "base_model.model.") -> None:
        """Load full-rank adapter tensors (as :meth:`adapter_state_dict` names them)."""
        expected = set(self.adapter_state_dict(prefix=prefix))
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"adapter weights do not fit: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for name, adapter in self.adapters.items():
                adapter.lora_A.weight.copy_(state[f"{prefix}{name}.lora_A.weight"])
                adapter.lora_B.weight.copy_(state[f"{prefix}{name}.lora_B.weight"])
                if isinstance(adapter, FQLoraLinear):
                    for key, tensor in adapter.quantizer_state().items():
                        tensor.copy_(state[f"{prefix}{name}.{QUANTIZER_PREFIX}{key}"])

    @classmethod
    def load_super_adapter(
        cls,
        model: nn.Module,
        directory: str | Path,
        quantized: dict[str, QuantizedWeight] | None = None,
        base_fingerprint: str | None = None,
    ) -> ElasticLoraSuperNet:
        """Attach the saved super-adapter in ``directory`` to ``model`` (its base).

        A ``qa_sparsepeft`` super-adapter needs ``quantized`` (the INT4 base's weights); their scales
        must be the ones it was trained with. ``base_fingerprint``, when given and recorded, must match.
        """
        directory = Path(directory)
        spec_file = directory / SEARCH_SPACE_FILE
        if not spec_file.is_file():
            raise FileNotFoundError(f"{spec_file} not found: not a super-adapter folder")
        try:
            spec = json.loads(spec_file.read_text())
        except ValueError as exc:
            raise ValueError(f"{spec_file} is not valid JSON ({exc}); re-create the super-adapter") from None
        check_adapter_fits(model, directory)
        try:
            modules = [m for g in spec["groups"] if g.get("kind", "rank") == "rank" for m in g["modules"]]
            groups = [
                Group(g["name"], tuple(g["modules"]), tuple(g["widths"]), g.get("kind", "rank"))
                for g in spec["groups"]
            ]
            max_rank, alpha = int(spec["max_rank"]), float(spec["alpha"])
            kind = AdapterKind.parse(spec.get("adapter_kind", AdapterKind.LORA.value))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{spec_file} is not a valid search space (bad or missing {exc}); re-create the super-adapter"
            ) from None
        check_adapter_provenance(
            directory,
            kind=kind,
            recorded_base=spec.get("base_fingerprint"),
            recorded_scales=spec.get("scales_fingerprint"),
            base_fingerprint=base_fingerprint,
            quantized=quantized,
        )
        if kind.int4_trained and quantized is not None:
            quantized = _as_trained(directory, kind, spec, quantized, modules)
        supernet = cls.attach(
            model,
            target_modules=[f"{{re}}{re.escape(m)}" for m in modules],
            max_rank=max_rank,
            alpha=alpha,
            dropout=spec.get("dropout", 0.0),
            adapter_kind=kind,
            quantized=quantized if kind.int4_trained else None,
        )
        supernet = cls(model, supernet.adapters, groups, supernet.quantized)
        if spec.get("kv_heads") and spec["kv_heads"] != supernet.kv_heads():
            raise ValueError(
                f"super-adapter {directory.resolve()} was trained with {spec['kv_heads']} KV heads per attention, "
                f"this base has {supernet.kv_heads()}; load it on its own base"
            )
        sizes = supernet.mlp_sizes()
        if spec.get("mlp_sizes") and spec["mlp_sizes"] != sizes:
            other = next(d for d in sizes if spec["mlp_sizes"].get(d) != sizes[d])
            raise ValueError(
                f"super-adapter {directory.resolve()} was trained on MLPs of other sizes ({other}: "
                f"{spec['mlp_sizes'].get(other)} channels, this base {sizes[other]}); load it on its own base"
            )
        supernet.load_adapter_weights(load_file(directory / ADAPTER_WEIGHTS))
        return supernet


def _check_whole_groups(
    group: Group, module: str, quantized: dict[str, QuantizedWeight] | None, step: int = 1
) -> None:
    """An INT4 ``down_proj`` / ``o_proj`` is sliced along its input, so every width (× ``step`` input
    channels) must keep whole quantization groups."""
    q = (quantized or {}).get(module)
    what = "channel" if group.kind == "channels" else "head"
    if q is None:
        raise ValueError(
            f"{what} group {group.name}: {module} is not in the INT4 base's quantized weights; a "
            "super-network trained through INT4 (qa_sparsepeft, fq_lora, fq_sparsepeft) slices INT4 layers only"
        )
    off = [w for w in group.widths if (w * step) % q.group_size]
    if off:
        if group.kind == "channels":
            raise ValueError(
                f"channel group {group.name}: widths {off} are not multiples of {module}'s INT4 group size "
                f"{q.group_size}, so slicing would cut through quantization groups; choose widths in multiples "
                f"of {q.group_size} (bootstrapNAS.elasticity.channels) or quantize with a smaller group_size"
            )
        raise ValueError(
            f"head group {group.name}: {off} KV groups keep {[w * step for w in off]} of {module}'s input "
            f"channels, not multiples of its INT4 group size {q.group_size}, so slicing would cut through "
            "quantization groups; quantize with a group_size that divides one KV group's channels "
            f"({step})"
        )


def _check_quantized_covers(
    targets: dict[str, nn.Module], quantized: dict[str, QuantizedWeight] | None, kind: AdapterKind
) -> None:
    if quantized is None:
        raise ValueError(
            f"{kind.value} adapters train through the INT4 base's scales: pass quantized= "
            "({module name: QuantizedWeight}, e.g. nncf_elastic_lora.int4.load_quantized_weights(base_dir))"
        )
    missing = sorted(set(targets) - set(quantized))
    if missing:
        raise ValueError(
            f"{kind.value}: the quantized weights do not cover {len(missing)} target module(s), e.g. "
            f"{missing[:3]}; quantize every target linear of the base"
        )


def _as_trained(
    directory: Path, kind: AdapterKind, spec: dict[str, Any], quantized: dict[str, QuantizedWeight], modules: list[str]
) -> dict[str, QuantizedWeight]:
    """``quantized`` as the super-adapter in ``directory`` was trained: with the float source weights where it
    records them (refused when they are missing), without them where it trained on the dequantized weights."""
    try:
        on_float = trains_on_float_weights(kind, spec)
    except ValueError as exc:
        raise ValueError(f"{directory / SEARCH_SPACE_FILE}: {exc}") from None
    if on_float:
        missing = [m for m in modules if m in quantized and quantized[m].float_weight is None]
        if missing:
            raise ValueError(
                f"super-adapter {directory.resolve()} was trained on the float weights its INT4 base was quantized "
                f"from, but none were given for {missing[:3]}: load the base's with them "
                "(nncf_elastic_lora.stages.evaluate.base_quantized_weights(..., float_source=True))"
            )
        return quantized
    return {n: QuantizedWeight(q.codes, q.scale, q.zero_point, q.group_size, q.bits) for n, q in quantized.items()}


def _check_float_sources(targets: dict[str, nn.Module], quantized: dict[str, QuantizedWeight] | None) -> None:
    """Every target with its float source, or none (a mix would train half the layers on other weights), and
    each source the one its codes came from; checked before any layer copies one into the model."""
    with_float = [n for n in targets if quantized[n].float_weight is not None]
    if with_float and len(with_float) != len(targets):
        missing = sorted(set(targets) - set(with_float))
        raise ValueError(
            f"float source weights are given for {len(with_float)} of {len(targets)} target modules (none for "
            f"{missing[:3]}): give them for every target, or for none"
        )
    for name in with_float:
        check_float_source(quantized[name].float_weight, quantized[name], name)


def _whole(value: Any, name: str) -> int:
    """A width from JSON: an integer, or a float that is one (``4.0``, as other tools write it); nothing else."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    json_number(value, f"width of {name!r}", integer=True, minimum=0)
    return value


def check_base_record(
    where: str | Path, recorded_base: str | None, base_fingerprint: str | None, pinned: bool = False
) -> None:
    """Refuse an adapter recorded for another base than ``base_fingerprint``; warn when it records none.

    ``pinned``: something else identifies the base (a QA adapter's INT4 scales), so no warning is needed.
    """
    if base_fingerprint is None:
        return  # the caller does not know its base either: nothing to compare
    if recorded_base and recorded_base != base_fingerprint:
        raise ValueError(
            f"adapter {where} was trained on another base (base fingerprint {recorded_base}, this base "
            f"{base_fingerprint}); use it with the base it was trained on"
        )
    if not recorded_base and not pinned:
        log.warning(
            "adapter %s records no base model (no base_fingerprint: a plain peft folder, or written by an "
            "older version), so nothing checks that it was trained on this base; on another base it applies "
            "without an error and gives a wrong model (a SparsePEFT mask of other zeros, updates learnt for "
            "other weights)",
            where,
        )


def check_adapter_provenance(
    directory: str | Path,
    *,
    kind: AdapterKind,
    recorded_base: str | None,
    recorded_scales: str | None,
    base_fingerprint: str | None,
    quantized: dict[str, QuantizedWeight] | None,
) -> None:
    """Refuse an adapter trained on another base, or a qa adapter without (or with other) INT4 scales.

    An adapter that records neither its base nor (QA) its scales cannot be checked: it is accepted with a
    WARNING naming the risk (:func:`check_base_record`).
    """
    where = Path(directory).resolve()
    check_base_record(
        where, recorded_base, base_fingerprint, pinned=kind.int4_trained and bool(recorded_scales)
    )
    if not kind.int4_trained:
        return
    if quantized is None:
        raise ValueError(
            f"adapter {where} is a {kind.value} adapter: it needs the INT4 base's quantized weights "
            "(quantized=..., e.g. nncf_elastic_lora.int4.load_quantized_weights(base_dir))"
        )
    if recorded_scales and scales_fingerprint(quantized) != recorded_scales:
        raise ValueError(
            f"adapter {where} was trained through other INT4 scales and zero points (scales fingerprint "
            f"{recorded_scales}, given {scales_fingerprint(quantized)}); use the INT4 base it was trained on"
        )
