"""The search space: groups of adapters that share one width choice.

Groups come from ``bootstrapNAS.elasticity.width.overwrite_groups`` (lists of module patterns) and
``overwrite_groups_widths`` (the widths each group may take). As in the Shears/LoNAS configs, a
``{*}`` in a pattern stands for a layer index and makes **one group per index**: the pattern group
``[q_proj, k_proj, v_proj]`` with ``{*}`` gives, for every decoder layer, a group of that layer's
q, k and v adapters. Adapters no group names get a group of their own with the default widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..patterns import compile_pattern


@dataclass(frozen=True)
class Group:
    name: str
    modules: tuple[str, ...]
    widths: tuple[int, ...]  # as configured: the Shears convention lists them largest first
    kind: str = "rank"  # "rank": LoRA ranks; "channels": an MLP width (modules = its down_proj); "heads": KV groups (o_projs)

    @property
    def heuristic(self) -> int:
        """The middle of the configured list (Shears' heuristic sub-adapter)."""
        return self.widths[len(self.widths) // 2]


def _index_key(captures: tuple[str, ...]) -> tuple:
    return tuple(int(c) if c.isdigit() else c for c in captures)


def build_groups(
    adapted: list[str],
    overwrite_groups: list[list[str]],
    overwrite_groups_widths: list[list[int]],
    default_widths: list[int],
    max_rank: int,
) -> list[Group]:
    """Resolve the configured groups against the adapted module names (in model order)."""
    groups: list[Group] = []
    claimed: dict[str, str] = {}
    for g, (patterns, widths) in enumerate(zip(overwrite_groups, overwrite_groups_widths, strict=True)):
        too_wide = [w for w in widths if w > max_rank]
        if too_wide:
            raise ValueError(
                f"overwrite_groups_widths[{g}] = {widths}: widths {too_wide} exceed the maximal rank "
                f"{max_rank} (bootstrapNAS.training.lora_r)"
            )
        by_index: dict[tuple, list[str]] = {}
        for raw in patterns:
            regex = compile_pattern(raw, capture=True)
            hits = [(n, regex.fullmatch(n)) for n in adapted]
            hits = [(n, m) for n, m in hits if m]
            if not hits:
                raise ValueError(
                    f"overwrite_groups[{g}] pattern {raw!r} matches no adapted module; adapted modules are "
                    f"named like {adapted[0]!r} (bootstrapNAS.training.target_modules decides which are adapted)"
                )
            for name, match in hits:
                if name in claimed:
                    raise ValueError(
                        f"module {name} is in two groups ({claimed[name]} and overwrite_groups[{g}])"
                    )
                by_index.setdefault(_index_key(match.groups()), []).append(name)
        for key, modules in sorted(by_index.items()):
            suffix = "" if not key else "[" + ",".join(str(k) for k in key) + "]"
            name = f"group{g}{suffix}"
            groups.append(Group(name, tuple(m for m in adapted if m in modules), tuple(widths)))
            for m in modules:
                claimed[m] = name
    for module in adapted:
        if module not in claimed:
            groups.append(Group(module, (module,), tuple(default_widths)))
    order = {m: i for i, m in enumerate(adapted)}
    return sorted(groups, key=lambda grp: order[grp.modules[0]])
