"""Shipping to OpenVINO: export through optimum-intel (:mod:`.export`), the one IR reader (:mod:`.ir`),
IR-against-torch parity (:mod:`.parity`) and runtime benchmarks (:mod:`.benchmark`)."""
