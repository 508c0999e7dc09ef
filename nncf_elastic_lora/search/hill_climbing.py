"""Hill-climbing over a discrete search space, from a starting point (Shears' heuristic sub-adapter).

A neighbour moves one group one step along its (sorted) list of widths. Each turn evaluates the
unvisited neighbours of the current point and moves to the best neighbour if it improves on the
current point; with ``patience > 0`` it may also make up to that many non-improving moves in a row
(to cross plateaus). The **global** best is kept and returned, whatever the last turn found.
It stops at a local optimum or when ``budget`` distinct points have been scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Point = tuple[int, ...]


@dataclass
class HillClimbResult:
    best: Point
    best_score: float
    evaluations: int
    path: list[Point] = field(default_factory=list)
    stopped: str = ""


def neighbours(point: Point, choices: Sequence[Sequence[int]]) -> list[Point]:
    out = []
    for g, value in enumerate(point):
        ordered = sorted(choices[g])
        i = ordered.index(value)
        for j in (i - 1, i + 1):
            if 0 <= j < len(ordered):
                out.append(point[:g] + (ordered[j],) + point[g + 1 :])
    return out


def hill_climb(
    choices: Sequence[Sequence[int]],
    start: Point,
    score: Callable[[Point], float],
    budget: int,
    patience: int = 0,
) -> HillClimbResult:
    """Maximise ``score`` (called at most once per distinct point) from ``start``."""
    seen: dict[Point, float] = {}

    def scored(p: Point) -> float:
        if p not in seen:
            seen[p] = score(p)
        return seen[p]

    current = tuple(start)
    best, best_score = current, scored(current)
    path, stalls, stopped = [current], 0, "local optimum"
    while True:
        candidates = [n for n in neighbours(current, choices) if n not in path]
        fresh = [n for n in candidates if n not in seen]
        if len(seen) + len(fresh) > budget:
            fresh = fresh[: max(budget - len(seen), 0)]
            candidates = [n for n in candidates if n in seen or n in fresh]
            stopped = "budget"
        for n in fresh:
            scored(n)
        if not candidates:
            break
        step = max(candidates, key=lambda n: seen[n])
        if seen[step] > seen[current]:
            stalls = 0
        elif stalls < patience:
            stalls += 1
        else:
            break
        current = step
        path.append(current)
        if seen[current] > best_score:
            best, best_score = current, seen[current]
        if stopped == "budget":
            break
    return HillClimbResult(best, best_score, len(seen), path, stopped)
