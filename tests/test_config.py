import json
import re
from pathlib import Path

import pytest

from nncf_elastic_lora.config import (
    ConfigError,
    PipelineConfig,
    apply_overrides,
    json_schema,
    load_config,
    parse_config,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.json"))


def test_defaults_are_valid():
    config = PipelineConfig()
    assert config.model.name_or_path == "smollm2-135m"
    assert config.sparsity.ratio == 0.5


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    load_config(path)


def test_unknown_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        parse_config({"sparsity": {"ratoi": 0.5}})
    message = str(err.value)
    assert "sparsity.ratoi: unknown key" in message
    assert "ratio" in message and "method" in message


def test_bad_literal_names_key_value_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_config({"sparsity": {"method": "sparsegpt"}})
    message = str(err.value)
    assert "sparsity.method" in message and '"sparsegpt"' in message
    assert "'wanda'" in message and "'magnitude'" in message


def test_out_of_range_value():
    with pytest.raises(ConfigError, match=r"sparsity\.ratio: got 1\.5"):
        parse_config({"sparsity": {"ratio": 1.5}})


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config({"sparsity": {"ratio": -1}, "evaluation": {"batch_size": 0}})
    assert len(err.value.problems) == 2


def test_groups_and_widths_must_pair():
    bad = {
        "bootstrapNAS": {
            "elasticity": {"width": {"overwrite_groups": [["q_proj"]], "overwrite_groups_widths": []}}
        }
    }
    with pytest.raises(ConfigError, match="bootstrapNAS.elasticity.width"):
        parse_config(bad)


@pytest.mark.parametrize(
    "bad,where",
    [
        ({"bootstrapNAS": {"search": {"algorithm": "RNSGA2"}}}, "ref_points"),
        ({"bootstrapNAS": {"search": {"select": "cheapest_above_plain"}}}, "cheapest_above_plain"),
        (
            {
                "bootstrapNAS": {
                    "elasticity": {
                        "width": {"overwrite_groups": [["q_proj"]], "overwrite_groups_widths": [[8, 8]]}
                    }
                }
            },
            "distinct",
        ),
        ({"bootstrapNAS": {"elasticity": {"mode": "channels"}}}, "bootstrapNAS.elasticity.mode"),
        ({"export": {"weight_format": "int3"}}, "export.weight_format"),
        ({"export": {"ratio": 0}}, "export.ratio"),
        ({"benchmark": {"rounds": 0}}, "benchmark.rounds"),
        ({"benchmark": {"paired_rounds": 1}}, "benchmark: .*paired_rounds 1: a ratio pairs at least 2 rounds"),
        ({"benchmark": {"paired_rounds": -1}}, "benchmark.paired_rounds"),
        ({"export": {"activations": "int8"}}, "export: .*activations 'int8' .W8A8. quantizes int8 weights"),
        ({"export": {"activations": "int16"}}, "export.activations"),
        ({"export": {"group_size_fallback": "shrink"}}, "export.group_size_fallback"),
    ],
)
def test_unsupported_or_inconsistent_settings_are_rejected(bad, where):
    with pytest.raises(ConfigError, match=where):
        parse_config(bad)


def test_overrides_parse_json_and_revalidate():
    config = apply_overrides(PipelineConfig(), ["sparsity.ratio=0.6", "model.name_or_path=some/dir"])
    assert config.sparsity.ratio == 0.6 and config.model.name_or_path == "some/dir"
    with pytest.raises(ConfigError, match="sparsity.ratio"):
        apply_overrides(PipelineConfig(), ["sparsity.ratio=2"])


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)


def test_schema_is_generated_from_models():
    schema = json_schema()
    json.dumps(schema)
    assert set(schema["properties"]) >= {"model", "data", "sparsity", "bootstrapNAS", "evaluation", "export"}
    assert schema["additionalProperties"] is False



@pytest.mark.parametrize(
    "override, accepted",
    [
        ("bootstrapNAS.training.lora_r=8.0", 8),  # a float that is an integer, as some tools write it
        ("bootstrapNAS.training.lora_r=8.5", None),
        ('bootstrapNAS.training.lora_r="8"', None),
        ("bootstrapNAS.training.lora_r=true", None),
        ("bootstrapNAS.training.learning_rate=Infinity", None),
        ("sparsity.ratio=NaN", None),
        ('bootstrapNAS.training.learning_rate="3e-4"', None),
    ],
)
def test_numbers_are_finite_numbers(override, accepted):
    from nncf_elastic_lora.config import ConfigError, apply_overrides

    key = override.split("=")[0]
    if accepted is None:
        with pytest.raises(ConfigError, match=re.escape(key)):
            apply_overrides(PipelineConfig(), [override])
    else:
        config = apply_overrides(PipelineConfig(), [override])
        assert config.bootstrapNAS.training.lora_r == accepted


def test_a_saved_config_without_an_added_option_reads_as_the_old_behaviour(tmp_path):
    from nncf_elastic_lora.config import ADDED_OPTIONS, with_added_options
    from nncf_elastic_lora.outputs import OutputExistsError, check_same_config

    current = PipelineConfig().model_dump(mode="json")
    saved = json.loads(json.dumps(current))
    del saved["bootstrapNAS"]["training"]["qa_base_weight"]  # a run started before the option existed
    assert with_added_options(saved) == current and "qa_base_weight" not in saved["bootstrapNAS"]["training"]
    assert ADDED_OPTIONS["bootstrapNAS.training.qa_base_weight"] == current["bootstrapNAS"]["training"]["qa_base_weight"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_same_config(tmp_path / "config.json", current, normalize=with_added_options)
    # what the old version did is not what the new value does: that resume is refused, naming the option
    current["bootstrapNAS"]["training"]["qa_base_weight"] = "float"
    with pytest.raises(OutputExistsError, match="bootstrapNAS.training.qa_base_weight"):
        check_same_config(tmp_path / "config.json", current, normalize=with_added_options)
    # an added option whose default is not the old behaviour: the old value resumes, the new default does not
    del saved["bootstrapNAS"]["search"]["floor_precision"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(OutputExistsError, match="bootstrapNAS.search.floor_precision"):
        check_same_config(tmp_path / "config.json", PipelineConfig().model_dump(mode="json"), normalize=with_added_options)
    old = PipelineConfig().model_dump(mode="json")
    old["bootstrapNAS"]["search"]["floor_precision"] = "float"
    check_same_config(tmp_path / "config.json", old, normalize=with_added_options)
    # any other missing key is still a change
    del saved["bootstrapNAS"]["training"]["lora_r"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(OutputExistsError, match="bootstrapNAS.training.lora_r"):
        check_same_config(tmp_path / "config.json", old, normalize=with_added_options)
