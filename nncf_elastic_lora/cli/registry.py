"""Verbs and their flags, declared once: the parser and the config overrides are both built from them.

A :class:`Flag` is one ``add_argument`` call plus, for the flags that override a config field, the
key it sets; a verb registers itself with :func:`verb`, next to the function that runs it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..config import PipelineConfig

UNSET: Any = object()  # "not given to argparse": None is a meaningful default (``--sym`` unset)


@dataclass(frozen=True)
class Flag:
    """One command-line argument and, with ``key``, the config field it overrides.

    The parsed value becomes ``key=<JSON of it>``, ahead of the ``--set`` overrides, unless it is None
    (flag not given); ``to_config`` first maps the parsed value to the config's (None: no override).
    """

    names: tuple[str, ...]
    help: str | None = None
    key: str | None = None
    to_config: Callable[[Any], Any] | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None
    default: Any = UNSET
    required: bool | None = None
    dest: str | None = None
    metavar: str | None = None

    @property
    def positional(self) -> bool:
        return not self.names[0].startswith("-")

    @property
    def attribute(self) -> str:
        """The name of the parsed value on the namespace (argparse's own rule for options)."""
        return self.dest or self.names[0].lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Declare this flag on ``parser``, passing argparse only what was given."""
        kwargs = {
            name: getattr(self, name)
            for name in ("help", "type", "choices", "action", "required", "metavar")
            if getattr(self, name) is not None
        }
        if self.default is not UNSET:  # a list default is copied: argparse appends to its own
            kwargs["default"] = list(self.default) if isinstance(self.default, list) else self.default
        if not self.positional:  # argparse refuses dest= for positionals
            kwargs["dest"] = self.attribute
        parser.add_argument(*self.names, **kwargs)

    def override(self, args: argparse.Namespace) -> str | None:
        """``key=value`` for this flag's parsed value, or None when it sets no config field."""
        if self.key is None:
            return None
        value = getattr(args, self.attribute)
        if self.to_config is not None:
            value = self.to_config(value)
        return None if value is None else f"{self.key}={json.dumps(value)}"


@dataclass(frozen=True)
class Call:
    """One invocation of a verb: its parsed flags and, for the verbs that use one, the resolved config."""

    args: argparse.Namespace
    config: PipelineConfig | None = None

    @property
    def output(self) -> Path:
        return Path(self.args.output)

    @property
    def progress(self) -> bool:
        return not self.args.no_progress

    @property
    def claim_options(self) -> dict[str, bool]:
        """What every output claim of this call passes through: ``overwrite`` and ``resume``."""
        return dict(overwrite=self.args.overwrite, resume=getattr(self.args, "resume", False))


# "none": runs as parsed (schema, tasks); "launch": after the --resume/--overwrite and launcher checks
# (benchmark); "config": after those, with the config resolved, so that every error comes before any output.
Prepare = Literal["none", "launch", "config"]


@dataclass(frozen=True)
class Verb:
    """A subcommand: its flags, its help texts and the function that runs it."""

    name: str
    run: Callable[[Call], int]
    help: str
    description: str | None = None
    flags: tuple[Flag, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)  # config values the verb always sets
    prepare: Prepare = "config"

    def overrides(self, args: argparse.Namespace) -> list[str]:
        """The config overrides of ``args``: the verb's and its flags' first, then ``--set`` in order,
        so an explicit ``--set`` wins over both."""
        front = [f"{key}={json.dumps(value)}" for key, value in self.fixed.items()]
        front += [item for item in (flag.override(args) for flag in self.flags) if item is not None]
        return front + list(getattr(args, "overrides", []))

    def resolve_config(self, args: argparse.Namespace) -> PipelineConfig:
        """The config file (or the defaults) with this invocation's overrides applied."""
        from ..config import apply_overrides, load_config
        from ..devices import placement

        config = load_config(getattr(args, "config", None))
        overrides = self.overrides(args)
        config = apply_overrides(config, overrides) if overrides else config
        placement(config.model.device, config.model.dtype)  # a device that is not here: refused before any output
        return config


VERBS: dict[str, Verb] = {}


def verb(
    name: str,
    *,
    help: str,
    description: str | None = None,
    flags: tuple[Flag, ...] = (),
    fixed: Mapping[str, Any] | None = None,
    prepare: Prepare = "config",
) -> Callable[[Callable[[Call], int]], Callable[[Call], int]]:
    """Register the decorated function as the verb ``name`` with these flags."""

    def register(run: Callable[[Call], int]) -> Callable[[Call], int]:
        if name in VERBS:
            raise AssertionError(f"verb {name!r} is registered twice")
        VERBS[name] = Verb(name, run, help, description, tuple(flags), dict(fixed or {}), prepare)
        return run

    return register


def build_parser(order: tuple[str, ...], **parser_options: Any) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered verb, listed in ``order``."""
    if set(order) != set(VERBS):
        raise AssertionError(f"help order {sorted(order)} != registered verbs {sorted(VERBS)}")
    parser = argparse.ArgumentParser(**parser_options)
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in order:
        spec = VERBS[name]
        options = {"description": spec.description} if spec.description is not None else {}
        verb_parser = sub.add_parser(name, help=spec.help, **options)
        for flag in spec.flags:
            flag.add_to(verb_parser)
    return parser
