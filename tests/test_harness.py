"""lm-evaluation-harness on the bundled examples: the same accuracies as our evaluator, example by example."""

import json
from pathlib import Path

import pytest

from nncf_elastic_lora.cli import main
from nncf_elastic_lora.config import DataConfig
from nncf_elastic_lora.data import Example, load_task
from nncf_elastic_lora.evaluation import CausalLM, multiple_choice
from nncf_elastic_lora.harness import compare_with_ours, harness_docs, harness_evaluate
from nncf_elastic_lora.models import build_tiny_llama, load_tokenizer

from .conftest import TINY

TASKS = ("piqa", "arc_easy", "sst2")
CONFIG = str(Path(__file__).parent.parent / "configs" / "tiny_shears.json")


def test_lm_eval_and_our_evaluator_agree_on_the_same_examples():
    model, tokenizer = build_tiny_llama(TINY).eval(), load_tokenizer(TINY)
    examples = {t: load_task(DataConfig(task=t, splits={"train": 0, "validation": 0, "test": 8})).test for t in TASKS}
    theirs = harness_evaluate(model, tokenizer, tasks=list(TASKS), examples=examples, batch_size=4)
    lm = CausalLM(model, tokenizer)
    for task in TASKS:
        acc, acc_norm, preds = multiple_choice(lm, examples[task], 4)
        check = compare_with_ours(preds, theirs[task])
        assert theirs[task]["harness_task"] == f"{task}_bundled" and check["examples"] == 8
        assert check["agreement"] == 1.0 and theirs[task]["acc"] == pytest.approx(acc)  # the same examples right
        assert check["max_abs_loglik_diff"] < 1e-4  # the same log-likelihood of every choice
        if theirs[task]["acc_norm"] is not None:  # sst2's official task reports acc only
            assert theirs[task]["acc_norm"] == pytest.approx(acc_norm)


def test_docs_refuse_an_example_of_another_template():
    odd = Example(id="x", prompt="Tell me: why?", target=" a", choices=(" a", " b"), label=0)
    with pytest.raises(ValueError, match="not the 'Question: ...\\\\nAnswer:' template"):
        harness_docs("piqa", [odd])
    with pytest.raises(ValueError, match="no lm-eval counterpart"):
        harness_docs("gsm8k", [odd])


def test_eval_verb_with_lm_eval_on_a_checkpoint_and_an_ir(tmp_path, capsys):
    from nncf_elastic_lora.deploy.export import export_openvino

    build_tiny_llama(TINY).save_pretrained(tmp_path / "hf")
    load_tokenizer(TINY).save_pretrained(tmp_path / "hf")
    export_openvino(tmp_path / "hf", tmp_path / "ir", genai_device=None)
    common = ["--config", CONFIG, "--tasks", "piqa,arc_easy", "--limit", "4", "--no-progress", "--harness", "lm-eval"]
    scores = {}
    for name in ("hf", "ir"):
        out = tmp_path / f"eval_{name}"
        assert main(["eval", *common, "--model", str(tmp_path / name), "--output", str(out)]) == 0
        report = json.loads((out / "lm_eval.json").read_text())
        assert set(report["results"]) == {"piqa", "arc_easy"} and report["results"]["piqa"]["examples"] == 4
        scores[name] = {t: r["acc"] for t, r in report["results"].items()}
    assert scores["ir"] == scores["hf"]  # the fp32 IR through lm-eval's openvino model scores as torch does
    bad = ["eval", "--config", CONFIG, "--model", str(tmp_path / "hf"), "--output", str(tmp_path / "bad")]
    assert main([*bad, "--online"]) == 2 and "use it with --harness lm-eval" in capsys.readouterr().err
    assert main([*bad, "--harness", "lm-eval", "--tasks", "basic_arithmetic"]) == 2
    assert "no lm-eval task definition here" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
