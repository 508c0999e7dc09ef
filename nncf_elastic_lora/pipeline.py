"""One-call entry points for each stage, and the whole pipeline.

Every stage reads and writes a directory, so it can be resumed or replaced by the user's own tool:
``sparsify`` writes a normal Hugging Face checkpoint (plus ``report.json``), ``evaluate`` writes
``eval.json`` and ``eval.md``, ``run`` chains them under one output directory and writes
``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .config import BootstrapNASConfig, ModelConfig, PipelineConfig
from .data import TaskData, eval_only_sizes, load_examples, load_task, split_examples
from .elastic import ElasticLoraSuperNet
from .evaluation import CausalLM, TaskResult, evaluate_task, results_table
from .models import load_model, resolve_model_dir
from .outputs import OutputExistsError, changed_inputs, fingerprint_path
from .provenance import model_fingerprint
from .reports import atomic_directory, markdown_table, print_table, write_json, write_text
from .sparsity import calibration_batches, sparsify_model
from .training import train_super_adapter

log = logging.getLogger(__name__)


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
    tasks = tasks if tasks is not None else eval_splits(config)
    lm = CausalLM(model, tokenizer)
    results = []
    for name, data in tasks.items():
        examples = data.split(ev.split)[: ev.limit] if ev.limit else data.split(ev.split)
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


def sparsify(config: PipelineConfig, output: str | Path, progress: bool = True) -> dict[str, Any]:
    """Load the configured model, sparsify it, and write an HF checkpoint with ``report.json``."""
    sp = config.sparsity
    model, tokenizer = load_model(config.model)
    calibration = None
    calib_record: dict[str, Any] = {}
    if sp.method == "wanda":
        cal = sp.calibration
        task = load_task(config.data, cal.task)
        calibration = calibration_batches(task.train, tokenizer, cal.num_samples, cal.seq_len, cal.seed)
        calib_record = {**cal.model_dump(), "task": task.name, "split": "train", "split_record": task.record}
    report = sparsify_model(
        model,
        method=sp.method,
        ratio=sp.ratio,
        pattern=sp.pattern,
        target_modules=sp.target_modules,
        calibration=calibration,
        progress=progress,
    )
    result = {
        "model": config.model.name_or_path,
        **report.to_dict(),
        "calibration": {**report.calibration, **calib_record},
    }
    with atomic_directory(output, verb="sparsify") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "report.json", result)
    log.info(
        "sparsified %s: %.2f%% of targeted weights zeroed", config.model.name_or_path, 100 * report.sparsity
    )
    return result


def build_supernet(model: Any, bnas: BootstrapNASConfig) -> ElasticLoraSuperNet:
    """Attach the configured elastic adapters to ``model``."""
    t, width = bnas.training, bnas.elasticity.width
    return ElasticLoraSuperNet.attach(
        model,
        target_modules=t.target_modules,
        max_rank=t.lora_r,
        alpha=t.lora_alpha,
        dropout=t.lora_dropout,
        overwrite_groups=width.overwrite_groups,
        overwrite_groups_widths=width.overwrite_groups_widths,
        default_widths=width.default_widths or [t.lora_r],
        seed=t.seed,
    )


def train(
    config: PipelineConfig, output: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the super-adapter on ``model.name_or_path`` (the sparse base); write it and the heuristic sub-adapter.

    Output: ``super_adapter/`` (peft folder at maximal rank + ``elastic_lora.json``),
    ``sub_adapter_heuristic/`` (a stock peft folder), ``checkpoints/`` and ``train_report.json``.
    """
    output = Path(output)
    model, tokenizer = load_model(config.model)
    supernet = build_supernet(model, config.bootstrapNAS)
    data = load_task(config.data)
    result, _ = train_super_adapter(
        supernet,
        tokenizer,
        data.train,
        config.bootstrapNAS.training,
        output / "checkpoints",
        max_length=config.data.max_length,
        resume=resume,
        progress=progress,
    )
    base = resolve_model_dir(config.model)
    supernet.save_super_adapter(output / "super_adapter", base_model=base)
    heuristic = supernet.get_heuristic_config()
    supernet.save_sub_adapter(output / "sub_adapter_heuristic", heuristic, base_model=base)
    report = {
        **result.to_dict(),
        "base_model": base,
        "data": data.record,
        "search_space": {"groups": len(supernet.groups), "size": supernet.space_size()},
        "adapter_params": {
            "maximal": supernet.get_active_params(supernet.get_maximal_config()),
            "heuristic": supernet.get_active_params(heuristic),
            "minimal": supernet.get_active_params(supernet.get_minimal_config()),
        },
    }
    write_json(output / "train_report.json", report)
    return report


def load_supernet(model_config: ModelConfig, super_adapter: str | Path) -> tuple[ElasticLoraSuperNet, Any]:
    """The base model with a saved super-adapter attached, and its tokenizer."""
    model, tokenizer = load_model(model_config)
    return ElasticLoraSuperNet.load_super_adapter(model, super_adapter), tokenizer


def evaluate_subnets(
    supernet: ElasticLoraSuperNet,
    tokenizer: Any,
    config: PipelineConfig,
    subnets: list[str] | dict[str, dict[str, int]],
    tasks,
    progress: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Evaluate sub-adapters: names ('maximal', 'heuristic', 'minimal') or ``{label: configuration}``."""
    if not isinstance(subnets, dict):
        subnets = {name: getattr(supernet, f"get_{name}_config")() for name in subnets}
    out = {}
    for name, subnet in subnets.items():
        supernet.activate_config(subnet)
        out[name] = [r.to_dict() for r in evaluate_model(supernet.model, tokenizer, config, tasks, progress)]
    supernet.activate_maximal_subnet()
    return out


def search(
    config: PipelineConfig, output: str | Path, super_adapter: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Search a sub-adapter of a trained super-adapter on the validation split (``bootstrapNAS.search``).

    ``config.model`` is the base the super-adapter was trained on. Writes the search outputs and the
    chosen sub-adapter (``sub_adapter/``) under ``output``; an existing ``evaluations.jsonl`` there is
    reused, so a killed search continues where it stopped.
    """
    from .search import SubnetObjectives, search_subadapter

    s = config.bootstrapNAS.search
    supernet, tokenizer = load_supernet(config.model, super_adapter)
    data = load_task(config.data)
    objectives = SubnetObjectives(
        supernet,
        tokenizer,
        data.validation[: s.subset_size],
        metric=s.metric,
        cost=s.cost,
        seq_len=s.seq_len,
        batch_size=config.evaluation.batch_size,
    )
    result = search_subadapter(
        supernet,
        objectives,
        s,
        output,
        base_model=resolve_model_dir(config.model),
        base_fingerprint=model_fingerprint(config.model),
        progress=progress,
    )
    return {**result.to_dict(), "data": data.record}


def calibration_texts(config: PipelineConfig) -> list[str]:
    """Train-split texts (prompt + answer) for data-aware weight compression, seeded and shuffled."""
    import random

    cal = config.export.calibration
    task = load_task(config.data, cal.task)
    texts = [e.text for e in task.train]
    random.Random(config.data.seed).shuffle(texts)
    return texts[: cal.num_samples]


def export(
    config: PipelineConfig,
    output: str | Path,
    adapter: str | Path | None = None,
    save_merged: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``config.model`` (plus ``adapter``) to OpenVINO IR as ``config.export`` says.

    Calibration texts come from ``export.calibration`` (train split), the parity prompts from the
    first test prompts of ``data.task``; the IR directory gets ``export_report.json`` and ``parity.json``.
    """
    from .exporting import export_openvino

    ex = config.export
    data_aware = ex.data_aware or ex.awq or ex.scale_estimation
    prompts = None
    if ex.parity.num_prompts:
        prompts = [e.prompt for e in load_task(config.data).test[: ex.parity.num_prompts]]
    report = export_openvino(
        config.model,
        output,
        adapter=adapter,
        merge_adapter=ex.merge_adapter,
        weight_format=ex.weight_format,
        group_size=ex.group_size,
        ratio=ex.ratio,
        sym=ex.sym,
        awq=ex.awq,
        scale_estimation=ex.scale_estimation,
        calibration=calibration_texts(config) if data_aware else None,
        group_size_fallback=ex.group_size_fallback,
        save_merged=save_merged,
        genai_device=ex.device,
        compare_prompts=prompts,
        compare_tokens=ex.parity.max_new_tokens,
        overwrite=overwrite,
    )
    return report


def evaluate_ir(
    config: PipelineConfig,
    ir_dir: str | Path,
    tasks: dict[str, TaskData] | None = None,
    progress: bool = True,
) -> list[TaskResult]:
    """Score an exported OpenVINO directory with ``export.device`` and ``export.runtime_properties``."""
    from .models import load_openvino_model

    model, tokenizer = load_openvino_model(ir_dir, config.export.device, config.export.runtime_properties)
    return evaluate_model(model, tokenizer, config, tasks, progress)


def write_eval(
    output: Path, label: str, results: list[TaskResult], extra: dict[str, Any] | None = None
) -> None:
    headers, rows = results_table({label: results})
    write_json(output / "eval.json", {**(extra or {}), "results": [r.to_dict() for r in results]})
    write_text(output / "eval.md", markdown_table(headers, rows))
    lines = [json.dumps({"task": r.task, **p}) for r in results for p in r.predictions]
    write_text(output / "predictions.jsonl", "".join(line + "\n" for line in lines))


def _completed_or(report: Path, resume: bool, make) -> dict[str, Any]:
    """A directory stage: on resume, the report of a directory already written (atomically), else make it."""
    if resume and report.is_file():
        return json.loads(report.read_text())
    return make()


def _stage(
    output: Path, name: str, fn, resume: bool, inputs: dict[str, str] | None = None
) -> tuple[Any, float, bool]:
    """Run a stage whose result is cached as ``stages/<name>.json``; reuse it when resuming.

    ``inputs`` are fingerprints of what the stage reads; a cached result of other inputs is refused.
    """
    path = output / "stages" / f"{name}.json"
    inputs = inputs or {}
    if resume and path.is_file():
        cached = json.loads(path.read_text())
        changed = changed_inputs(cached.get("inputs", {}), inputs)
        if changed:
            raise OutputExistsError(
                f"cannot resume stage {name!r} in {output}: its inputs changed since it ran "
                f"({', '.join(changed)}); use a new --output or --overwrite"
            )
        log.info("stage %s: reusing %s", name, path)
        return cached["result"], cached["time_s"], True
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    write_json(path, {"result": result, "time_s": elapsed, "inputs": inputs})
    return result, elapsed, False


def run_pipeline(
    config: PipelineConfig, output: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """evaluate dense -> sparsify -> evaluate sparse -> NLS train -> evaluate sub-adapters -> report.

    Completed stages are reused with ``resume`` (each writes its result atomically); an
    interrupted training continues from its last checkpoint.
    """
    output = Path(output)
    tasks = eval_splits(config)
    stages: dict[str, float] = {}
    evals: dict[str, list[dict[str, Any]]] = {}

    def eval_of(model_config: ModelConfig):
        model, tokenizer = load_model(model_config)
        return [r.to_dict() for r in evaluate_model(model, tokenizer, config, tasks, progress)]

    dense = {"model": model_fingerprint(config.model)}
    if config.evaluation.baseline:
        evals["dense"], stages["evaluate dense"], _ = _stage(
            output, "eval_dense", lambda: eval_of(config.model), resume, dense
        )
    base_inputs = dense
    base_model = config.model
    sparsity_report = None
    if config.sparsity.method != "none":
        sparse_dir = output / "sparse_model"

        def do_sparsify():
            return _completed_or(
                sparse_dir / "report.json", resume, lambda: sparsify(config, sparse_dir, progress)
            )

        sparsity_report, stages["sparsify"], _ = _stage(output, "sparsify", do_sparsify, resume, dense)
        base_model = config.model.model_copy(update={"name_or_path": str(sparse_dir)})
        base_inputs = {"base": fingerprint_path(sparse_dir)}
        if config.evaluation.baseline:
            evals["sparse"], stages["evaluate sparse"], _ = _stage(
                output, "eval_sparse", lambda: eval_of(base_model), resume, base_inputs
            )
    train_report = search_report = None
    if config.bootstrapNAS.enabled:
        trained = config.model_copy(update={"model": base_model})
        train_dir = output / "nls"
        train_report, stages["train"], _ = _stage(
            output,
            "train",
            lambda: train(trained, train_dir, resume=resume, progress=progress),
            resume,
            base_inputs,
        )
        adapter_inputs = {**base_inputs, "super_adapter": fingerprint_path(train_dir / "super_adapter")}

        def eval_subnets():
            supernet, tokenizer = load_supernet(base_model, train_dir / "super_adapter")
            return evaluate_subnets(supernet, tokenizer, config, config.evaluation.subnets, tasks, progress)

        subnet_evals, stages["evaluate sub-adapters"], _ = _stage(
            output, "eval_subnets", eval_subnets, resume, adapter_inputs
        )
        prefix = "sparse+" if config.sparsity.method != "none" else ""
        label = "NLS" if config.bootstrapNAS.training.algorithm == "nls" else "LoRA"
        evals.update({f"{prefix}{label} ({name})": r for name, r in subnet_evals.items()})
        algorithm = config.bootstrapNAS.search.algorithm
        if algorithm != "heuristic":
            search_dir = output / "search"
            trained_base = config.model_copy(update={"model": base_model})
            search_report, stages[f"search ({algorithm})"], _ = _stage(
                output,
                "search",
                lambda: search(trained_base, search_dir, train_dir / "super_adapter", progress),
                resume,
                adapter_inputs,
            )

            def eval_chosen():
                supernet, tokenizer = load_supernet(base_model, train_dir / "super_adapter")
                chosen = {algorithm: search_report["chosen"]}
                return evaluate_subnets(supernet, tokenizer, config, chosen, tasks, progress)[algorithm]

            evals[f"{prefix}{label} ({algorithm})"], stages["evaluate searched"], _ = _stage(
                output, "eval_searched", eval_chosen, resume, adapter_inputs
            )
    export_report = None
    if config.export.enabled:
        adapter = None
        if train_report is not None:
            adapter = output / ("search/sub_adapter" if search_report else "nls/sub_adapter_heuristic")
        exported = config.model_copy(update={"model": base_model})
        ir_dir = output / "openvino"

        def do_export():
            return _completed_or(
                ir_dir / "export_report.json", resume, lambda: export(exported, ir_dir, adapter)
            )

        export_inputs = {**base_inputs, "adapter": fingerprint_path(adapter) if adapter else None}
        export_report, stages["export to OpenVINO"], _ = _stage(
            output, "export", do_export, resume, export_inputs
        )
        which = "" if adapter is None else f", {'searched' if search_report else 'heuristic'} sub-adapter"
        evals[f"OpenVINO IR ({config.export.weight_format}{which})"], stages["evaluate IR"], _ = _stage(
            output,
            "eval_ir",
            lambda: [r.to_dict() for r in evaluate_ir(config, ir_dir, tasks, progress)],
            resume,
            {"ir": fingerprint_path(ir_dir)},
        )
    report = {
        "config": config.model_dump(mode="json"),
        "data": {name: t.record for name, t in tasks.items()},
        "evaluation": evals,
        "sparsity": None
        if sparsity_report is None
        else {
            k: sparsity_report[k]
            for k in ("method", "ratio", "pattern", "sparsity", "model_sparsity", "time_s")
        },
        "training": None
        if train_report is None
        else {
            k: train_report[k]
            for k in (
                "algorithm",
                "steps",
                "train_loss",
                "step_time_median_s",
                "time_s",
                "trainable_params",
                "adapter_params",
                "search_space",
            )
        },
        "artifacts": {
            "sparse_model": str(output / "sparse_model") if sparsity_report else None,
            "super_adapter": str(output / "nls" / "super_adapter") if train_report else None,
            "sub_adapter": str(output / "nls" / "sub_adapter_heuristic") if train_report else None,
            "searched_sub_adapter": str(output / "search" / "sub_adapter") if search_report else None,
            "openvino": str(output / "openvino") if export_report else None,
        },
        "export": None
        if export_report is None
        else {
            k: export_report.get(k)
            for k in ("weight_format", "adapter", "ir_sparsity", "size_bytes", "parity", "export_s")
        },
        "search": None
        if search_report is None
        else {
            k: search_report[k]
            for k in (
                "algorithm",
                "chosen_quality",
                "chosen_cost",
                "evaluations_used",
                "new_evaluations",
                "wall_s",
                "reference",
            )
        },
        "stage_time_s": stages,
    }
    write_json(output / "report.json", report)
    write_text(output / "report.md", summary_markdown(report))
    return report


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    results = {label: [TaskResult(**r) for r in rs] for label, rs in report["evaluation"].items()}
    return results_table(results)


def summary_markdown(report: dict[str, Any]) -> str:
    headers, rows = summary_rows(report)
    text = "# nncf-elastic-lora run\n\n## Accuracy\n\n" + markdown_table(headers, rows)
    if report.get("sparsity"):
        s = report["sparsity"]
        text += (
            f"\n## Sparsity\n\n{s['method']} {s['pattern']} at ratio {s['ratio']}: "
            f"{100 * s['sparsity']:.2f}% of targeted weights, {100 * s['model_sparsity']:.2f}% of all parameters\n"
        )
    if report.get("training"):
        t = report["training"]
        text += (
            f"\n## Training\n\n{t['algorithm']}: {t['steps']} steps, final loss {t['train_loss']:.4f}, "
            f"median step {t['step_time_median_s']:.2f} s; trainable parameters {t['trainable_params']:,}; "
            f"adapter parameters maximal / heuristic / minimal: {t['adapter_params']['maximal']:,} / "
            f"{t['adapter_params']['heuristic']:,} / {t['adapter_params']['minimal']:,}; "
            f"search space: {t['search_space']['groups']} groups, {t['search_space']['size']:.3g} sub-adapters\n"
        )
    if report.get("export"):
        e = report["export"]
        text += f"\n## OpenVINO IR\n\n{report['artifacts']['openvino']}: {e['weight_format']} weights, "
        text += f"{e['size_bytes']['model_bin'] / 2**20:.1f} MiB of weights"
        if e.get("ir_sparsity") is not None:
            text += f", {100 * e['ir_sparsity']:.2f}% zeros in the decoder's MatMul weights"
        if e.get("parity"):
            p = e["parity"]
            text += (
                f"; against torch on {p['prompts']} prompts: max |logit diff| {p['logits_max_abs_diff']:.2e} "
                f"(f32 hint), identical greedy tokens {p['greedy_identical_optimum']}/{p['prompts']} (optimum-intel)"
            )
            if "greedy_identical_genai" in p:
                text += f", {p['greedy_identical_genai']}/{p['prompts']} (GenAI)"
        text += "\n"
    text += "\n## Time per stage\n\n" + markdown_table(
        ["stage", "seconds"], [[k, v] for k, v in report["stage_time_s"].items()]
    )
    text += "\n## Data splits\n\n" + markdown_table(
        ["task", "seed", "available", "train", "validation", "test"],
        [[n, r["seed"], r["available"], *r["sizes"].values()] for n, r in report["data"].items()],
    )
    return text


def export_facts(export_report: dict[str, Any]) -> list[list[str]]:
    """Rows ``[what, value]`` about an exported IR: weights, zeros, agreement with torch."""
    e = export_report
    facts = [["OpenVINO IR weights", f"{e['weight_format']}, {e['size_bytes']['model_bin'] / 2**20:.1f} MiB"]]
    if e.get("ir_sparsity") is not None:
        facts.append(["zeros in the IR's MatMul weights", f"{100 * e['ir_sparsity']:.2f}%"])
    if e.get("parity"):
        p = e["parity"]
        facts += [
            ["max |logit diff| vs torch (f32)", f"{p['logits_max_abs_diff']:.3g}"],
            ["identical greedy: optimum-intel", f"{p['greedy_identical_optimum']}/{p['prompts']}"],
            ["identical greedy: GenAI", f"{p.get('greedy_identical_genai', '-')}/{p['prompts']}"],
        ]
    return facts


def print_summary(report: dict[str, Any]) -> None:
    headers, rows = summary_rows(report)
    print_table("accuracy", headers, rows)
    facts = []
    if report.get("sparsity"):
        facts.append(["sparsity (targeted weights)", f"{100 * report['sparsity']['sparsity']:.2f}%"])
    if report.get("training"):
        t = report["training"]
        facts += [
            ["trainable parameters", f"{t['trainable_params']:,}"],
            ["heuristic sub-adapter parameters", f"{t['adapter_params']['heuristic']:,}"],
            ["training steps / median step (s)", f"{t['steps']} / {t['step_time_median_s']:.2f}"],
        ]
    if report.get("export"):
        facts += export_facts(report["export"])
    if facts:
        print_table("model", ["", "value"], facts)
    print_table(
        "time per stage (s)", ["stage", "seconds"], [[k, v] for k, v in report["stage_time_s"].items()]
    )
