"""Prompt data: every file kind keeps its other columns as fields; the prompt order is resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eggroll_trainer.llm.data import PromptData, batch_indices, load_prompts

RECORDS = [{"question": "1+1=", "answer": "2"}, {"question": "2+3=", "answer": "5"}]


def test_text_and_json_lines(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("12+34=\n\n5+6=\n")
    assert load_prompts(tmp_path / "p.txt") == PromptData(["12+34=", "5+6="])
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    data = load_prompts(tmp_path / "p.jsonl")
    assert data.prompts == ["1+1=", "2+3="] and data.fields == {"answer": ["2", "5"]}
    swapped = load_prompts(str(tmp_path / "p.jsonl"), field="answer")
    assert swapped.prompts == ["2", "5"] and swapped.fields == {"question": ["1+1=", "2+3="]}
    batch = data.batch([1])
    assert batch.prompts == ["2+3="] and batch.fields == {"answer": ["5"]}


def test_csv_parquet_and_datasets_folder(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.csv").write_text("question,answer\n1+1=,2\n2+3=,5\n")
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "p.parquet")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(RECORDS), "test": datasets.Dataset.from_list(RECORDS[:1])
    }).save_to_disk(str(tmp_path / "folder"))  # fmt: skip
    for source in ("p.csv", "p.parquet", "folder"):
        data = load_prompts(tmp_path / source)
        assert data.prompts == ["1+1=", "2+3="] and data.fields == {"answer": ["2", "5"]}, source
    assert load_prompts(tmp_path / "folder", split="test").prompts == ["1+1="]
    with pytest.raises(ValueError, match="Invalid split: 'dev'"):
        load_prompts(tmp_path / "folder", split="dev")


def test_python_records_and_bad_input(tmp_path: Path) -> None:
    assert load_prompts(["a", "b"]).prompts == ["a", "b"]
    assert load_prompts(RECORDS).fields == {"answer": ["2", "5"]}
    with pytest.raises(ValueError, match="no prompt column 'prompt / question / text / input'"):
        load_prompts([{"q": "x"}])
    with pytest.raises(ValueError, match="no prompt column 'nope'"):
        load_prompts(RECORDS, field="nope")
    with pytest.raises(ValueError, match="do not all have the columns"):
        load_prompts([{"prompt": "a"}, {"prompt": "b", "answer": "c"}])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="cannot read"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_prompts(tmp_path / "bad.jsonl")


def test_chat_template() -> None:
    class Tok:
        chat_template = "set"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"

    data = PromptData(["hi"], {"answer": ["yo"]}).with_chat_template(Tok(), system="be brief")
    assert data.prompts == ["system:be brief|user:hi|assistant:"] and data.fields == {"answer": ["yo"]}
    Tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        PromptData(["hi"]).with_chat_template(Tok())


def test_batch_order_passes_over_the_data_and_depends_only_on_the_generation() -> None:
    n, b = 7, 3
    order = [i for g in range(7) for i in batch_indices(n, b, seed=5, generation=g)]  # 21 = 3 passes
    for epoch in range(3):
        assert sorted(order[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert order[:n] != order[n : 2 * n]  # each pass is its own permutation
    assert batch_indices(n, b, seed=5, generation=4) == order[12:15]
    assert batch_indices(n, b, seed=6, generation=0) != order[:3]
    with pytest.raises(ValueError, match="Invalid prompts per step: 8"):
        batch_indices(n, 8, seed=0, generation=0)
