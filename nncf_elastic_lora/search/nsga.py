"""NSGA-II and R-NSGA-II (pymoo) over the discrete sub-adapter space: maximise quality, minimise cost."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Point = tuple[int, ...]


@dataclass
class NSGAResult:
    front: list[Point]
    evaluations: int
    generations: int


def pareto_front(points: Sequence[Point], quality: Sequence[float], cost: Sequence[float]) -> list[Point]:
    """The non-dominated points (higher quality, lower cost), by pymoo's non-dominated sorting."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if not points:
        return []
    objectives = np.column_stack([-np.asarray(quality, float), np.asarray(cost, float)])
    first = NonDominatedSorting().do(objectives, only_non_dominated_front=True)
    return [points[i] for i in sorted(first, key=lambda i: (cost[i], -quality[i]))]


def nsga_search(
    choices: Sequence[Sequence[int]],
    evaluate: Callable[[Point], tuple[float, float]],
    *,
    population: int,
    generations: int,
    seed: int,
    ref_points: Sequence[Sequence[float]] | None = None,
    initial: Sequence[Point] = (),
) -> NSGAResult:
    """Run NSGA-II (or R-NSGA-II with ``ref_points`` in (−quality, cost) space).

    Variables are indices into each group's sorted widths; ``evaluate(point) -> (quality, cost)``
    is called through the caller's cache, so repeated points cost nothing.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.moo.rnsga2 import RNSGA2
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    ordered = [sorted(set(c)) for c in choices]
    to_point = lambda x: tuple(ordered[g][int(round(v))] for g, v in enumerate(x))  # noqa: E731
    calls = set()

    class SubnetProblem(Problem):
        def __init__(self):
            super().__init__(n_var=len(ordered), n_obj=2, xl=0, xu=[len(c) - 1 for c in ordered], vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            rows = []
            for row in x:
                point = to_point(row)
                calls.add(point)
                quality, cost = evaluate(point)
                rows.append([-quality, cost])
            out["F"] = np.asarray(rows, float)

    sampling: object = IntegerRandomSampling()
    if initial:
        seeds = np.array([[ordered[g].index(w) for g, w in enumerate(p)] for p in initial])
        rng = np.random.default_rng(seed)
        extra = population - len(seeds)
        if extra > 0:
            random_rows = np.column_stack([rng.integers(0, len(c), extra) for c in ordered])
            seeds = np.vstack([seeds, random_rows])
        sampling = Population.new(X=seeds[:population])
    operators = dict(
        pop_size=population,
        sampling=sampling,
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    algorithm = (
        RNSGA2(ref_points=np.asarray(ref_points, float), **operators) if ref_points else NSGA2(**operators)
    )
    res = minimize(SubnetProblem(), algorithm, ("n_gen", generations), seed=seed, verbose=False)
    evaluated = sorted(calls)
    scores = [evaluate(p) for p in evaluated]  # cached: no new measurements
    front = pareto_front(evaluated, [q for q, _ in scores], [c for _, c in scores])
    return NSGAResult(
        front=front, evaluations=len(calls), generations=int(res.algorithm.n_gen or generations)
    )
