import json

import pytest

from nncf_elastic_lora.config import DataConfig, SplitSizes
from nncf_elastic_lora.data import (
    BUNDLED_TASKS,
    DatasetNotFoundError,
    Example,
    example_from_record,
    extract_number,
    load_examples,
    load_task,
    split_examples,
    truncate_generation,
)


def _examples(n):
    return [Example(id=str(i), prompt=f"q{i}", target=" a") for i in range(n)]


def test_splits_are_deterministic_and_disjoint():
    sizes = SplitSizes(train=50, validation=20, test=30)
    a = split_examples(_examples(120), sizes, seed=7)
    b = split_examples(_examples(120), sizes, seed=7)
    assert [e.id for e in a.train] == [e.id for e in b.train]
    assert a.record == b.record
    ids = [set(e.id for e in s) for s in (a.train, a.validation, a.test)]
    assert sum(len(s) for s in ids) == 100
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    c = split_examples(_examples(120), sizes, seed=8)
    assert [e.id for e in c.test] != [e.id for e in a.test]


def test_test_split_does_not_depend_on_train_size():
    small = split_examples(_examples(100), SplitSizes(train=10, validation=5, test=20), seed=1)
    large = split_examples(_examples(100), SplitSizes(train=70, validation=5, test=20), seed=1)
    assert [e.id for e in small.test] == [e.id for e in large.test]


def test_split_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match="has 10 examples but the splits ask for 30"):
        split_examples(_examples(10), SplitSizes(train=10, validation=10, test=10), seed=0)


@pytest.mark.parametrize("task", sorted(BUNDLED_TASKS))
def test_bundled_tasks_load(task):
    data = load_task(DataConfig(task=task), sizes=SplitSizes(train=5, validation=5, test=5))
    ex = data.train[0]
    assert ex.prompt and ex.target
    assert ex.choices or ex.answer is not None
    if ex.choices:
        assert ex.choices[ex.label] == ex.target


def test_local_json_formats(tmp_path):
    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The answer is 5", "answer": "5"},
        {"question": "Sky colour?", "choices": ["red", "blue"], "answer": "B"},
        {"question": "One plus one?", "choices": ["2", "3"], "answer": 0},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    examples = load_examples(DataConfig(task="json", path=str(path)))
    assert "### Input:\n2 and 3" in examples[0].prompt and examples[0].answer == "5"
    assert examples[1].label == 1 and examples[1].choices == (" red", " blue")
    assert examples[2].label == 0
    as_list = tmp_path / "train.json"
    as_list.write_text(json.dumps(records))
    assert load_examples(DataConfig(task=str(as_list))) == examples


def test_unknown_record_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown record format"):
        example_from_record({"text": "x"}, 0)
    with pytest.raises(DatasetNotFoundError, match="missing.jsonl"):
        load_examples(DataConfig(task="json", path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(DatasetNotFoundError, match="not a bundled task"):
        load_examples(DataConfig(task="no_such_task"))


@pytest.mark.parametrize(
    "text,expected",
    [
        (" 96\n\nQuestion: Calculate 1 + 2 =", "96"),
        (" 12 apples and 3 pears, 15 in all", "15"),
        ("So the answer is 1,000.", "1000"),
        ("#### -42", "-42"),
        (" 7.50", "7.5"),
        ("no digits", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(truncate_generation(text)) == expected
