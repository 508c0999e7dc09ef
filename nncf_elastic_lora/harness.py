"""lm-evaluation-harness (``lm-eval``), the field's evaluator, on our models and our bundled test splits.

Shears, SQFT and LoNAS report accuracy with lm-eval; :func:`harness_evaluate` runs it on a torch model
(``HFLM``) or an OpenVINO IR (lm-eval's ``openvino`` model, optimum-intel). Online it takes the harness's
own tasks (hub datasets). Offline (the default here) it evaluates the bundled examples through local task
definitions that *include* the harness's official YAML (its prompt, choices, target and metrics) and
only replace the dataset with a JSONL file of those very examples, rebuilt in the harness's dataset schema
(:func:`harness_docs`). So our evaluator and lm-eval can be compared example by example
(:func:`compare_with_ours`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data import MC_TEMPLATE, Example

log = logging.getLogger(__name__)

_QUESTION, _ANSWER = MC_TEMPLATE.split("{question}")
_SST2 = "\nQuestion: Is this sentence positive or negative?\nAnswer:"


def _question(e: Example) -> str:
    if not (e.prompt.startswith(_QUESTION) and e.prompt.endswith(_ANSWER)):
        raise ValueError(f"example {e.id}: its prompt is not the 'Question: ...\\nAnswer:' template")
    return e.prompt[len(_QUESTION) : len(e.prompt) - len(_ANSWER)]


def _piqa(e: Example) -> dict[str, Any]:
    return {"id": e.id, "goal": _question(e), "sol1": e.choices[0][1:], "sol2": e.choices[1][1:], "label": e.label}


def _arc(e: Example) -> dict[str, Any]:
    labels = [chr(ord("A") + i) for i in range(len(e.choices))]
    return {"id": e.id, "question": _question(e), "choices": {"text": [c[1:] for c in e.choices], "label": labels},
            "answerKey": labels[e.label]}  # fmt: skip


def _sst2(e: Example) -> dict[str, Any]:
    if not e.prompt.endswith(_SST2):
        raise ValueError(f"example {e.id}: its prompt is not the SST-2 template")
    return {"id": e.id, "sentence": e.prompt[: -len(_SST2)], "label": e.label}


# our bundled task -> (the official YAML, under lm_eval/tasks/, that defines prompt, choices and metrics;
# the doc builder). Named by path: indexing every harness task to find one takes ~20 s.
HARNESS_TASKS: dict[str, tuple[str, Callable[[Example], dict[str, Any]]]] = {
    "piqa": ("piqa/piqa.yaml", _piqa),
    "arc_easy": ("arc/arc_easy.yaml", _arc),
    "arc_challenge": ("arc/arc_challenge.yaml", _arc),
    "sst2": ("glue/sst2/default.yaml", _sst2),
}


def harness_docs(task: str, examples: list[Example]) -> list[dict[str, Any]]:
    """``examples`` of bundled ``task`` as rows of the harness's dataset (piqa's goal/sol1/sol2/label, ...)."""
    if task not in HARNESS_TASKS:
        raise ValueError(f"task {task!r} has no lm-eval counterpart here; choose from {sorted(HARNESS_TASKS)}")
    return [HARNESS_TASKS[task][1](e) for e in examples]


def _official_yaml(relative: str) -> Path:
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"lm-eval's task definition {path} is missing (another lm-eval version?)")
    return path


def local_tasks(examples: dict[str, list[Example]], directory: Path) -> dict[str, str]:
    """Write ``<task>_bundled.yaml`` + ``.jsonl`` per task into ``directory``; ``{our task: harness task name}``."""
    names = {}
    for task, rows in examples.items():
        docs = harness_docs(task, rows)
        data = directory / f"{task}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        name = f"{task}_bundled"
        spec = {"include": str(_official_yaml(HARNESS_TASKS[task][0])), "task": name, "tag": [], "dataset_path": "json",
                "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(data)}},
                "training_split": None, "validation_split": None, "test_split": "test"}  # fmt: skip
        (directory / f"{name}.yaml").write_text(json.dumps(spec))  # JSON is YAML
        names[task] = name
    return names


def _lm(model: Any, tokenizer: Any, batch_size: int):
    """lm-eval's model: ``HFLM`` on a torch model, its ``openvino`` model (optimum-intel) on an IR directory."""
    if isinstance(model, str | Path):
        from lm_eval.models.optimum_lm import OptimumLM

        return OptimumLM(pretrained=str(model), batch_size=batch_size)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def harness_evaluate(
    model: Any,
    tokenizer: Any = None,
    *,
    tasks: list[str],
    examples: dict[str, list[Example]] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    """lm-eval's accuracies of ``model`` (a torch model with ``tokenizer``, or an IR directory).

    ``examples``: evaluate these bundled examples per task (offline, through :func:`local_tasks`); None: the
    harness's own ``tasks`` online (hub datasets; ``limit`` examples each). Returns
    ``{task: {"acc", "acc_norm", "examples", "harness_task", "samples": [{"id", "acc", "loglik"}]}}``.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = _lm(model, tokenizer, batch_size)
    with tempfile.TemporaryDirectory(prefix="nel-lm-eval-") as tmp:
        names = local_tasks(examples, Path(tmp)) if examples is not None else {t: t for t in tasks}
        manager = TaskManager(include_path=tmp, include_defaults=False) if examples is not None else TaskManager()
        out = lm_eval.simple_evaluate(model=lm, tasks=[names[t] for t in tasks], task_manager=manager,
                                      limit=None if examples is not None else limit, log_samples=True)  # fmt: skip
    results = {}
    for task in tasks:
        name = names[task]
        metrics = out["results"][name]
        samples = [{"id": s["doc"].get("id", s["doc_id"]), "acc": s["acc"],
                    "loglik": [float(r[0]) for r in s["filtered_resps"]]} for s in out["samples"][name]]  # fmt: skip
        results[task] = {"harness_task": name, "acc": metrics.get("acc,none"), "acc_norm": metrics.get("acc_norm,none"),
                         "examples": len(samples), "samples": samples}  # fmt: skip
    return results


def compare_with_ours(ours: list[dict[str, Any]], theirs: dict[str, Any]) -> dict[str, Any]:
    """Our evaluator's per-example predictions (``multiple_choice``) against lm-eval's on the same examples."""
    by_id = {str(s["id"]): s for s in theirs["samples"]}
    common = [p for p in ours if str(p["id"]) in by_id]
    agree = sum((p["pred"] == p["label"]) == bool(by_id[str(p["id"])]["acc"]) for p in common)
    diffs = [abs(a - b) for p in common for a, b in zip(p["loglik"], by_id[str(p["id"])]["loglik"], strict=True)]
    n = max(len(common), 1)
    return {"examples": len(common), "same_correctness": agree, "agreement": agree / n,
            "acc_ours": sum(p["pred"] == p["label"] for p in common) / n,
            "acc_lm_eval": sum(bool(by_id[str(p["id"])]["acc"]) for p in common) / n,
            "max_abs_loglik_diff": max(diffs, default=0.0)}  # fmt: skip
