import itertools
import json
import re
from pathlib import Path

import pytest

from nncf_elastic_lora.config import SearchConfig
from nncf_elastic_lora.models import build_tiny_llama
from nncf_elastic_lora.search import (
    EvaluationLog,
    SubnetObjectives,
    config_key,
    hill_climb,
    neighbours,
    nsga_search,
    pareto_front,
    search_subadapter,
)

from .conftest import TINY
from .helpers import make_supernet

CHOICES = [[16, 24, 32]] * 4


def test_neighbours_move_one_group_one_step():
    assert sorted(neighbours((24, 16, 32), [[16, 24, 32]] * 3)) == sorted(
        [(16, 16, 32), (32, 16, 32), (24, 24, 32), (24, 16, 24)]
    )


def test_hill_climbing_finds_the_known_optimum():
    target = (32, 16, 24, 32)
    calls = []

    def score(p):
        calls.append(p)
        return -sum(abs(a - b) for a, b in zip(p, target, strict=True))

    result = hill_climb(CHOICES, (24, 24, 24, 24), score, budget=100)
    assert result.best == target and result.best_score == 0
    assert result.stopped == "local optimum"
    assert len(calls) == len(set(calls)) == result.evaluations  # nothing scored twice


def test_hill_climbing_keeps_the_global_best():
    # a plateau walk: with patience the climber moves on past the peak it found, and must still return it
    values = {(16,): 0.0, (24,): 5.0, (32,): 1.0, (40,): 1.0, (48,): 2.0}
    result = hill_climb([[16, 24, 32, 40, 48]], (16,), lambda p: values[p], budget=10, patience=3)
    assert result.path[-1] == (48,)  # the last turn ended elsewhere ...
    assert result.best == (24,) and result.best_score == 5.0  # ... the global best is kept


def test_hill_climbing_respects_the_budget():
    result = hill_climb(CHOICES, (24, 24, 24, 24), lambda p: sum(p), budget=5)
    assert result.evaluations == 5 and result.stopped == "budget"


def _synthetic(point):
    """Quality grows with size with diminishing returns; cost is the size."""
    size = sum(point)
    return 1 - 1 / size + 0.001 * point[0], float(size)


def test_nsga2_returns_a_non_dominated_front():
    cache = {}

    def evaluate(p):
        cache.setdefault(p, _synthetic(p))
        return cache[p]

    res = nsga_search(CHOICES, evaluate, population=8, generations=6, seed=0)
    assert res.front and res.evaluations == len(cache)
    everything = list(itertools.product(*CHOICES))
    for p in res.front:  # nothing evaluated dominates a front point
        q, c = cache[p]
        assert not any(cache[o][0] >= q and cache[o][1] <= c and cache[o] != (q, c) for o in cache)
    costs = [cache[p][1] for p in res.front]
    assert costs == sorted(costs)
    assert len(everything) > len(cache)  # it searched, not enumerated


def test_rnsga2_runs_with_reference_points():
    res = nsga_search(CHOICES, _synthetic, population=8, generations=3, seed=1, ref_points=[[-0.99, 80.0]])
    assert res.front


def test_pareto_front_on_a_known_set():
    points = [(1,), (2,), (3,), (4,)]
    quality, cost = [0.5, 0.7, 0.6, 0.9], [1.0, 2.0, 3.0, 4.0]
    assert pareto_front(points, quality, cost) == [(1,), (2,), (4,)]


def test_log_survives_a_cut_line_and_does_not_remeasure(tmp_path):
    path = tmp_path / "log.jsonl"
    log = EvaluationLog(path)
    calls = []

    def measure(config):
        calls.append(config)
        return 0.5, 10.0, 0.1

    log.get_or_evaluate("a", {"g": 1}, measure)
    log.get_or_evaluate("a", {"g": 1}, measure)
    with open(path, "a") as f:
        f.write('{"key": "b", "config": {"g"')  # killed mid-write
    again = EvaluationLog(path)
    assert len(again) == 1 and "a" in again and len(calls) == 1
    again.get_or_evaluate("b", {"g": 2}, measure)
    assert len(calls) == 2 and len(EvaluationLog(path)) == 2


@pytest.mark.parametrize(
    "change, expect",
    [
        ({"quality": float("nan")}, "quality is nan"),
        ({"cost": float("inf")}, "cost is inf"),
        ({"seconds": -3.0}, "seconds is -3.0, expected a finite number >= 0"),
        ({"quality": "0.5"}, "quality is '0.5'"),
        ({"config": {"g": 1.5}}, "config['g'] is 1.5, expected an integer"),
    ],
)
def test_log_refuses_damaged_numbers(tmp_path, change, expect):
    path = tmp_path / "log.jsonl"
    EvaluationLog(path).get_or_evaluate("a", {"g": 1}, lambda c: (0.5, 10.0, 0.1))
    entry = json.loads(path.read_text())
    path.write_text(path.read_text() + json.dumps({**entry, "key": "b", **change}) + "\n")
    with pytest.raises(ValueError, match=rf"log.jsonl line 2 is damaged: {re.escape(expect)}"):
        EvaluationLog(path)


class _Killed(Exception):
    pass


def test_killed_and_restarted_search_does_not_reevaluate(tmp_path, tokenizer):
    """A real (tiny) super-adapter: kill the search mid-way, restart, count the measurements."""
    from nncf_elastic_lora.data import Example

    examples = [
        Example(
            id=str(i),
            prompt=f"Question: Calculate {i} + 1 =\nAnswer:",
            target=f" {i + 1}",
            choices=(f" {i + 1}", f" {i + 2}"),
            label=0,
        )
        for i in range(6)
    ]
    supernet = make_supernet(build_tiny_llama(TINY))
    cfg = SearchConfig(algorithm="hill_climbing", num_evals=12, patience=1)
    measured = []

    class Counting(SubnetObjectives):
        def __init__(self, *a, kill_after=None, **k):
            super().__init__(*a, **k)
            self.kill_after = kill_after

        def __call__(self, config):
            if self.kill_after is not None and len(measured) >= self.kill_after:
                raise _Killed
            measured.append(config_key(list(config.values())))
            return super().__call__(config)

    with pytest.raises(_Killed):
        search_subadapter(
            supernet, Counting(supernet, tokenizer, examples, kill_after=6), cfg, tmp_path, progress=False
        )
    assert len(measured) == 6
    result = search_subadapter(
        supernet, Counting(supernet, tokenizer, examples), cfg, tmp_path, progress=False
    )
    assert len(measured) == len(set(measured))  # nothing measured twice across the restart
    assert result.new_evaluations == len(measured) - 6
    uninterrupted = search_subadapter(
        supernet, Counting(supernet, tokenizer, examples), cfg, tmp_path / "b", progress=False
    )
    assert uninterrupted.chosen == result.chosen
    assert (tmp_path / "sub_adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "search.png").stat().st_size > 0
    front = json.loads((tmp_path / "pareto.json").read_text())["front"]
    assert front and all("quality" in e and "cost" in e for e in front)
    assert result.reference["heuristic"]["config"] == supernet.get_heuristic_config()


def test_nsga_search_on_a_tiny_supernet(tmp_path, tokenizer):
    from nncf_elastic_lora.data import Example

    examples = [Example(id=str(i), prompt=f"Q{i}", target=f" {i}") for i in range(4)]
    supernet = make_supernet(build_tiny_llama(TINY))
    cfg = SearchConfig(algorithm="NSGA2", num_evals=16, population=6, seed=3)
    result = search_subadapter(
        supernet,
        SubnetObjectives(supernet, tokenizer, examples, metric="loss"),
        cfg,
        tmp_path,
        progress=False,
    )
    assert result.evaluations_used <= 6 * (16 // 6) + 3
    logged = [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert len(logged) == result.new_evaluations <= 16
    assert result.chosen_quality == max(e["quality"] for e in result.front)
    for e in logged:  # nothing measured dominates the chosen sub-adapter
        assert not (e["quality"] > result.chosen_quality and e["cost"] <= result.chosen_cost)
    # the same output with another objective measures anew: nothing logged under the old one is reused
    other = SubnetObjectives(supernet, tokenizer, examples, metric="loss", cost="macs")
    again = search_subadapter(supernet, other, cfg, tmp_path, progress=False)
    assert again.not_reused == len(logged) and again.new_evaluations > 0
    assert all(e["cost"] > 1e6 for e in again.front)  # MACs, not the old parameter counts
    cheap = SearchConfig(
        algorithm="NSGA2", num_evals=16, population=6, seed=3, select="cheapest_above_heuristic"
    )
    picked = search_subadapter(
        supernet,
        SubnetObjectives(supernet, tokenizer, examples, metric="loss"),
        cheap,
        tmp_path,
        progress=False,
    )
    assert picked.new_evaluations == 0
    assert picked.chosen_quality >= picked.reference["heuristic"]["quality"]
    assert picked.chosen_cost <= picked.reference["heuristic"]["cost"]
    # select 'cheapest_above_plain': the cheapest front point at the plain alternative's quality or above,
    # the best one (and a record that the floor was missed) when no point reaches it
    plain = cheap.model_copy(update={"select": "cheapest_above_plain"})
    objectives = SubnetObjectives(supernet, tokenizer, examples, metric="loss")
    qualities = sorted(e["quality"] for e in picked.front)
    floor = qualities[len(qualities) // 2]
    above = search_subadapter(supernet, objectives, plain, tmp_path, plain_quality=floor, progress=False)
    assert above.new_evaluations == 0 and above.details["floor"] == {
        "select": "cheapest_above_plain", "quality": floor, "reached": True
    }
    assert above.chosen_quality >= floor
    assert above.chosen_cost == min(e["cost"] for e in above.front if e["quality"] >= floor)
    missed = search_subadapter(supernet, objectives, plain, tmp_path, plain_quality=qualities[-1] + 1, progress=False)
    assert missed.details["floor"]["reached"] is False and missed.chosen_quality == qualities[-1]
    with pytest.raises(ValueError, match="cheapest_above_plain"):
        search_subadapter(supernet, objectives, plain, tmp_path, progress=False)
    # select 'auto' (the default): the plain floor when the plain quality is measured, else the best point
    auto = cheap.model_copy(update={"select": "auto"})
    floored = search_subadapter(supernet, objectives, auto, tmp_path, plain_quality=floor, progress=False)
    assert floored.details["floor"]["select"] == "cheapest_above_plain" and floored.chosen_cost == above.chosen_cost
    best = search_subadapter(supernet, objectives, auto, tmp_path, progress=False)
    assert best.details["select"] == "best_quality" and "floor" not in best.details
    assert best.chosen_quality == qualities[-1]


def test_plain_floor_on_an_int4_base_is_the_merged_lora_on_the_runs_int4_grid(tmp_path, monkeypatch):
    """On a base the run quantizes to INT4, every candidate is scored with INT4 weights: so is the plain floor
    (its LoRA merged, then rounded data-free to the run's grid), or no candidate could ever reach it."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from nncf_elastic_lora.config import apply_overrides, load_config
    from nncf_elastic_lora.data import load_task
    from nncf_elastic_lora.models import load_model
    from nncf_elastic_lora.stages import plain as plain_stage

    config = apply_overrides(load_config(Path(__file__).parent.parent / "configs" / "tiny_sqft_qa_sparsepeft.json"),
                             ["sparsity.method=none", "bootstrapNAS.training.adapter_kind=fq_lora"])  # fmt: skip
    model, _ = load_model(config.model)
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "up_proj", "down_proj"]))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)  # a LoRA that moves the weights by more than a quantization step
    lora.save_pretrained(tmp_path / "ref" / "train" / "sub_adapter_heuristic")
    monkeypatch.setattr(plain_stage, "plain_reference", lambda *_, **__: {"directory": str(tmp_path / "ref"),
                                                                          "reused": True})  # fmt: skip
    examples = load_task(config.data).validation[:8]
    floor = plain_stage.plain_validation_quality(config, examples, "loss", progress=False)
    as_float = apply_overrides(config, ["quantization.weight_format=none"])
    float_floor = plain_stage.plain_validation_quality(as_float, examples, "loss", progress=False)
    assert (floor["precision"], float_floor["precision"]) == ("int4", "float")
    assert floor["quality"] != pytest.approx(float_floor["quality"], abs=1e-4)
    asked_float = apply_overrides(config, ["bootstrapNAS.search.floor_precision=float"])  # the stricter bar, on request
    assert plain_stage.plain_validation_quality(asked_float, examples, "loss", progress=False) == float_floor

    name, adapter = "model.layers.0.mlp.up_proj", tmp_path / "ref" / "train" / "sub_adapter_heuristic"
    base_up = model.get_submodule(name).base_layer.weight.detach().clone()
    float_up = PeftModel.from_pretrained(load_model(config.model)[0], adapter).merge_and_unload()
    float_up = float_up.get_submodule(name).weight.detach()
    up = plain_stage.merged_on_int4_grid(config, adapter)[0].get_submodule(name).weight.detach()
    group = config.quantization.group_size
    rounded, exact, unmerged = (w.reshape(-1, group) for w in (up, float_up, base_up))
    assert max(len(torch.unique(g)) for g in rounded) <= 16  # each group holds at most the 16 INT4 levels
    half_step = (exact.amax(1) - exact.amin(1)) / 15 / 2  # asymmetric min/max scales
    assert bool(((rounded - exact).abs().amax(1) <= half_step * 1.01 + 1e-6).all())  # the merged weight, rounded
    assert (rounded - unmerged).abs().mean() > 2 * (rounded - exact).abs().mean()  # not the base's own weight


def test_the_search_summary_and_report_name_the_floors_precision():
    from nncf_elastic_lora.report.render import search_block
    from nncf_elastic_lora.stages.search import Search

    floor = {"select": "cheapest_above_plain", "quality": -1.5, "reached": True}
    result = {"algorithm": "NSGA2", "chosen_quality": -1.4, "chosen_cost": 9.0, "evaluations_used": 8,
              "new_evaluations": 8, "details": {"floor": floor}}  # fmt: skip
    for precision, shown in (("int4", "floor (plain INT4's validation quality)"),
                             ("float", "floor (plain's validation quality)")):  # fmt: skip
        summary = Search("NSGA2").summary(None, {**result, "plain": {"precision": precision}})
        assert summary["floor"]["precision"] == precision
        assert [shown, "-1.5000: the cheapest at or above it"] in search_block(summary, {}).facts


def test_the_floors_precision_is_a_search_input_that_float_runs_of_older_versions_still_match():
    from nncf_elastic_lora.config import apply_overrides, load_config
    from nncf_elastic_lora.outputs import changed_inputs
    from nncf_elastic_lora.stages.plain import plain_key
    from nncf_elastic_lora.stages.search import floor_inputs

    tiny = Path(__file__).parent.parent / "configs" / "tiny_sqft_qa_sparsepeft.json"
    config = apply_overrides(load_config(tiny), ["bootstrapNAS.search.algorithm=NSGA2", "plain.enabled=true"])
    as_float = apply_overrides(config, ["quantization.weight_format=none", "bootstrapNAS.training.adapter_kind=lora"])
    asked_float = apply_overrides(config, ["bootstrapNAS.search.floor_precision=float"])
    for floats in (as_float, asked_float):  # recorded before the precision was an input: {"plain": key}
        assert changed_inputs({"plain": plain_key(floats)}, floor_inputs(floats)) == []
    assert changed_inputs({"plain": plain_key(config)}, floor_inputs(config)) == ["plain_precision"]
    assert floor_inputs(apply_overrides(config, ["bootstrapNAS.search.algorithm=heuristic"])) == {"plain": None}
