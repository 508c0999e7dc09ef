"""The LoNAS latency model (search cost 'latency'): its fit and predictions (`run` uses it in test_lonas)."""

import json

import numpy as np
import pytest

from nncf_elastic_lora.latency import LatencyModel, LatencyPoint, fit_line, sample_widths

LAYERS = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def _model(**kw) -> LatencyModel:
    args = dict(
        intercept_ms=2.0,
        ms_per_mparam=500.0,
        batch_size=1,
        weight_format="int8",
        layers=LAYERS,
        sizes=[64, 64],
        params_per_channel=[96, 96],
    )
    return LatencyModel(**{**args, **kw})


def test_fit_line_recovers_the_line_of_exact_points():
    params = [1_000_000, 2_000_000, 3_500_000]
    intercept, slope = fit_line(params, [3.0 + 0.25 * p / 1e6 for p in params])
    assert intercept == pytest.approx(3.0) and slope == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least two different sub-network sizes"):
        fit_line([5, 5], [1.0, 2.0])


def test_prediction_sums_the_per_layer_widths_and_refuses_other_mlps():
    model = _model()
    assert model.mlp_params([64, 32]) == 96 * 96
    assert model.predict_ms({LAYERS[0]: 64, LAYERS[1]: 32}) == pytest.approx(2.0 + 500.0 * 96 * 96 / 1e6)
    assert model.predict_ms([64, 64]) > model.predict_ms([64, 32]) > model.predict_ms([32, 32])
    with pytest.raises(ValueError, match="no width given for model.layers.1.mlp.down_proj"):
        model.predict_ms({LAYERS[0]: 64})
    model.check_fits(dict(zip(LAYERS, [64, 64], strict=True)))
    with pytest.raises(ValueError, match="measured on MLPs of other names or sizes"):
        model.check_fits(dict(zip(LAYERS, [128, 128], strict=True)))


def test_errors_and_round_trip(tmp_path):
    points = [
        LatencyPoint("fit", [64, 64], 12288, 8.0, 8.4),
        LatencyPoint("holdout", [64, 32], 9216, 6.0, 5.7),
        LatencyPoint("holdout", [32, 64], 9216, 5.0, 5.7),
    ]
    model = _model(points=points)
    assert model.errors("fit") == {"mean_abs": pytest.approx(0.05), "max_abs": pytest.approx(0.05)}
    held = model.errors("holdout")
    assert held["mean_abs"] == pytest.approx(np.mean([0.05, 0.14])) and held["max_abs"] == pytest.approx(0.14)
    model.save(tmp_path / "latency_model.json")
    loaded = LatencyModel.load(tmp_path)  # the folder finds the JSON
    assert (
        loaded == model and json.loads((tmp_path / "latency_model.json").read_text())["holdout_error"] == held
    )


def test_a_fit_in_which_time_falls_with_the_weights_is_refused(tmp_path):
    points = [LatencyPoint("fit", [64, 64], 12288, 8.0), LatencyPoint("fit", [32, 32], 6144, 9.0)]
    with pytest.raises(ValueError, match=r"does not grow with the elastic weights .*12,288 weights: 8.00 ms"):
        _model(ms_per_mparam=-0.2, points=points).check_fits(dict(zip(LAYERS, [64, 64], strict=True)))
    (tmp_path / "damaged.json").write_text(json.dumps({**_model().to_dict(), "sizes": [64]}))
    with pytest.raises(ValueError, match="is not a latency model written by this package"):
        LatencyModel.load(tmp_path / "damaged.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="is not a latency model written by this package"):
        LatencyModel.load(tmp_path / "binary.json")


def test_held_out_widths_are_distinct_and_never_fit_points():
    fit = [[64, 64], [32, 32]]
    mixes = sample_widths([[64, 48, 32], [64, 48, 32]], 4, seed=0, avoid=fit)
    assert len(mixes) == 4 and len({tuple(m) for m in mixes}) == 4
    assert not {tuple(m) for m in mixes} & {tuple(f) for f in fit}
    only = sample_widths([[64, 32], [64, 32]], 9, seed=0, avoid=fit)  # just two mixes exist
    assert sorted(only) == [[32, 64], [64, 32]]


def test_with_elastic_heads_the_kept_kv_groups_count_and_other_heads_are_refused():
    model = _model(kv_heads=3, params_per_kv_group=1000)
    assert model.weights([64, 64]) == model.weights([64, 64], 3) == 2 * 64 * 96 + 3 * 1000
    assert model.predict_ms([64, 64], 3) - model.predict_ms([64, 64], 2) == pytest.approx(500.0 * 1000 / 1e6)
    with pytest.raises(ValueError, match=r"4 KV groups is outside \[1, 3\]"):
        model.predict_ms([64, 64], 4)
    sizes = dict(zip(LAYERS, [64, 64], strict=True))
    model.check_fits(sizes, 3)
    with pytest.raises(
        ValueError, match="measured with 3 elastic KV groups, this super-network has no elastic heads"
    ):
        model.check_fits(sizes)
    with pytest.raises(
        ValueError, match="measured without elastic heads, this super-network has 2 elastic KV"
    ):
        _model().check_fits(sizes, 2)


def test_a_latency_model_written_before_heads_were_elastic_loads(tmp_path):
    old = {
        **_model().to_dict(),
        "points": [{"role": "fit", "widths": [64, 64], "mlp_params": 12288, "measured_ms": 8.0}],
    }
    for key in ("kv_heads", "params_per_kv_group"):
        del old[key]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = LatencyModel.load(tmp_path / "old.json")
    assert loaded.points[0].weights == 12288 and loaded.kv_heads is None
