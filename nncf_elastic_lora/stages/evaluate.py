"""Evaluation stages: score a torch model or an exported IR on every configured task's split.

One-call functions (:func:`evaluate_model`, :func:`evaluate_ir`, :func:`write_eval`) and the stages
that score the current base (:class:`EvaluateBase`) and the merged or extracted model
(:class:`EvaluateMerged`). The shipped IR's evaluation is a shipping stage (:mod:`.ship`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from ..config import ModelConfig, PipelineConfig
from ..data import TaskData, eval_only_sizes, load_examples, load_task, split_examples
from ..deploy.export import attach_adapter
from ..elastic.lora import AdapterKind
from ..evaluation import CausalLM, TaskResult, evaluate_task, results_table
from ..formats import QUANTIZATION_JSON, is_openvino_dir, is_quantized_base
from ..harness import HARNESS_TASKS, harness_evaluate
from ..int4 import QuantizedBaseError, load_quantized_weights, read_quantization_info
from ..merge import adapter_trains_on_float, merge_adapter_from_dirs, read_sub_adapter_record
from ..models import load_model, load_openvino_model, resolve_model_dir
from ..outputs import fingerprint_path, write_json, write_text
from ..provenance import model_fingerprint
from ..report.tables import markdown_table
from ..runtime import PIPELINE_PROPERTIES, check_properties
from .engine import RunState, Stage


def base_quantized_weights(model_config: ModelConfig, *, float_source: bool = False) -> dict[str, Any] | None:
    """The INT4 codes, scales and zero points beside a quantized base checkpoint (None otherwise);
    ``float_source``: each with the float weight it was quantized from (:func:`attach_float_source`)."""
    base = Path(resolve_model_dir(model_config))
    if not is_quantized_base(base):
        return None
    qweights = load_quantized_weights(base)
    if float_source:
        attach_float_source(base, qweights)
    return qweights


def attach_float_source(base: Path, qweights: dict[str, Any]) -> None:
    """Set ``float_weight`` of each INT4 weight of ``base`` from the float model it was quantized from.

    fq_lora (and qa_sparsepeft with ``qa_base_weight: float``) trains through ``FQ(W + update)`` on the float
    ``W``, as NNCF's FQ_LORA does: on the INT4 base's own dequantized weights every update under half a
    quantization step would round away. The
    source is the model ``quantization.json`` records, refused when it is gone or has changed since.
    """
    info = read_quantization_info(base)
    recorded = info.get("source_model")
    if not recorded:
        raise QuantizedBaseError(
            f"fq_lora / fq_sparsepeft train through the float weights {base} was quantized from, but its {QUANTIZATION_JSON} "
            "does not record that model (an INT4 base written by an older version): quantize the float model again"
        )
    source = ModelConfig.model_validate({**recorded, "dtype": "float32"})
    if model_fingerprint(source) != info.get("source_fingerprint"):
        raise QuantizedBaseError(
            f"fq_lora / fq_sparsepeft train through the float weights {base} was quantized from, {source.name_or_path} "
            f"(looked in {Path(resolve_model_dir(source)).resolve()}), but that model is missing or has changed since"
        )
    model, _ = load_model(source)
    for name, q in qweights.items():
        q.float_weight = model.get_submodule(name).weight.detach().float()


def eval_splits(config: PipelineConfig) -> dict[str, TaskData]:
    """The data each evaluated task is scored on; the training task keeps its own splits."""
    out = {}
    for task in config.evaluation.tasks or [config.data.task]:
        if task == config.data.task:
            out[task] = load_task(config.data)
        else:
            examples = load_examples(config.data, task)
            # Never more than splits.test: the rows after those may be another run's calibration or training rows.
            n = min(
                config.evaluation.limit or config.data.splits.test, config.data.splits.test, len(examples)
            )
            out[task] = split_examples(examples, eval_only_sizes(n, len(examples)), config.data.seed, task)
    return out


def evaluate_model(
    model: Any,
    tokenizer: Any,
    config: PipelineConfig,
    tasks: dict[str, TaskData] | None = None,
    progress: bool = True,
) -> list[TaskResult]:
    """Score a model on every configured task's evaluation split."""
    ev = config.evaluation
    lm = CausalLM(model, tokenizer)
    results = []
    for name, examples in evaluation_examples(config, tasks).items():
        if not examples:
            raise ValueError(f"task {name!r} has an empty {ev.split} split; raise data.splits.{ev.split}")
        results.append(
            evaluate_task(
                lm,
                name,
                examples,
                split=ev.split,
                batch_size=ev.batch_size,
                max_new_tokens=ev.max_new_tokens,
                with_perplexity=ev.perplexity,
                progress=progress,
            )
        )
    return results


def load_for_eval(config: PipelineConfig, adapter: str | Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, facts)`` to score: ``config.model`` (a checkpoint or an OpenVINO IR), plus ``adapter``.

    The adapter is applied as it ships: a plain LoRA unmerged through peft, a SparsePEFT or QA-SparsePEFT
    sub-adapter merged exactly as ``merge`` does (masked by the base's zeros, onto its INT4 codes); one
    recorded for another base is refused, one recording none applied with a WARNING.
    """
    name, ex = config.model.name_or_path, config.export
    facts: dict[str, Any] = {"model": name}
    if is_openvino_dir(name):
        if adapter is not None:
            raise ValueError(
                f"--adapter {adapter} is a folder but {name} is an OpenVINO IR, whose weights are already final: "
                "export the base with the adapter (`export --adapter`) and evaluate that IR, evaluate the torch "
                "base, or give the adapter as a GenAI adapter file (`export-genai`)"
            )
        model, tokenizer = load_openvino_model(name, ex.device, ex.runtime_properties)
        return model, tokenizer, {**facts, "openvino": {"device": ex.device, "runtime_properties": ex.runtime_properties}}
    if adapter is None:
        model, tokenizer = load_model(config.model)
        return model, tokenizer, facts
    record = read_sub_adapter_record(adapter)
    # A peft folder without our record: its kind comes from the config, as `merge` takes it.
    kind = AdapterKind.parse(record["adapter_kind"] if record else config.bootstrapNAS.training.adapter_kind)
    if kind is AdapterKind.LORA:
        model, tokenizer = load_model(config.model)
        model, info = attach_adapter(model, adapter, merge=False, base_fingerprint=model_fingerprint(config.model))
    else:  # merged in float32, as `merge` writes it
        model, tokenizer = load_model(config.model.model_copy(update={"dtype": "float32"}))
        on_float = adapter_trains_on_float(adapter, kind, config.bootstrapNAS.training.qa_base_weight)
        result = merge_adapter_from_dirs(
            model=model,
            adapter_dir=adapter,
            adapter_kind=kind,  # a folder without our record (a super-adapter, a peft folder): the config's kind
            quantized=base_quantized_weights(config.model, float_source=on_float),
            base_fingerprint=model_fingerprint(config.model),
            inplace=True,
        )
        model, info = result.model, {"path": str(adapter), "merged": True}
    return model, tokenizer, {**facts, "adapter": {**info, "kind": kind.value}}


def evaluation_examples(config: PipelineConfig, tasks: dict[str, TaskData] | None = None) -> dict[str, list]:
    """Per task, the examples :func:`evaluate_model` scores (``evaluation.split``, ``evaluation.limit``)."""
    ev = config.evaluation
    tasks = tasks if tasks is not None else eval_splits(config)
    return {name: data.split(ev.split)[: ev.limit] if ev.limit else data.split(ev.split) for name, data in tasks.items()}


def evaluate_harness(
    config: PipelineConfig, model: Any, tokenizer: Any, *, online: bool = False
) -> dict[str, Any]:
    """lm-evaluation-harness on ``model`` (an IR directory path, or a torch model with ``tokenizer``).

    Offline: the very examples :func:`evaluate_model` scores, through the harness's official task
    definitions (:mod:`nncf_elastic_lora.harness`); ``online``: the harness's own tasks and hub datasets
    (``evaluation.limit`` examples each).
    """
    ev = config.evaluation
    tasks = ev.tasks or [config.data.task]
    unknown = [t for t in tasks if t not in HARNESS_TASKS] if not online else []
    if unknown:
        raise ValueError(
            f"evaluation.tasks: {unknown} have no lm-eval task definition here (offline); choose from "
            f"{sorted(HARNESS_TASKS)}, or pass --online for the harness's own tasks"
        )
    examples = None if online else evaluation_examples(config)
    return harness_evaluate(model, tokenizer, tasks=tasks, examples=examples, batch_size=ev.batch_size,
                            limit=ev.limit)  # fmt: skip


def evaluate_ir(
    config: PipelineConfig,
    ir_dir: str | Path,
    tasks: dict[str, TaskData] | None = None,
    progress: bool = True,
) -> list[TaskResult]:
    """Score an exported OpenVINO directory with ``export.device`` and ``export.runtime_properties``."""
    model, tokenizer = load_openvino_model(ir_dir, config.export.device, config.export.runtime_properties)
    return evaluate_model(model, tokenizer, config, tasks, progress)


def evaluate_genai(
    config: PipelineConfig,
    ir_dir: str | Path,
    adapters: Mapping[str, str | Path],
    progress: bool = True,
) -> dict[str, list[TaskResult]]:
    """Score GenAI runtime adapters (``{label: file}``) on the IR in ``ir_dir``, one pipeline for all.

    The adapters are registered once and switched per request, as a server would; ``export.device`` and
    ``export.runtime_properties`` apply. GenAI gives no logits of a given text, so only generated answers
    are scored (exact match); a task of choices alone is refused before anything loads.
    """
    from ..deploy.genai_adapters import GenAIGenerator, genai_pipeline

    examples = evaluation_examples(config)
    choices_only = [t for t, ex in examples.items() if not any(e.answer is not None for e in ex)]
    if choices_only:
        raise ValueError(
            f"evaluation.tasks {choices_only} are scored by the log-likelihood of their choices, which OpenVINO "
            "GenAI's LLMPipeline does not give: evaluate them on an IR with the adapter in its graph "
            "(`export --adapter`), or choose tasks with generated answers (basic_arithmetic, gsm8k)"
        )
    properties = config.export.runtime_properties
    check_properties({k: v for k, v in properties.items() if k not in PIPELINE_PROPERTIES}, config.export.device)
    pipe, registered = genai_pipeline(ir_dir, list(adapters.values()), config.export.device, **properties)
    tokenizer = AutoTokenizer.from_pretrained(ir_dir)
    out = {}
    for label, file in adapters.items():
        lm = GenAIGenerator(pipe, tokenizer, registered[str(file)])
        out[label] = [evaluate_task(lm, name, ex, split=config.evaluation.split, batch_size=config.evaluation.batch_size,
                                    max_new_tokens=config.evaluation.max_new_tokens, progress=progress)
                      for name, ex in examples.items()]  # fmt: skip
    return out


def write_eval(
    output: Path,
    label: str | dict[str, list[TaskResult]],
    results: list[TaskResult] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """``eval.json``, ``eval.md`` and ``predictions.jsonl`` of one evaluated model in ``output``
    (or of several: ``label`` a mapping ``{label: results}``, each result tagged with its label)."""
    tagged = isinstance(label, dict)
    by_label = label if tagged else {label: results or []}
    headers, rows = results_table(by_label)
    records = [{**r.to_dict(), **({"model": name} if tagged else {})} for name, rs in by_label.items() for r in rs]
    write_json(output / "eval.json", {**(extra or {}), "results": records})
    write_text(output / "eval.md", markdown_table(headers, rows))
    lines = [json.dumps({**({"model": name} if tagged else {}), "task": r.task, **p})
             for name, rs in by_label.items() for r in rs for p in r.predictions]  # fmt: skip
    write_text(output / "predictions.jsonl", "".join(line + "\n" for line in lines))


def evaluate_torch(run: RunState, model_config: ModelConfig) -> list[dict[str, Any]]:
    """A torch checkpoint scored on the run's tasks, as JSON-able results."""
    model, tokenizer = load_model(model_config)
    return [r.to_dict() for r in evaluate_model(model, tokenizer, run.config, run.tasks, run.progress)]


class EvaluateBase(Stage):
    """Score the current base (dense, sparse, INT4) on the evaluation tasks."""

    def __init__(self, name: str, title: str):
        self.name, self.title = name, title

    def compute(self, run: RunState) -> Any:
        return evaluate_torch(run, run.base)

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation[run.base_label] = result


class EvaluateMerged(Stage):
    """Score the merged (SparsePEFT, QA-SparsePEFT) or extracted (LoNAS) checkpoint."""

    name, title = "eval_merged", "evaluate merged"

    def inputs(self, run: RunState) -> dict[str, str | None]:
        return {"merged": fingerprint_path(run.merged)}

    def compute(self, run: RunState) -> Any:
        return evaluate_torch(run, run.model_at(run.merged))

    def apply(self, run: RunState, result: Any) -> None:
        run.evaluation[f"{run.method_label} ({run.adapter_label}, {run.merged_label})"] = result
