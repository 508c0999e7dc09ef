"""The evaluation log: every measured configuration, appended to a JSONL file as it is measured.

It is both the search's cache and its resume point: a killed search loses at most the evaluation
in flight, and a restarted one reads the log and re-evaluates nothing already there. Every entry
carries the fingerprint (``context``) of what it was measured on (base model, super-adapter,
objective); entries of another context stay in the file but are never reused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..outputs import json_number


@dataclass(frozen=True)
class Evaluation:
    key: str
    config: dict[str, int]
    quality: float  # higher is better (accuracy, or the negated loss)
    cost: float
    seconds: float
    source: str = ""  # which search step asked for it first
    context: str = ""  # fingerprint of the base, super-adapter and objective it was measured with


def check_evaluation(e: Evaluation) -> None:
    """Refuse a logged evaluation whose numbers no measurement gives (NaN, inf, strings, negative cost)."""
    json_number(e.quality, "quality")
    json_number(e.cost, "cost")  # a latency model's prediction may lie below zero for tiny sub-networks
    json_number(e.seconds, "seconds", minimum=0)
    if not isinstance(e.config, dict) or not e.config:
        raise ValueError(f"config is {e.config!r}, expected the widths by group name")
    for name, width in e.config.items():
        json_number(width, f"config[{name!r}]", integer=True, minimum=0)
    if not isinstance(e.key, str) or not isinstance(e.context, str):
        raise ValueError("key and context must be strings")


def config_key(widths: tuple[int, ...] | list[int]) -> str:
    return ",".join(str(w) for w in widths)


class EvaluationLog:
    def __init__(self, path: str | Path | None = None, context: str = "", read_only: bool = False):
        self.path = Path(path) if path else None
        self.read_only = read_only  # read the logged entries, append nothing (not the writing process)
        self.context = context
        self.entries: dict[str, Evaluation] = {}
        self.new_evaluations = 0
        self.other_context = 0  # logged entries measured on other inputs: not reused
        if self.path and self.path.is_file():
            text = self.path.read_text()
            if (
                text and not text.endswith("\n") and not read_only
            ):  # a line cut by a kill: drop it before appending
                text = text[: text.rfind("\n") + 1]
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(self.path)
            for number, line in enumerate(text.splitlines(), 1):
                try:
                    e = Evaluation(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue  # a line cut short by a kill: measured again
                try:
                    check_evaluation(e)
                except ValueError as exc:
                    raise ValueError(
                        f"{self.path} line {number} is damaged: {exc}; delete that line (it is measured again "
                        "on resume) or the file"
                    ) from None
                if e.context == context:
                    self.entries[e.key] = e
                else:
                    self.other_context += 1

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get_or_evaluate(
        self,
        key: str,
        config: dict[str, int],
        measure: Callable[[dict[str, int]], tuple[float, float, float]],
        source: str = "",
    ) -> Evaluation:
        """The logged evaluation of ``key``, or measure it (``-> quality, cost, seconds``) and append it."""
        if key in self.entries:
            return self.entries[key]
        quality, cost, seconds = measure(config)
        entry = Evaluation(
            key, dict(config), float(quality), float(cost), float(seconds), source, self.context
        )
        self.entries[key] = entry
        self.new_evaluations += 1
        if self.path and not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return entry
