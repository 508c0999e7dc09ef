"""bench/plain.py: every recipe is a config `run` accepts; a bad --recipes is one clear error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import plain  # noqa: E402

from nncf_elastic_lora.stages import check_method  # noqa: E402


@pytest.mark.parametrize("recipe", list(plain.RECIPES))
def test_every_recipe_is_a_valid_run(recipe):
    config = plain.recipe_config(recipe, "piqa", 2, 7)
    check_method(config)
    t = config.bootstrapNAS.training
    assert (config.data.task, config.evaluation.tasks, t.max_steps, t.seed) == ("piqa", ["piqa"], 7, 44)
    assert config.plain.enabled and config.plain.weight_formats == ["int8", "int4"]
    assert config.export.weight_format == plain.RECIPES[recipe][2]


def test_unknown_recipe_is_one_clear_error():
    done = subprocess.run([sys.executable, str(BENCH / "plain.py"), "--recipes", "LoNAS heuristic,LoRA"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--recipes: unknown ['LoRA']" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("recipe", list(plain.SHARES_TRAINING))
def test_a_recipe_sharing_training_differs_only_after_it(recipe):
    source = plain.SHARES_TRAINING[recipe]
    a, b = (plain.recipe_config(r, "basic_arithmetic", 1, 7).model_dump(mode="json") for r in (recipe, source))
    assert plain.training_differences(a, b) == []
    assert (a["bootstrapNAS"]["search"], a["export"]) != (b["bootstrapNAS"]["search"], b["export"])


def test_training_differences_name_what_changes_the_training():
    a = plain.recipe_config("LoNAS heuristic", "piqa", 0, 7).model_dump(mode="json")
    for other, section in (
        (plain.recipe_config("LoNAS heuristic", "piqa", 0, 9), "bootstrapNAS.training"),  # other steps
        (plain.recipe_config("LoNAS heuristic", "piqa", 1, 7), "bootstrapNAS.training"),  # other seed
        (plain.recipe_config("LoNAS heuristic", "basic_arithmetic", 0, 7), "data"),
        (plain.recipe_config("LoNAS heuristic + distillation", "piqa", 0, 7), "bootstrapNAS.training"),
    ):
        assert section in plain.training_differences(a, other.model_dump(mode="json"))


def _finished_run(source, config):
    (source / "stages").mkdir(parents=True, exist_ok=True)
    (source / "report.json").write_text(json.dumps({"config": config.model_dump(mode="json")}))


def test_seeding_copies_the_training_stages_only(tmp_path, capsys):
    source, out = tmp_path / "heuristic", tmp_path / "searched"
    config = plain.recipe_config("LoNAS searched", "piqa", 0, 7)
    plain.seed_from_training(source, out, config)  # nothing trained there: the cell trains itself
    assert not out.exists()
    _finished_run(source, plain.recipe_config("LoNAS heuristic", "piqa", 0, 9))
    (source / "stages" / "train.json").write_text("{}")
    plain.seed_from_training(source, out, config)  # trained with other steps: not reused, and said so
    assert not out.exists() and "ran with other bootstrapNAS.training" in capsys.readouterr().out
    _finished_run(source, plain.recipe_config("LoNAS heuristic", "piqa", 0, 7))
    for name in ("train", "reorder", "search", "extract", "export"):
        (source / "stages").mkdir(parents=True, exist_ok=True)
        (source / "stages" / f"{name}.json").write_text("{}")
    for name in ("nls/super_adapter", "ordered_model", "extracted_model", "openvino"):
        (source / name).mkdir(parents=True)
        (source / name / "w.bin").write_text(name)
    plain.seed_from_training(source, out, config)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["reorder.json", "train.json"]
    assert sorted(p.name for p in out.iterdir()) == ["nls", "ordered_model", "stages"]
    assert (out / "nls" / "super_adapter" / "w.bin").read_text() == "nls/super_adapter"


def _cell(work, task, recipe, seed, plain_dir, shipped_dir):
    """A finished cell's report.json with its shipped IR and its plain INT8 / INT4 peers, each a folder with
    weights."""
    rows = [{"label": "OpenVINO IR (int4)", "path": str(shipped_dir), "shipped": True, "plain": False},
            {"label": "dense OpenVINO IR (int8)", "path": str(work / "dense"), "shipped": False, "plain": False}]  # fmt: skip
    for fmt in ("int8", "int4"):
        rows.append({"label": f"plain LoRA, merged, {fmt} IR", "path": str(plain_dir / f"openvino_{fmt}"),
                     "shipped": False, "plain": True})  # fmt: skip
    for row in rows:
        Path(row["path"]).mkdir(parents=True, exist_ok=True)
        (Path(row["path"]) / "openvino_model.bin").write_bytes(b"w" * 8)
    cell = work / task / plain.slug(recipe) / f"seed{seed}"
    cell.mkdir(parents=True)
    (cell / "report.json").write_text(json.dumps({"benchmark": {"rows": rows}}))


def _speed(tok_s: float) -> dict:
    fulls = [0.1 + 63 / (tok_s * f) for f in (0.95, 1.0, 1.05)]
    return {"new_tokens": 64, "batches": [{"batch_size": 1, "decode_tokens_per_s": tok_s, "ttft_runs_s": [0.1] * 3,
                                           "generate_runs_s": fulls}]}  # fmt: skip


def test_the_interleaved_pass_measures_each_ir_once_and_is_kept_while_they_stay(tmp_path, monkeypatch):
    from nncf_elastic_lora import runtime
    from nncf_elastic_lora.deploy import benchmark

    monkeypatch.setattr(plain, "WORK", tmp_path)
    monkeypatch.setattr(runtime, "machine_info", lambda: {"cpu": "test CPU"})
    _cell(tmp_path, "piqa", "FQ-LoRA", 0, tmp_path / "cache" / "key1", tmp_path / "fq")
    _cell(tmp_path, "piqa", "FQ-LoRA all linears", 0, tmp_path / "cache" / "key2", tmp_path / "fq_all")
    recipes = ["FQ-LoRA", "FQ-LoRA all linears", "LoNAS heuristic"]  # the last has not run
    irs, peers = plain.speed_irs("piqa", recipes, 0)
    assert sorted(irs) == ["FQ-LoRA", "FQ-LoRA all linears", "plain INT4 (key1)", "plain INT4 (key2)",
                           "plain INT8 (key1)", "plain INT8 (key2)"]  # fmt: skip
    assert peers["FQ-LoRA all linears"] == {"INT8": "plain INT8 (key2)", "INT4": "plain INT4 (key2)"}
    assert "LoNAS heuristic" not in peers

    calls = []
    tok_s = {"FQ-LoRA": 120.0, "plain INT8 (key1)": 100.0, "plain INT4 (key1)": 125.0}

    def fake_benchmark(models, *, rounds, **settings):
        calls.append(([m[0] for m in models], rounds))
        return [_speed(tok_s.get(label, 90.0)) for label, _, _ in models]

    monkeypatch.setattr(benchmark, "benchmark_models", fake_benchmark)
    assert plain.interleaved_speeds("piqa", irs, 0, None) is None  # nothing measured, none asked for
    speeds = plain.interleaved_speeds("piqa", irs, 0, 3)
    assert calls == [(list(irs), 3)] and speeds["seed"] == 0
    assert plain.interleaved_speeds("piqa", irs, 0, 3) == speeds and len(calls) == 1  # kept: the same IRs
    cells = plain.interleaved_cells("FQ-LoRA", peers["FQ-LoRA"], speeds)
    assert cells[0].startswith("1.20 ± ") and cells[1].startswith("0.96 ± ")
    assert plain.interleaved_cells("LoNAS heuristic", {}, speeds) == ["-", "-"]

    # the FQ-LoRA IR is exported again: its old figures are not shown, and asking measures the pass anew
    (tmp_path / "fq" / "openvino_model.bin").write_bytes(b"w" * 9)
    kept = plain.interleaved_speeds("piqa", irs, 0, None)
    assert "FQ-LoRA" not in kept["results"] and "plain INT8 (key1)" in kept["results"]
    assert plain.interleaved_cells("FQ-LoRA", peers["FQ-LoRA"], kept) == ["-", "-"]
    plain.interleaved_speeds("piqa", irs, 0, 3)
    assert len(calls) == 2
    table = "\n".join(plain.table("piqa", {"FQ-LoRA": []}, 3, {"FQ-LoRA": cells}, speeds, "test CPU, AVX2"))
    assert "interleaved b1: × plain INT8" in table and "3 rounds × 3 runs" in table and "test CPU" in table
    assert "### piqa · test CPU, AVX2" in table


def test_committed_rows_stand_in_for_missing_run_folders_per_machine_class(tmp_path, monkeypatch):
    monkeypatch.setattr(plain, "WORK", tmp_path)
    ran = []
    avx2 = {"cpu": "C", "avx512": False}
    monkeypatch.setattr(plain, "run_cell", lambda recipe, task, seed, steps, keep: ran.append(seed) or
                        {"benchmark": {"machine": avx2}})  # fmt: skip
    monkeypatch.setattr(plain, "cell_row", lambda report, precision: {"acc": 0.5, "tok_s": {1: 9.0}})
    kept = [{"seed": s, "machine": "C, AVX-512 BF16", "acc": 0.6, "tok_s": {"1": 10.0}, "ratio": {"1": 1.2}}
            for s in (0, 1)]  # fmt: skip
    args = dict(here="C, AVX2", report_only=True, keep=False)
    rows = plain.recipe_rows("piqa", "FQ-LoRA", 3, 7, kept, **args)
    assert ran == [] and [(r["seed"], r["kept"]) for r in rows] == [(0, True), (1, True)]
    assert rows[0]["tok_s"] == {1: 10.0} and rows[0]["ratio"] == {1: 1.2}  # batch keys as cell_row makes them
    cell = tmp_path / "piqa" / plain.slug("FQ-LoRA") / "seed0"
    cell.mkdir(parents=True)
    (cell / "report.json").write_text("{}")
    rows = plain.recipe_rows("piqa", "FQ-LoRA", 3, 7, kept, **args)
    # the run here is a row of its own machine class; the committed seed 0 of the other class stays
    assert ran == [0] and [(r["machine"], r["seed"], "kept" in r) for r in rows] == [
        ("C, AVX-512 BF16", 0, True), ("C, AVX-512 BF16", 1, True), ("C, AVX2", 0, False)]
    ran.clear()
    # not report-only: missing cells run, except a seed committed from this machine class
    rows = plain.recipe_rows("piqa", "FQ-LoRA", 2, 7, kept, **{**args, "here": "C, AVX-512 BF16", "report_only": False})
    assert ran == [0] and len(rows) == 3
    plain.recipe_rows("piqa", "FQ-LoRA", 3, 7, kept, **{**args, "report_only": False})
    assert ran == [0, 0, 1, 2]


@pytest.mark.parametrize("flags, error", [
    (["--interleaved", "0"], "--interleaved 0: need at least 1 round"),
    (["--seeds", "2", "--speed-seed", "2"], "--speed-seed 2: choose one of the seeds run, 0 to 1"),
])  # fmt: skip
def test_bad_interleaved_flags_are_one_clear_error(flags, error):
    done = subprocess.run([sys.executable, str(BENCH / "plain.py"), "--report-only", *flags],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert error in done.stderr.strip().splitlines()[-1]


def test_a_finished_cell_of_another_recipe_version_is_refused_not_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plain, "WORK", tmp_path)
    config = plain.recipe_config("SQFT + QA-SparsePEFT", "piqa", 0, 7)
    saved = config.model_dump(mode="json")
    del saved["bootstrapNAS"]["training"]["qa_base_weight"]  # finished before the option existed: dequantized
    assert config.bootstrapNAS.training.qa_base_weight == "float"  # what the recipe trains on now
    assert plain.training_differences(saved, config.model_dump(mode="json")) == ["bootstrapNAS.training"]
    cell = tmp_path / "piqa" / plain.slug("SQFT + QA-SparsePEFT") / "seed0"
    cell.mkdir(parents=True)
    (cell / "report.json").write_text(json.dumps({"config": saved}))
    with pytest.raises(SystemExit, match="finished with other bootstrapNAS.training than recipe"):
        plain.run_cell("SQFT + QA-SparsePEFT", "piqa", 0, 7)
    saved["bootstrapNAS"]["training"]["qa_base_weight"] = "float"
    (cell / "report.json").write_text(json.dumps({"config": saved}))
    assert plain.run_cell("SQFT + QA-SparsePEFT", "piqa", 0, 7)["config"] == saved


def test_a_command_naming_some_recipes_keeps_the_others_rows(tmp_path, monkeypatch):
    import argparse

    monkeypatch.setattr(plain, "WORK", tmp_path)
    fq = {"seed": 0, "machine": "C, AVX2", "acc": 0.6}
    monkeypatch.setattr(plain, "recipe_rows", lambda task, recipe, seeds, steps, kept, **kw: [fq])
    lonas = {"seed": 2, "machine": "C, AVX-512 BF16", "acc": 0.5, "plain_acc": 0.6, "difference": -0.1, "mib": 1.0,
             "plain_mib": 2.0, "tok_s": {"1": 9.0}, "ratio": {"1": 1.1}}  # fmt: skip
    before = {"cells": {"LoNAS heuristic": [lonas]}, "interleaved": {"C, AVX-512 BF16": {"seed": 0}},
              "interleaved_cells": {"C, AVX-512 BF16": {"LoNAS heuristic": ["1.09 ± 0.06", "-"]}}}  # fmt: skip
    args = argparse.Namespace(seeds=1, report_only=True, keep_intermediates=False, speed_seed=0, interleaved=None)
    entry = plain.task_results("piqa", ["FQ-LoRA"], args, 7, before, "C, AVX2")
    assert list(entry["cells"]) == ["FQ-LoRA", "LoNAS heuristic"]  # in RECIPES' order
    assert entry["cells"]["LoNAS heuristic"] == [{**lonas, "tok_s": {1: 9.0}, "ratio": {1: 1.1}, "kept": True}]
    assert entry["interleaved_cells"] == before["interleaved_cells"]
    table = "\n".join(plain.table("piqa", {"LoNAS heuristic": entry["cells"]["LoNAS heuristic"]}, 1, {}))
    assert "| LoNAS heuristic | INT8 | 1 / 3 (1 kept) |" in table  # seed 2 ran: out of 3, not of this command's 1


def test_rows_whose_ir_kept_the_f16_kv_cache_mark_are_flagged(tmp_path):
    def row(seed, kv):
        return {"seed": seed, "machine": "C, AVX2", "acc": 0.6, "plain_acc": 0.5, "difference": 0.1, "mib": 1.0,
                "plain_mib": 2.0, "tok_s": {1: 9.0}, "ratio": {1: 1.1}, "kv_cache": kv}  # fmt: skip

    mixed = "\n".join(plain.table("piqa", {"FQ-LoRA": [row(0, "f16"), row(1, "default")]}, 2, {}))
    assert "| FQ-LoRA | INT4 († 1 of 2) | 2 / 2 |" in mixed and plain.KV_NOTE in mixed
    clean = "\n".join(plain.table("piqa", {"FQ-LoRA": [row(0, "default")]}, 1, {}))
    assert "| FQ-LoRA | INT4 | 1 / 1 |" in clean and plain.KV_NOTE not in clean
    # read from the export report, or from the IR itself for a run exported before the report said
    ir = tmp_path / "openvino"
    assert plain.shipped_kv_cache({"export": {"runtime_options": {"KV_CACHE_PRECISION": "f16"}}}, {"path": ir}) == "f16"
    assert plain.shipped_kv_cache({"export": {"runtime_options": {}}}, {"path": ir}) == "default"
    assert plain.shipped_kv_cache({"export": {}}, {"path": ir}) is None  # no IR left to read: unknown


def test_the_batch_1_ratio_is_the_paired_one_where_a_run_measured_it():
    rows = [{"ratio": {1: 1.3}, "paired_b1": 1.1}, {"ratio": {1: 0.9}, "paired_b1": None}]
    assert plain._b1_ratio(rows) == "1.00 (1 of 2 paired)"
    assert plain._b1_ratio(rows[:1]) == "1.10 (paired)" and plain._b1_ratio(rows[1:]) == "0.90"


def test_the_other_format_column_says_which_batch_1_ratios_were_paired():
    def row(ratio, paired=None):
        other = {"plain_acc": 0.58, "difference": 0.01, "ratio_b1": ratio}
        return {"other": {"int8": other if paired is None else {**other, "paired": paired}}}

    assert plain._other([row(1.2, True), row(1.0, True)]) == "INT8: 0.580 ± 0.000 (2), +1.0, 1.10x (paired)"
    # a committed row from before the flag counts as pooled
    assert plain._other([row(1.2, True), row(1.0)]).endswith("1.10x (1 of 2 paired)")
    assert plain._other([row(None, True)]).endswith(", -x")  # no speed measured: nothing claimed paired


def test_a_recipe_that_shares_training_runs_after_the_one_it_shares_it_with():
    order = list(plain.RECIPES)
    for recipe, source in plain.SHARES_TRAINING.items():
        assert order.index(source) < order.index(recipe), (recipe, source)
