"""The ``nncf-elastic-lora`` command line.

Every verb reads the same JSON config (``--config FILE``; positional for ``run``), takes flags that
override single fields (``--set section.key=value`` for any of them), and writes under ``--output``.

Each verb is one small function registered with its flags (:mod:`.registry`), by family:
:mod:`.bases` (sparsify, quantize), :mod:`.nls` (train, search), :mod:`.lonas` (reorder, latency,
extract), :mod:`.ship` (run, merge, export, eval), :mod:`.benchmark`, :mod:`.info` (schema, tasks).
Nothing else in the package imports this one: the command line is the top layer.
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
