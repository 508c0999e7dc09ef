"""A run is a list of named stages; a method is the list its config selects.

- :mod:`.engine`: :class:`RunState`, the :class:`Stage` protocol, the cache and :func:`execute`;
- one module per stage family, each stage's one-call function beside its ``Stage`` class:
  :mod:`.bases` (sparsify, quantize), :mod:`.nls` (train, evaluate sub-adapters, search),
  :mod:`.lonas` (reorder, latency model, extract), :mod:`.ship` (merge, export, evaluate the IR,
  references, benchmark), :mod:`.evaluate` (score a model or an IR);
- :mod:`.methods`: the lists of stages and the rules that span stages.

Nothing here imports :mod:`nncf_elastic_lora.pipeline` or :mod:`nncf_elastic_lora.cli`.
"""

from .engine import RunState, Stage, cached_stage, completed_or, execute, run_report
from .methods import check_method, method_stages

__all__ = ["RunState", "Stage", "cached_stage", "check_method", "completed_or", "execute", "method_stages", "run_report"]
