"""Benchmark output, runtime-property checks (tiny model; figures are not asserted, fields are)."""

import json
import statistics

import numpy as np
import pytest

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.deploy.benchmark import (
    BenchmarkError,
    bandwidth_fraction,
    benchmark_model,
    benchmark_models,
    measure_memory_bandwidth,
    ordinary_token_ids,
    paired_decode_speeds,
    paired_ratio,
    prompt_ids,
    results_table,
)
from nncf_elastic_lora.deploy.export import export_openvino
from nncf_elastic_lora.models import build_tiny_llama
from nncf_elastic_lora.runtime import RuntimePropertyError, check_properties, cpu_flags, parse_properties

from .conftest import TINY

SETTINGS = dict(prompt_tokens=8, new_tokens=4, batch_sizes=[1, 2], repeats=2, warmup=1)
BATCH_FIELDS = {
    "batch_size",
    "ttft_ms",
    "decode_ms_per_step",
    "decode_tokens_per_s",
    "e2e_tokens_per_s",
    "generate_s",
}
FIELDS = {
    "label",
    "model",
    "runtime",
    "device",
    "properties",
    "effective_properties",
    "property_notes",
    "compile_s",
    "weights_bytes",
    "size_on_disk_bytes",
    "peak_rss_mb",
    "rss_before_mb",
    "batches",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("bench")
    build_tiny_llama(TINY).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    export_openvino(root / "hf", root / "ir", genai_device=None)
    return root


def _check(result, runtime):
    assert FIELDS <= set(result) and result["runtime"] == runtime
    assert result["compile_s"] > 0 and result["weights_bytes"] > 0 and result["peak_rss_mb"] > 0
    assert [b["batch_size"] for b in result["batches"]] == [1, 2]
    for b in result["batches"]:
        assert BATCH_FIELDS <= set(b)
        assert b["ttft_ms"] > 0 and b["decode_tokens_per_s"] > 0 and len(b["generate_runs_s"]) == 2


def test_every_runtime_reports_every_field(exported):
    runs = [
        ("ir", exported / "ir", "genai"),
        ("ir", exported / "ir", "optimum"),
        ("hf", exported / "hf", "torch"),
    ]
    results = benchmark_models(runs, isolate=False, **SETTINGS)
    for result, (_, _, runtime) in zip(results, runs, strict=True):
        _check(result, runtime)
    headers, rows = results_table(results)
    assert len(rows) == 3 and len(rows[0]) == len(headers)
    assert "decode tok/s b2" in headers
    # GenAI's own perf_metrics beside ours (mean ± std over the repeats), only where GenAI ran
    for b in results[0]["batches"]:
        g = b["genai"]
        assert g["runs"] == SETTINGS["repeats"] == len(b["genai_runs"])
        assert g["ttft_ms"]["mean"] > 0 and g["tpot_ms"]["mean"] > 0 and g["throughput_tokens_per_s"]["std"] >= 0
        # TPOT is per output token over every row: each run's throughput is 1000 / its TPOT (the means need
        # not agree: the mean of 1 / x is not 1 / the mean of x when runs spread, as on a loaded machine)
        for run in b["genai_runs"]:
            assert run["throughput_tokens_per_s"] == pytest.approx(1000 / run["tpot_ms"], rel=0.05)
        expected = b["decode_tokens_per_s"] / g["throughput_tokens_per_s"]["mean"] - 1
        assert g["ours_vs_genai"]["decode_tokens_per_s"] == pytest.approx(expected)
        assert set(g["disagree"]) == {k for k, d in g["ours_vs_genai"].items() if abs(d) > 0.05}
    assert all("genai" not in b for r in results[1:] for b in r["batches"])
    column = headers.index("GenAI TPOT b1 (ms/token)")
    assert " ± " in rows[0][column] and rows[1][column] is None and rows[2][column] is None


def test_isolated_run_measures_its_own_process(exported):
    (result,) = benchmark_models([("ir", exported / "ir", "genai")], isolate=True, **SETTINGS)
    _check(result, "genai")
    assert result["peak_rss_growth_mb"] is None or result["peak_rss_growth_mb"] >= 0


def test_rounds_pool_every_models_runs(exported):
    runs = [("a", exported / "ir", "genai"), ("b", exported / "hf", "torch")]
    a, b = benchmark_models(runs, isolate=False, rounds=2, **SETTINGS)
    assert (a["label"], b["label"], a["rounds"]) == ("a", "b", 2)  # the caller's order, whatever a round's
    for batch in a["batches"]:
        assert len(batch["generate_runs_s"]) == 2 * SETTINGS["repeats"] == batch["genai"]["runs"]
        assert batch["generate_s"] == statistics.median(batch["generate_runs_s"])  # over both rounds
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        benchmark_models(runs, isolate=False, rounds=0, **SETTINGS)


def test_paired_speeds_measure_every_ir_once_a_round_in_one_worker(exported):
    got = paired_decode_speeds([("a", exported / "ir"), ("b", exported / "ir")], rounds=3, prompt_tokens=8,
                               new_tokens=4)  # fmt: skip
    assert (got["rounds"], got["new_tokens"]) == (3, 4)
    assert {k: len(v) for k, v in got["tokens_per_s"].items()} == {"a": 3, "b": 3}
    assert all(x > 0 for v in got["tokens_per_s"].values() for x in v)
    with pytest.raises(ValueError, match="rounds must be at least 2 to pair anything, got 1"):
        paired_decode_speeds([("a", exported / "ir"), ("b", exported / "ir")], rounds=1)
    with pytest.raises(BenchmarkError, match="needs an exported OpenVINO directory"):
        paired_decode_speeds([("a", exported / "ir"), ("hf", exported / "hf")], rounds=2)


def test_paired_ratio_pairs_round_by_round():
    # a steady 10 % lead through a drift that moves both: the pooled medians' ratio blurs it, the pairs do not
    ours, theirs = [110.0, 55.0, 88.0], [100.0, 50.0, 80.0]
    mean, se = paired_ratio(ours, theirs)
    assert mean == pytest.approx(1.1) and se == pytest.approx(0.0, abs=1e-12)
    assert paired_ratio([2.0, 1.0], [1.0, 2.0]) == pytest.approx((1.25, 0.75))
    with pytest.raises(ValueError, match="two equal series of at least 2 rounds"):
        paired_ratio([1.0, 2.0], [1.0])


def test_wrong_model_kind_for_runtime_is_an_error(exported):
    with pytest.raises(BenchmarkError, match="OpenVINO directory"):
        benchmark_model(exported / "hf", runtime="genai", **SETTINGS)
    with pytest.raises(BenchmarkError, match="Hugging Face checkpoint"):
        benchmark_model(exported / "ir", runtime="torch", **SETTINGS)


def test_prompts_have_exact_length_and_are_fresh_each_time(tokenizer, exported):
    import numpy as np

    ordinary = ordinary_token_ids(exported / "ir")
    # every special token of either library is out: the chat-template markers too, not only BOS/EOS
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids)
    assert ordinary.tolist() == sorted(set(range(tokenizer.vocab_size)) - specials)
    rng = np.random.default_rng(0)
    first, second = prompt_ids(ordinary, 300, 3, rng), prompt_ids(ordinary, 300, 3, rng)
    assert first.shape == (3, 300)
    assert (first[0] != first[1]).any() and (first != second).any()  # no prefix a runtime could reuse
    assert not set(first.flatten().tolist()) & set(tokenizer.all_special_ids)


def test_tokens_the_config_names_special_are_left_out_too(exported, tmp_path):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(exported / "ir" / name, tmp_path / name)
    before = set(ordinary_token_ids(tmp_path).tolist())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # another tool's export: a pad token and extra tokens declared special only in the config files
    config.update(pad_token="a", extra_special_tokens={"x": "b"})
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": [{"content": "c"}]}))
    from tokenizers import Tokenizer

    ids = {Tokenizer.from_file(str(tmp_path / "tokenizer.json")).token_to_id(t) for t in "abc"}
    assert ids <= before and set(ordinary_token_ids(tmp_path).tolist()) == before - ids


def test_the_genai_worker_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = "import sys, nncf_elastic_lora.deploy.benchmark; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_prompt_vocabulary_without_tokenizer_json_comes_from_transformers(tmp_path, monkeypatch):
    import transformers

    class SentencePieceLike:  # a tokenizer saved without tokenizer.json (e.g. only tokenizer.model)
        vocab_size, all_special_ids = 6, [0, 5]

    loaded = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda p: loaded.append(p) or SentencePieceLike)
    assert ordinary_token_ids(tmp_path).tolist() == [1, 2, 3, 4] and loaded == [tmp_path]


def test_the_optimum_runtime_loads_no_tokenizer_inside_its_timed_load(exported, monkeypatch):
    import transformers

    from nncf_elastic_lora.deploy.benchmark import Runtime, _load

    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer was loaded: the benchmark feeds token ids")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    runner = _load(exported / "ir", Runtime.OPTIMUM, "CPU", {})
    assert runner.generate(np.array([[1, 2, 3]]), 2) == 2


def test_bad_runtime_properties_fail_with_their_name(exported):
    with pytest.raises(RuntimePropertyError, match="NOT_A_PROPERTY"):
        check_properties({"NOT_A_PROPERTY": 1})
    with pytest.raises(RuntimePropertyError, match="INFERENCE_PRECISION_HINT"):
        check_properties({"INFERENCE_PRECISION_HINT": "f8"})
    with pytest.raises(RuntimePropertyError, match="not available"):
        check_properties({}, device="NPU")
    with pytest.raises(RuntimePropertyError, match="KEY=VALUE"):
        parse_properties(["oops"])
    assert parse_properties(["A=0.5", "B=f32", "C=true"]) == {"A": 0.5, "B": "f32", "C": True}


def test_property_without_effect_here_is_reported(exported):
    checked = check_properties(
        {"CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": 0.5}, model_xml=exported / "ir" / "openvino_model.xml"
    )
    amx_note = any("has no effect on this CPU" in n for n in checked["notes"])
    assert amx_note == ("amx_tile" not in cpu_flags())
    # whatever the CPU, a float IR has no INT8 activations: the check names that condition
    assert any(n.startswith("CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE: the sparse kernels cannot run: INT8 activations fails")
               for n in checked["notes"])  # fmt: skip
    assert "INFERENCE_PRECISION_HINT" in checked["effective"]


def test_benchmark_verb(exported, tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "benchmark",
        "--model",
        f"tiny={exported / 'ir'}",
        "--runtime",
        "genai,optimum",
        "--output",
        str(out),
        "--prompt-tokens",
        "8",
        "--new-tokens",
        "4",
        "--batch-sizes",
        "1,2",
        "--repeats",
        "1",
        "--no-isolate",
        "--property",
        "INFERENCE_PRECISION_HINT=f32",
    ]
    assert main(args) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert {"machine", "settings", "notes", "results"} <= set(report)
    assert [r["runtime"] for r in report["results"]] == ["genai", "optimum"]
    assert report["results"][0]["effective_properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert (out / "benchmark.md").read_text().startswith("| model |")
    bad = [
        "benchmark",
        "--model",
        str(exported / "ir"),
        "--output",
        str(tmp_path / "b2"),
        "--property",
        "PERFORMANCE_HINT=FASTEST",
    ]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert main([*args, "--overwrite", "--rounds", "2"]) == 0  # our own benchmark output may be replaced
    assert "PERFORMANCE_HINT" in err and "FASTEST" in err
    report = json.loads((out / "benchmark.json").read_text())
    assert report["settings"]["rounds"] == 2 and [r["rounds"] for r in report["results"]] == [2, 2]
    assert [r["runtime"] for r in report["results"]] == ["genai", "optimum"]  # one label, two runtimes
    assert not (tmp_path / "b2").exists() or not any((tmp_path / "b2").iterdir())
    # --paired: the genai IRs again at batch 1, in one process, paired round by round against the first
    two = [*args[:3], "--model", f"again={exported / 'ir'}", "--runtime", "genai", *args[5:], "--overwrite"]
    assert main([*two, "--paired", "2"]) == 0
    paired = json.loads((out / "benchmark.json").read_text())["paired"]
    assert paired["rounds"] == 2 and set(paired["ratio_to_first"]) == {"tiny", "again"}
    assert paired["ratio_to_first"]["tiny"] == [1.0, 0.0]  # the first against itself
    assert "Paired at batch 1 (2 rounds" in (out / "benchmark.md").read_text()


def test_bandwidth_and_bound():
    bw = measure_memory_bandwidth(mib=64, repeats=2)
    assert bw["read_gb_s"] > 0 and bw["copy_gb_s"] > 0
    result = {"weights_bytes": 10**8, "batches": [{"batch_size": 1, "decode_tokens_per_s": 50.0}]}
    assert bandwidth_fraction(result, 10.0) == pytest.approx(0.5)  # bound: 10 GB/s / 100 MB = 100 tok/s


def test_benchmark_block_reads_the_same_after_a_json_round_trip():
    """A resumed run re-renders its benchmark from JSON, where the batch sizes became strings."""
    import json

    from nncf_elastic_lora.report.render import benchmark_block

    def row(label, shipped, speed):
        return {"label": label, "shipped": shipped, "weights_bytes": 2**20, "metric": "acc", "score": 0.5,
                "decode_tokens_per_s": {1: speed, 4: 2 * speed}, "speedup": {1: speed / 50, 4: speed / 50}}  # fmt: skip

    shipped = {**row("int8", True, 75.0), "genai_tpot_ms": {1: {"mean": 12.0, "std": 0.5}}, "genai_disagree": ["ttft b1"]}
    bench = {"rows": [shipped, row("dense fp32", False, 50.0)], "machine": {"cpu": "test cpu"}}
    fresh = benchmark_block(bench, {})
    reread = benchmark_block(json.loads(json.dumps(bench)), {})
    assert "At batch 1 the shipped IR decodes at 1.50x the dense fp32." in fresh.note
    assert (reread.note, reread.table) == (fresh.note, fresh.table)
    # GenAI's TPOT beside ours, the >5 % disagreement named; rows of an older report (no GenAI figures) stay empty
    headers, rows = fresh.table
    assert headers[-1] == "GenAI TPOT b1 (ms/token)"
    assert [r[-1] for r in rows] == ["12.00 ± 0.50 (differs from ours: ttft b1)", None]


def test_paired_flag_needs_two_genai_irs_without_adapters():
    from nncf_elastic_lora.cli.benchmark import _paired_models

    assert _paired_models([("a", "x", "genai")], 0) == []  # off: nothing to check
    with pytest.raises(ValueError, match=r"give at least two --model IR directories \(got 1\)"):
        _paired_models([("a", "x", "genai"), ("a", "x", "genai", "adapter.safetensors")], 3)
    assert _paired_models([("a", "x", "genai"), ("b", "y", "genai"), ("b", "y", "torch")], 3) == [("a", "x"), ("b", "y")]
