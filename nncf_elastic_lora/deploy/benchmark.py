"""Inference benchmark: OpenVINO GenAI's LLMPipeline, optimum-intel's Python ``generate``, torch eager.

Every runtime is measured the same way, so the figures compare:

- **TTFT**: wall time of a generation of one new token from a prompt of ``prompt_tokens`` tokens
  (prefill plus the first token);
- **decode latency**: ``(T(n) - TTFT) / (n - 1)`` per step, where ``T(n)`` is the wall time of a
  generation of exactly ``n`` new tokens (EOS ignored); at batch ``b`` a step yields ``b`` tokens;
- **tokens/s**: decode tokens per second (``b / decode latency``), and end to end (``b * n / T(n)``);
- **compile time**: load plus compile (GenAI: pipeline construction; torch: ``from_pretrained``), the
  runtime's Python libraries imported before it starts;
- **peak memory**: the process's peak resident set (``VmHWM``) over load and all runs, and its
  growth over the resident set before loading (libraries imported, so the growth is the model's). Each
  model and runtime runs in its own process (:func:`benchmark_models`), so one measurement never
  inherits another's peak.

On GenAI, every ``new_tokens`` generation's own ``perf_metrics`` (TTFT, TPOT per output token,
throughput; what ``llm_bench`` prints as first and other tokens' latency) are kept beside these
wall-clock figures, mean ± std over the repeats, and a disagreement above :data:`GENAI_TOLERANCE`
(our TTFT against GenAI's, our decode tokens/s against GenAI's throughput) is flagged in the result.

Medians over ``repeats`` runs after ``warmup`` runs of each kind. Every generation gets a fresh
prompt of seeded random token ids (exactly ``prompt_tokens`` per row, so no padding): OpenVINO
GenAI's ``LLMPipeline`` caches prompt prefixes, and a benchmark that repeats one prompt measures
that cache (here a 128-token TTFT of ~25 ms instead of ~200 ms), not a prefill.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import OV_MODEL, OV_WEIGHTS, is_openvino_dir
from ..outputs import directory_size
from ..process_memory import reset_peak_rss, status_mib
from ..runtime import check_properties

log = logging.getLogger(__name__)


class Runtime(str, Enum):
    GENAI = "genai"  # OpenVINO GenAI LLMPipeline (C++ generation loop)
    OPTIMUM = "optimum"  # optimum-intel OVModelForCausalLM.generate (Python loop over OpenVINO)
    TORCH = "torch"  # transformers eager generate on the torch checkpoint


GENAI_TOLERANCE = 0.05  # relative difference between our wall-clock figures and GenAI's that is flagged


class BenchmarkError(RuntimeError):
    """A benchmark could not run (bad model path for the runtime, worker failure)."""


def ordinary_token_ids(path: Path) -> np.ndarray:
    """The ids a benchmark prompt draws from: the base vocabulary without special tokens.

    Read from ``tokenizer.json`` with ``tokenizers`` where there is one (every optimum-intel export and
    fast-tokenizer checkpoint): the GenAI worker then never imports transformers, whose import costs
    ~5 s per measured process on these CPUs. Special: every added token flagged special, and every token
    ``tokenizer_config.json`` / ``special_tokens_map.json`` name (BOS, EOS, padding...). A tokenizer
    without ``tokenizer.json`` is loaded by transformers.
    """
    if not (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        vocab, special = tokenizer.vocab_size, set(tokenizer.all_special_ids or [])
    else:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        vocab = tokenizer.get_vocab_size(with_added_tokens=False)
        special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
        named = (tokenizer.token_to_id(t) for t in _named_special_tokens(path))
        special |= {i for i in named if i is not None}
    ordinary = np.setdiff1d(np.arange(vocab), sorted(special))
    if not len(ordinary):
        raise BenchmarkError(f"the tokenizer of {path} has no ordinary (non-special) token to draw prompts from")
    return ordinary


def _named_special_tokens(path: Path) -> set[str]:
    """Tokens the tokenizer's config files name as special (``bos_token``, ``additional_special_tokens``...)."""
    names: set[str] = set()

    def add(value: Any) -> None:
        if isinstance(value, str):
            names.add(value)
        elif isinstance(value, dict):  # a serialised AddedToken, or extra_special_tokens' {name: token}
            for v in [value["content"]] if "content" in value else value.values():
                add(v)
        elif isinstance(value, list):
            for v in value:
                add(v)

    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            config = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        for key, value in config.items() if isinstance(config, dict) else ():
            if key.endswith("_token") or key in ("additional_special_tokens", "extra_special_tokens"):
                add(value)
    return names


def prompt_ids(ordinary: np.ndarray, prompt_tokens: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``[batch, prompt_tokens]`` random ids drawn from ``ordinary`` (:func:`ordinary_token_ids`), fresh at each
    call."""
    return rng.choice(ordinary, size=(batch_size, prompt_tokens)).astype(np.int64)


class _GenAI:
    def __init__(self, path: Path, device: str, properties: dict[str, Any], adapter: Path | None = None):
        import openvino_genai

        self.adapter = None
        if adapter is None:
            self.pipe = openvino_genai.LLMPipeline(str(path), device, **properties)
        else:  # a runtime LoRA adapter on the base IR, active in every call (GenAI's dynamic mode)
            from .genai_adapters import genai_pipeline

            self.pipe, adapters = genai_pipeline(path, [adapter], device, **properties)
            self.adapter = adapters[str(adapter)]
        self.tokenizer_dir = path

    def generate(self, ids: np.ndarray, new_tokens: int) -> int:
        import openvino as ov
        import openvino_genai

        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        config = openvino_genai.GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True, do_sample=False
        )
        if self.adapter is not None:
            config.adapters = openvino_genai.AdapterConfig(self.adapter, 1.0)
        result = self.pipe.generate(inputs, config)
        m = result.perf_metrics  # GenAI's own timing of this call: TPOT is per output token, all rows counted
        self.metrics = {"ttft_ms": m.get_ttft().mean, "tpot_ms": m.get_tpot().mean,
                        "throughput_tokens_per_s": m.get_throughput().mean}  # fmt: skip
        return min(len(t) for t in result.tokens)


class _HF:
    """optimum-intel's OVModelForCausalLM or a torch model: the same ``generate`` call."""

    def __init__(self, model: Any):
        self.model = model

    def generate(self, ids: np.ndarray, new_tokens: int) -> int:
        import torch

        x = torch.from_numpy(ids)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        return out.shape[1] - ids.shape[1]


def _check_model(path: Path, runtime: Runtime, adapter: Path | None) -> None:
    """A clear error where ``path`` (and ``adapter``) is not what ``runtime`` runs."""
    if adapter is not None and runtime is not Runtime.GENAI:
        raise BenchmarkError(f"a runtime adapter ({adapter}) is applied by OpenVINO GenAI only, not {runtime.value}")
    if runtime is Runtime.TORCH:
        if not (path / "config.json").is_file() or is_openvino_dir(path):
            raise BenchmarkError(f"the torch runtime needs a Hugging Face checkpoint; {path} is not one")
    elif not is_openvino_dir(path):
        raise BenchmarkError(
            f"the {runtime.value} runtime needs an exported OpenVINO directory; {path} has no {OV_MODEL}"
        )
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise BenchmarkError(
            f"{path} has no tokenizer (tokenizer.json or tokenizer_config.json): prompts are drawn from its vocabulary"
        )


def _import_runtime(runtime: Runtime, adapter: Path | None) -> None:
    """Import the libraries ``runtime`` loads a model with, before the memory baseline and the load timer:
    compile time and memory growth are the model's, not an import's (torch and transformers: ~1-5 s and
    ~200-500 MiB on these CPUs)."""
    if runtime is Runtime.GENAI:
        import openvino_genai  # noqa: F401

        if adapter is not None:
            from . import genai_adapters  # noqa: F401
    elif runtime is Runtime.TORCH:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    else:
        import optimum.intel  # noqa: F401

        from .. import models  # noqa: F401


def _load(path: Path, runtime: Runtime, device: str, properties: dict[str, Any], adapter: Path | None = None) -> Any:
    if runtime is Runtime.TORCH:
        import torch
        from transformers import AutoModelForCausalLM

        return _HF(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
    if runtime is Runtime.GENAI:
        return _GenAI(path, device, properties, adapter)
    from ..models import load_openvino_model

    model, _ = load_openvino_model(path, device, properties, tokenizer=False)  # prompts are token ids
    return _HF(model)


def weights_bytes(path: str | Path) -> int:
    """Bytes of weights on disk: the IR's .bin, or the checkpoint's safetensors/bin files."""
    path = Path(path)
    if is_openvino_dir(path):
        return directory_size(path, OV_WEIGHTS)
    return directory_size(path, "*.safetensors") or directory_size(path, "pytorch_model*.bin")


def _timed_runs(
    runner: Any,
    fresh: Callable[[], np.ndarray],
    runtime: Runtime,
    *,
    new_tokens: int,
    repeats: int,
    warmup: int,
) -> tuple[list[float], list[float], list[dict[str, float]]]:
    """Seconds of each one-token generation and each ``new_tokens`` generation, after ``warmup`` of each,
    and GenAI's own metrics of each ``new_tokens`` generation (empty on other runtimes)."""
    for _ in range(warmup):
        runner.generate(fresh(), 1)
        runner.generate(fresh(), new_tokens)
    firsts, fulls, genai = [], [], []
    for _ in range(repeats):
        ids = fresh()
        t = time.perf_counter()
        runner.generate(ids, 1)
        firsts.append(time.perf_counter() - t)
        ids = fresh()
        t = time.perf_counter()
        produced = runner.generate(ids, new_tokens)
        fulls.append(time.perf_counter() - t)
        if getattr(runner, "metrics", None):
            genai.append(runner.metrics)
        if produced != new_tokens:
            raise BenchmarkError(
                f"{runtime.value} generated {produced} tokens, asked for exactly {new_tokens}"
            )
    return firsts, fulls, genai


def genai_figures(runs: list[dict[str, float]], ttft_ms: float, decode_tokens_per_s: float) -> dict[str, Any]:
    """GenAI's metrics over ``runs`` (mean ± std of each call's figure) and how ours compare.

    ``ours_vs_genai``: our TTFT over GenAI's and our decode tokens/s over GenAI's throughput, minus 1;
    ``disagree`` names those beyond :data:`GENAI_TOLERANCE`. Ours time the call from Python (one-token
    generations for TTFT, differences of wall times for decode); GenAI's time inside its C++ loop.
    """
    stats = {k: {"mean": statistics.fmean(r[k] for r in runs),
                 "std": statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0} for k in runs[0]}  # fmt: skip
    ours = {"ttft": ttft_ms / stats["ttft_ms"]["mean"] - 1,
            "decode_tokens_per_s": decode_tokens_per_s / stats["throughput_tokens_per_s"]["mean"] - 1}  # fmt: skip
    return {**stats, "runs": len(runs), "ours_vs_genai": ours,
            "disagree": [k for k, d in ours.items() if abs(d) > GENAI_TOLERANCE]}  # fmt: skip


def decode_speed_stderr(figures: dict[str, Any], new_tokens: int) -> float | None:
    """The relative standard error of one batch size's median decode speed, from its repeated runs.

    Each run's decode speed pairs its TTFT with its full generation (as the median figure does); the
    median's standard error is ~1.25 σ / √n. None with fewer than 3 runs.
    """
    firsts, fulls = figures.get("ttft_runs_s") or [], figures.get("generate_runs_s") or []
    batch, n = figures["batch_size"], min(len(firsts), len(fulls))
    if n < 3:
        return None
    speeds = [batch * (new_tokens - 1) / max(full - first, 1e-9) for first, full in zip(firsts[:n], fulls[:n], strict=True)]
    return 1.2533 * statistics.stdev(speeds) / statistics.fmean(speeds) / math.sqrt(n)


def _batch_figures(
    batch: int, firsts: list[float], fulls: list[float], new_tokens: int, genai: list[dict[str, float]] | None = None
) -> dict[str, Any]:
    """TTFT, decode latency and throughputs of one batch size, from the medians of its runs (and GenAI's)."""
    ttft, full = statistics.median(firsts), statistics.median(fulls)
    step = max(full - ttft, 1e-9) / (new_tokens - 1)
    figures = {
        "batch_size": batch,
        "ttft_ms": 1000 * ttft,
        "decode_ms_per_step": 1000 * step,
        "decode_tokens_per_s": batch / step,
        "e2e_tokens_per_s": batch * new_tokens / full,
        "generate_s": full,
        "ttft_runs_s": firsts,
        "generate_runs_s": fulls,
    }
    if genai:
        figures["genai_runs"] = genai
        figures["genai"] = genai_figures(genai, figures["ttft_ms"], figures["decode_tokens_per_s"])
    return figures


def benchmark_model(
    path: str | Path,
    *,
    runtime: Runtime | str = Runtime.GENAI,
    device: str = "CPU",
    properties: dict[str, Any] | None = None,
    prompt_tokens: int = 128,
    new_tokens: int = 64,
    batch_sizes: tuple[int, ...] | list[int] = (1, 4),
    repeats: int = 3,
    warmup: int = 1,
    label: str | None = None,
    seed: int = 0,
    adapter: str | Path | None = None,
) -> dict[str, Any]:
    """Measure one model on one runtime in this process; see the module docstring for the method.

    ``adapter``: a GenAI adapter file applied at run time to the IR (GenAI only)."""
    runtime, path = Runtime(runtime), Path(path)
    adapter = None if adapter is None else Path(adapter)
    if new_tokens < 2 or repeats < 1 or prompt_tokens < 1 or not batch_sizes:
        raise ValueError("need new_tokens >= 2, repeats >= 1, prompt_tokens >= 1 and at least one batch size")
    properties = dict(properties or {}) if runtime is not Runtime.TORCH else {}
    _check_model(path, runtime, adapter)
    checked = None
    if runtime is not Runtime.TORCH:
        checked = check_properties(properties, device, path / OV_MODEL)  # before the peak is reset
    ordinary = ordinary_token_ids(path)
    _import_runtime(runtime, adapter)
    rss_before = status_mib("VmRSS")
    peak_reset = reset_peak_rss()
    start = time.perf_counter()
    runner = _load(path, runtime, device, properties, adapter)
    compile_s = time.perf_counter() - start
    batches = []
    rng = np.random.default_rng(seed)
    for batch in batch_sizes:

        def fresh(batch: int = batch) -> np.ndarray:
            return prompt_ids(ordinary, prompt_tokens, batch, rng)

        firsts, fulls, genai = _timed_runs(
            runner, fresh, runtime, new_tokens=new_tokens, repeats=repeats, warmup=warmup
        )
        figures = _batch_figures(batch, firsts, fulls, new_tokens, genai)
        batches.append(figures)
        if figures.get("genai", {}).get("disagree"):
            log.warning(
                "%s batch %d: our figures and GenAI's perf_metrics differ by more than %.0f %% (%s)", path.name,
                batch, 100 * GENAI_TOLERANCE, ", ".join(f"{k} {v:+.1%}" for k, v in figures["genai"]["ours_vs_genai"].items()),
            )  # fmt: skip
        log.info("%s %s batch %d: %.1f decode tok/s", path.name, runtime.value, batch, figures["decode_tokens_per_s"])
    peak = status_mib("VmHWM")
    return {
        "label": label or path.name,
        "model": str(path),
        "adapter": None if adapter is None else str(adapter),
        "runtime": runtime.value,
        "device": device if runtime is not Runtime.TORCH else "cpu (torch)",
        "properties": properties,
        "effective_properties": checked["effective"] if checked else {},
        "property_notes": checked["notes"] if checked else [],
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "compile_s": compile_s,
        "weights_bytes": weights_bytes(path) + (adapter.stat().st_size if adapter else 0),
        "size_on_disk_bytes": directory_size(path),
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_rss_growth_mb": None
        if peak is None or rss_before is None or not peak_reset
        else peak - rss_before,
        "batches": batches,
    }


def _merge_rounds(rounds: list[list[dict[str, Any]]], new_tokens: int) -> list[dict[str, Any]]:
    """One result per model: every round's runs pooled, medians taken again over all of them."""
    merged = []
    for i, first in enumerate(rounds[0]):
        batches = []
        for j, batch in enumerate(first["batches"]):
            firsts = [t for r in rounds for t in r[i]["batches"][j]["ttft_runs_s"]]
            fulls = [t for r in rounds for t in r[i]["batches"][j]["generate_runs_s"]]
            genai = [m for r in rounds for m in r[i]["batches"][j].get("genai_runs", [])]
            batches.append(_batch_figures(batch["batch_size"], firsts, fulls, new_tokens, genai))
        merged.append({**first, "rounds": len(rounds), "batches": batches})
    return merged


def benchmark_models(
    models: list[tuple[str, str | Path, Runtime | str]] | list[tuple[str, str | Path, Runtime | str, str | Path | None]],
    *,
    isolate: bool = True,
    rounds: int = 1,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Benchmark ``(label, path, runtime[, adapter])`` tuples, each in its own process unless ``isolate`` is False
    (``adapter``: a GenAI adapter file applied at run time).

    ``rounds`` > 1 measures every model once per round, in reverse order every other round, and pools
    the runs: a machine whose speed drifts over minutes (a shared VM) then slows every model alike
    instead of whichever came last.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if rounds > 1:
        per_round = []
        for r in range(rounds):
            # matched by position: one label runs on several runtimes (and with adapters) in a row
            forward = r % 2 == 0
            got = benchmark_models(models if forward else models[::-1], isolate=isolate, **settings)
            per_round.append(got if forward else got[::-1])
        return _merge_rounds(per_round, settings.get("new_tokens", 64))
    results = []
    for label, path, runtime, *rest in models:
        adapter = str(rest[0]) if rest and rest[0] is not None else None
        _check_model(Path(path), Runtime(runtime), None if adapter is None else Path(adapter))  # one line, not a worker's
        if not isolate:
            results.append(benchmark_model(path, runtime=runtime, label=label, adapter=adapter, **settings))
            continue
        args = {"path": str(path), "runtime": Runtime(runtime).value, "label": label, "adapter": adapter, **settings}
        results.append(_in_worker(args, f"benchmark of {label} ({runtime})"))
    return results


def _in_worker(args: dict[str, Any], what: str) -> dict[str, Any]:
    """Run :func:`_worker` on ``args`` in a fresh process (its own memory peak and threads); its JSON result."""
    with tempfile.TemporaryDirectory(prefix="nel-bench-") as tmp:
        args_file, out = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_file.write_text(json.dumps(args))
        proc = subprocess.run([sys.executable, "-m", __name__, str(args_file), str(out)], stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BenchmarkError(f"{what} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())


def paired_decode_speeds(
    models: list[tuple[str, str | Path]],
    *,
    rounds: int = 20,
    prompt_tokens: int = 128,
    new_tokens: int = 64,
    device: str = "CPU",
    properties: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Batch-1 GenAI decode tokens/s of each ``(label, IR)``, all loaded in one worker process and measured in
    turn: per round one generation of each (a fresh random prompt, the same for every IR of one vocabulary), in
    reverse order every other round, after one warm-up each. A machine's drift then reaches every IR of a round
    alike, and :func:`paired_ratio` compares two IRs round by round. Returns ``{"rounds", "prompt_tokens",
    "new_tokens", "tokens_per_s": {label: [one figure per round]}}`` (GenAI's time per output token)."""
    if rounds < 2:
        raise ValueError(f"rounds must be at least 2 to pair anything, got {rounds}")
    if len(models) < 2:
        raise ValueError("paired speeds need at least two models")
    for _, path in models:
        _check_model(Path(path), Runtime.GENAI, None)
    args = {"paired": [[label, str(path)] for label, path in models], "rounds": rounds, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "device": device, "properties": properties or {}, "seed": seed}  # fmt: skip
    return _in_worker(args, "paired benchmark")


def _paired_in_process(
    paired: list[list[str]], rounds: int, prompt_tokens: int, new_tokens: int, device: str,
    properties: dict[str, Any], seed: int,
) -> dict[str, Any]:
    """:func:`paired_decode_speeds`'s measurement, in the worker process."""
    runners = {label: _GenAI(Path(path), device, properties) for label, path in paired}
    ordinary = {label: ordinary_token_ids(Path(path)) for label, path in paired}
    for label, runner in runners.items():  # warm-up
        runner.generate(prompt_ids(ordinary[label], prompt_tokens, 1, np.random.default_rng(seed)), new_tokens)
    speeds: dict[str, list[float]] = {label: [] for label in runners}
    for r in range(rounds):
        for label in list(runners) if r % 2 == 0 else list(runners)[::-1]:
            ids = prompt_ids(ordinary[label], prompt_tokens, 1, np.random.default_rng([seed, r + 1]))
            produced = runners[label].generate(ids, new_tokens)
            if produced != new_tokens:
                raise BenchmarkError(f"genai generated {produced} tokens, asked for exactly {new_tokens}")
            speeds[label].append(1000.0 / runners[label].metrics["tpot_ms"])
    return {"rounds": rounds, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "tokens_per_s": speeds}


def paired_ratio(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean over rounds of ``a[i] / b[i]`` (two IRs' speeds in one round) and its standard error."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired ratio needs two equal series of at least 2 rounds, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return statistics.fmean(ratios), statistics.stdev(ratios) / math.sqrt(len(ratios))


def measure_memory_bandwidth(mib: int = 1024, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """This machine's memory bandwidth from numpy: a threaded read (sum) and a copy, medians in GB/s.

    The array is far larger than the caches, so the figures are DRAM bandwidth. ``copy`` counts
    the bytes read plus the bytes written.
    """
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or os.cpu_count() or 1
    a = np.ones(mib * 2**20 // 4, dtype=np.float32)
    b = np.empty_like(a)
    chunks = np.array_split(a, threads)
    reads, copies = [], []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats + 1):  # the first pass faults the pages in
            t = time.perf_counter()
            list(pool.map(np.sum, chunks))
            reads.append(a.nbytes / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            np.copyto(b, a)
            copies.append(2 * a.nbytes / (time.perf_counter() - t) / 1e9)
    return {
        "read_gb_s": statistics.median(reads[1:]),
        "copy_gb_s": statistics.median(copies[1:]),
        "array_mib": mib,
        "threads": threads,
        "repeats": repeats,
    }


def bandwidth_fraction(result: dict[str, Any], read_gb_s: float) -> float | None:
    """Batch-1 decode tokens/s over the bound ``bandwidth / bytes of weights read per token``."""
    b1 = next((b for b in result["batches"] if b["batch_size"] == 1), None)
    if b1 is None or not result["weights_bytes"]:
        return None
    return b1["decode_tokens_per_s"] / (read_gb_s * 1e9 / result["weights_bytes"])


def _mean_std(stat: dict[str, float] | None) -> str | None:
    return None if stat is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def results_table(results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Rows: label | runtime | weights MiB | compile s | TTFT ms | decode ms | tok/s per batch size | peak MiB,
    then GenAI's own TTFT and TPOT (mean ± std over the repeats; empty on other runtimes) and the figures
    where ours and GenAI's differ by more than :data:`GENAI_TOLERANCE`.

    TTFT, decode latency and GenAI's figures are those of the smallest batch size measured.
    """
    sizes = sorted({b["batch_size"] for r in results for b in r["batches"]})
    headers = ["model", "runtime", "weights (MiB)", "compile (s)", f"TTFT b{sizes[0]} (ms)"]
    headers += [f"decode b{sizes[0]} (ms/step)"]
    headers += [f"decode tok/s b{s}" for s in sizes] + ["peak RSS (MiB)"]
    headers += [f"GenAI TTFT b{sizes[0]} (ms)", f"GenAI TPOT b{sizes[0]} (ms/token)", "differs from GenAI > 5 %"]
    rows = []
    for r in results:
        by = {b["batch_size"]: b for b in r["batches"]}
        first = by.get(sizes[0], r["batches"][0])
        genai = first.get("genai") or {}
        disagree = sorted({f"{k} b{b['batch_size']}" for b in r["batches"] for k in b.get("genai", {}).get("disagree", [])})
        rows.append(
            [
                r["label"],
                r["runtime"],
                r["weights_bytes"] / 2**20,
                r["compile_s"],
                first["ttft_ms"],
                first["decode_ms_per_step"],
                *(by[s]["decode_tokens_per_s"] if s in by else None for s in sizes),
                r["peak_rss_mb"],
                _mean_std(genai.get("ttft_ms")),
                _mean_std(genai.get("tpot_ms")),
                ", ".join(disagree) if genai else None,
            ]
        )
    return headers, rows


def _worker(args_file: str, out_file: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    kwargs = json.loads(Path(args_file).read_text())
    if "paired" in kwargs:
        result = _paired_in_process(**kwargs)
    else:
        result = benchmark_model(kwargs.pop("path"), **kwargs)
    Path(out_file).write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
