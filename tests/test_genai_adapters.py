"""OpenVINO GenAI runtime adapters: one base IR, sub-adapters applied and switched at run time."""

import json
from pathlib import Path

import pytest
import torch

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.config import ModelConfig, TinyModelConfig
from nncf_elastic_lora.deploy.genai_adapters import (
    MANIFEST,
    GenAIAdapterError,
    check_adapter_for_ir,
    export_genai_adapters,
    genai_pipeline,
    greedy,
)
from nncf_elastic_lora.elastic import ElasticLoraSuperNet
from nncf_elastic_lora.models import build_tiny_llama, load_tokenizer
from nncf_elastic_lora.provenance import model_fingerprint

TARGETS = ["q_proj", "v_proj", "up_proj"]
PROMPTS = ["1 + 1 =", "The capital of France is"]


def _base(root: Path, seed: int = 0) -> ModelConfig:
    config = ModelConfig(name_or_path=str(root))
    tiny = ModelConfig(name_or_path="tiny-random-llama",
                       tiny=TinyModelConfig(hidden_size=64, intermediate_size=128, seed=seed))  # fmt: skip
    build_tiny_llama(tiny).save_pretrained(root)
    load_tokenizer(tiny).save_pretrained(root)
    return config


def _sub_adapters(base: ModelConfig, out: Path, seed: int) -> dict[str, Path]:
    """Two trained-looking sub-adapters of one super-adapter: the heuristic (rank 4) and the maximal (rank 8)."""
    from transformers import AutoModelForCausalLM

    supernet = ElasticLoraSuperNet.attach(AutoModelForCausalLM.from_pretrained(base.name_or_path),
                                          target_modules=TARGETS, max_rank=8, alpha=16, default_widths=[8, 4])  # fmt: skip
    torch.manual_seed(seed)
    with torch.no_grad():
        for a in supernet.adapters.values():
            a.lora_B.weight.normal_(0, 0.3)
    fingerprint = model_fingerprint(base)
    supernet.save_sub_adapter(out / "heuristic", supernet.get_heuristic_config(), base_fingerprint=fingerprint)
    supernet.save_sub_adapter(out / "maximal", supernet.get_maximal_config(), base_fingerprint=fingerprint)
    return {"heuristic": out / "heuristic", "maximal": out / "maximal"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("genai")
    base = _base(root / "base")
    adapters = _sub_adapters(base, root, seed=0)
    manifest = export_genai_adapters(base, root / "ir", adapters, weight_format="int8", check_prompts=PROMPTS,
                                     check_tokens=8)  # fmt: skip
    return root, base, adapters, manifest


def test_runtime_adapters_match_the_in_graph_ir_and_switch_per_request(exported):
    root, _, _, manifest = exported
    assert json.loads((root / "ir" / MANIFEST).read_text()) == manifest
    assert manifest["base"]["weight_format"] == "int8" and (root / "ir" / "openvino_model.xml").is_file()
    for entry in manifest["adapters"]:
        check = entry["check"]  # GenAI + adapter on the base against an IR with the adapter in its graph
        assert check["passed"] and check["greedy_identical"] == check["prompts"] == len(PROMPTS)
        assert check["max_logprob_diff_per_token"] <= check["tolerance"]
    assert [a["ranks"] for a in manifest["adapters"]] == [[4], [8]]
    files = [root / "ir" / a["file"] for a in manifest["adapters"]]
    pipe, adapters = genai_pipeline(root / "ir", files)
    ids = __import__("numpy").array([[11, 57, 203, 9, 88, 140]], dtype="int64")
    first = greedy(pipe, ids, 8, adapters[str(files[0])])
    second = greedy(pipe, ids, 8, adapters[str(files[1])])
    none = greedy(pipe, ids, 8, None)
    assert len({tuple(first[0]), tuple(second[0]), tuple(none[0])}) > 1  # the adapters change the output
    assert greedy(pipe, ids, 8, adapters[str(files[0])]) == first  # switched back: the same tokens again


def test_bad_adapters_are_refused_before_anything_is_written(exported, tmp_path):
    root, base, adapters, _ = exported
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_genai_adapters(base, tmp_path / "a", {"x": tmp_path / "nope"})
    other = _base(tmp_path / "other", seed=1)
    foreign = _sub_adapters(other, tmp_path / "foreign", seed=1)["heuristic"]
    with pytest.raises(ValueError, match="trained on another base"):
        export_genai_adapters(base, tmp_path / "b", {"x": foreign})
    sliced = tmp_path / "sliced"  # a LoNAS sub-network: its MLPs narrower than the base's
    __import__("shutil").copytree(adapters["heuristic"], sliced)
    record = json.loads((sliced / "elastic_lora_sub.json").read_text())
    record.update(mlp_widths={"model.layers.0.mlp": 64}, mlp_sizes={"model.layers.0.mlp": 128})
    (sliced / "elastic_lora_sub.json").write_text(json.dumps(record))
    with pytest.raises(GenAIAdapterError, match="sliced|extract"):
        export_genai_adapters(base, tmp_path / "c", {"x": sliced})
    masked = tmp_path / "masked"
    __import__("shutil").copytree(adapters["heuristic"], masked)
    record = json.loads((masked / "elastic_lora_sub.json").read_text())
    (masked / "elastic_lora_sub.json").write_text(json.dumps({**record, "adapter_kind": "sparsepeft"}))
    with pytest.raises(GenAIAdapterError, match="merge it into the base"):
        export_genai_adapters(base, tmp_path / "d", {"x": masked})
    with pytest.raises(ValueError, match="adapter name"):
        export_genai_adapters(base, tmp_path / "e", {"a/b": adapters["heuristic"]})
    assert not any((tmp_path / n).exists() for n in "abcde")
    # an adapter file exported for another base is refused on this IR
    theirs = export_genai_adapters(other, tmp_path / "other_ir", {"x": foreign}, weight_format="fp32")
    with pytest.raises(GenAIAdapterError, match="exported for another base"):
        check_adapter_for_ir(root / "ir", tmp_path / "other_ir" / theirs["adapters"][0]["file"])


def test_export_genai_and_benchmark_verbs(exported, tmp_path, capsys):
    root, base, adapters, manifest = exported
    config = str(Path(__file__).parent.parent / "configs" / "tiny_shears.json")
    out = tmp_path / "ir"
    args = ["export-genai", "--config", config, "--model", str(base.name_or_path), "--output", str(out),
            "--adapter", f"task={adapters['heuristic']}", "--weight-format", "int8", "--no-progress",
            "--set", "export.parity.num_prompts=1", "--set", "export.parity.max_new_tokens=4"]  # fmt: skip
    assert main(args) == 0
    assert "greedy = in-graph IR" in capsys.readouterr().out
    assert json.loads((out / MANIFEST).read_text())["adapters"][0]["check"]["passed"]
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # not overwritten silently
    bench = ["benchmark", "--model", f"base={out}", "--adapter", f"task={out / 'adapters' / 'task.safetensors'}",
             "--output", str(tmp_path / "bench"), "--prompt-tokens", "8", "--new-tokens", "4", "--batch-sizes", "1",
             "--repeats", "1", "--warmup", "0", "--no-isolate"]  # fmt: skip
    assert main(bench) == 0
    results = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["results"]
    assert [r["label"] for r in results] == ["base", "base + adapter task"] and results[1]["adapter"]
    assert results[1]["batches"][0]["decode_tokens_per_s"] > 0
    head = ["benchmark", "--model", f"base={out}", "--output"]
    missing = [*head, str(tmp_path / "b2"), "--adapter", str(tmp_path / "none.safetensors")]
    assert main(missing) == 2 and "no such file" in capsys.readouterr().err
    torch_only = [*head, str(tmp_path / "b3"), "--runtime", "torch", "--adapter", bench[4].split("=", 1)[1]]
    assert main(torch_only) == 2 and "include genai in --runtime" in capsys.readouterr().err
    garbage = tmp_path / "garbage.safetensors"  # not a safetensors file: named, one line, nothing written
    garbage.write_text("not an adapter")
    assert main([*head, str(tmp_path / "b4"), "--adapter", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert "garbage.safetensors is not a readable safetensors adapter" in err and "Traceback" not in err
    broken = tmp_path / "broken_ir"  # the IR's manifest cut short: named, one line
    __import__("shutil").copytree(out, broken)
    (broken / MANIFEST).write_text("{")
    assert main(["benchmark", "--model", f"base={broken}", "--output", str(tmp_path / "b5"), "--adapter",
                 str(broken / "adapters" / "task.safetensors")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"{MANIFEST} is not a valid {MANIFEST}" in err and "Traceback" not in err
    assert not any((tmp_path / n).exists() for n in ("b2", "b3", "b4", "b5"))


def test_eval_scores_runtime_adapters_through_genai_as_the_in_graph_ir(exported, tmp_path, capsys, monkeypatch):
    """`eval IR --adapter FILE...`: GenAI's generations equal the in-graph IR's (optimum-intel), per adapter."""
    root, base, adapters, _ = exported
    config = str(Path(__file__).parent.parent / "configs" / "tiny_shears.json")
    f32 = '{"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}'
    common = ["--config", config, "--tasks", "basic_arithmetic", "--limit", "3", "--no-progress", "--set",
              "evaluation.batch_size=1", "--set", "evaluation.max_new_tokens=6", "--set", f"export.runtime_properties={f32}"]  # fmt: skip
    files = {name: root / "ir" / "adapters" / f"{name}.safetensors" for name in ("heuristic", "maximal")}
    args = ["eval", "--model", str(root / "ir"), *[f"--adapter={n}={f}" for n, f in files.items()], *common]
    assert main([*args, "--output", str(tmp_path / "genai")]) == 0
    report = json.loads((tmp_path / "genai" / "eval.json").read_text())
    assert report["runtime"] == "openvino_genai" and set(report["adapters"]) == set(files)
    by_model = {r["model"]: r for r in report["results"]}
    assert set(by_model) == {f"{root / 'ir'} + {n}" for n in files}
    assert all(set(r["metrics"]) == {"exact_match"} for r in by_model.values())  # no logits: no choices scored
    predictions = [json.loads(line) for line in (tmp_path / "genai" / "predictions.jsonl").read_text().splitlines()]
    generations = {n: [p["generation"] for p in predictions if p["model"].endswith(f" + {n}")] for n in files}
    assert generations["heuristic"] != generations["maximal"]  # each request ran its own adapter
    graph = tmp_path / "graph"  # the heuristic sub-adapter in the IR's graph, scored by optimum-intel
    assert main(["export", "--config", config, "--model", str(base.name_or_path), "--adapter",
                 str(adapters["heuristic"]), "--weight-format", "int8", "--output", str(graph), "--no-progress"]) == 0  # fmt: skip
    assert main(["eval", "--model", str(graph), *common, "--output", str(tmp_path / "graph_eval")]) == 0
    ours = [json.loads(line)["generation"] for line in (tmp_path / "graph_eval" / "predictions.jsonl").read_text().splitlines()
            if "generation" in line]  # fmt: skip
    assert generations["heuristic"] == ours
    capsys.readouterr()
    # bad inputs: one line each, nothing written
    bad = {
        "piqa": (["eval", "--model", str(root / "ir"), "--adapter", str(files["heuristic"]), *common, "--tasks", "piqa"],
                 "log-likelihood of their choices"),
        "checkpoint": (["eval", "--model", str(base.name_or_path), "--adapter", str(files["heuristic"]), *common],
                       "is not one"),
        "missing": (["eval", "--model", str(root / "ir"), "--adapter", str(tmp_path / "none.safetensors"), *common],
                    "no such file or folder"),
        "mixed": (["eval", "--model", str(root / "ir"), "--adapter", str(files["heuristic"]), "--adapter",
                   f"folder={adapters['heuristic']}", *common], "not both"),
        "lm_eval": (["eval", "--model", str(root / "ir"), "--adapter", str(files["heuristic"]), *common, "--harness",
                     "lm-eval"], "cannot apply GenAI adapter files"),
        "twice": (["eval", "--model", str(root / "ir"), "--adapter", f"a={files['heuristic']}", "--adapter",
                   f"a={files['maximal']}", *common], "given twice"),
        "folder_on_ir": (["eval", "--model", str(root / "ir"), "--adapter", str(adapters["heuristic"]), *common],
                         "GenAI adapter file"),
    }  # fmt: skip
    for name, (argv, message) in bad.items():
        assert main([*argv, "--output", str(tmp_path / f"bad_{name}")]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (name, err)
        assert not (tmp_path / f"bad_{name}").exists(), name
    monkeypatch.setattr("nncf_elastic_lora.distributed.world_size", lambda: 2)  # as under torchrun
    monkeypatch.setattr("nncf_elastic_lora.distributed.init_processes", lambda: None)
    assert main([*args, "--output", str(tmp_path / "bad_launched")]) == 2
    assert "launch it without torchrun" in capsys.readouterr().err and not (tmp_path / "bad_launched").exists()
