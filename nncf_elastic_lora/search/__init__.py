"""Sub-adapter search: heuristic, hill-climbing, NSGA-II / R-NSGA-II; objectives and the evaluation log."""

from .driver import SearchResult, search_subadapter
from .hill_climbing import HillClimbResult, hill_climb, neighbours
from .log import Evaluation, EvaluationLog, config_key
from .nsga import NSGAResult, nsga_search, pareto_front
from .objectives import SubnetObjectives, validation_quality

__all__ = [
    "Evaluation",
    "EvaluationLog",
    "HillClimbResult",
    "NSGAResult",
    "SearchResult",
    "SubnetObjectives",
    "config_key",
    "hill_climb",
    "neighbours",
    "nsga_search",
    "pareto_front",
    "search_subadapter",
    "validation_quality",
]
