"""Prompts and the data's other fields, read offline, and the order a run visits them.

[`load_prompts`][eggroll_trainer.llm.data.load_prompts] reads ``.txt`` (one prompt a non-empty line),
``.jsonl`` / ``.json`` (objects), ``.csv``, ``.parquet`` (needs ``pyarrow``) and a folder written by
``datasets``' ``save_to_disk`` (needs ``datasets``; a ``DatasetDict`` is read at ``split``). One column is
the prompt; every other column is kept as a **field** the reward receives by name (``answer``, …).

[`batch_indices`][eggroll_trainer.llm.data.batch_indices] is the prompt order: each pass over the data
is a permutation keyed by ``(seed, pass)``, and generation g takes the next b prompts of it — a function
of the generation alone, so a resumed run visits exactly the prompts the uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fitness import PromptBatch

__all__ = ["PromptData", "load_prompts", "batch_indices", "PROMPT_COLUMNS"]

#: Columns tried, in order, when no prompt field is named.
PROMPT_COLUMNS = ("prompt", "question", "text", "input")


@dataclass
class PromptData:
    """Prompts and aligned fields (``fields[name][j]`` belongs to ``prompts[j]``)."""

    prompts: list[str]
    fields: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, indices: Sequence[int]) -> PromptBatch:
        """The prompts at ``indices`` and their fields."""
        return PromptBatch(
            [self.prompts[i] for i in indices], {k: [v[i] for i in indices] for k, v in self.fields.items()}
        )

    def with_chat_template(self, tokenizer: Any, system: str | None = None) -> PromptData:
        """Each prompt as the user turn of the tokenizer's chat template (after an optional system turn),
        ending where the assistant's answer begins."""
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("Invalid chat: the tokenizer has no chat template (leave out --chat)")
        head = [{"role": "system", "content": system}] if system else []
        prompts = [
            tokenizer.apply_chat_template(
                head + [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in self.prompts
        ]
        return PromptData(prompts, self.fields)


def _rows(path: Path, split: str | None) -> list[dict[str, Any]] | list[str]:
    """The records of ``path``: dicts, or plain strings for a text file."""
    if path.is_dir():
        try:
            import datasets
        except ImportError:
            raise ValueError(
                f"Invalid prompts: reading the folder {path} needs `pip install datasets`"
            ) from None
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            name = split or ("train" if "train" in data else next(iter(data)))
            if name not in data:
                raise ValueError(f"Invalid split: {name!r} not in {path} (has {sorted(data)})")
            data = data[name]
        return data.to_list()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"Invalid prompts: reading {path} needs `pip install pyarrow`") from None
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix == ".json":
        rows = json.loads(text)
        return rows if isinstance(rows, list) else rows[split or "train"]
    lines = [line for line in text.splitlines() if line.strip()]
    if suffix == ".jsonl":
        return [json.loads(line) for line in lines]
    return lines


def load_prompts(
    source: str | Path | Sequence[str] | Sequence[dict[str, Any]] | PromptData,
    *,
    field: str | None = None,
    split: str | None = None,
) -> PromptData:
    """Prompts and fields from a file, a ``datasets`` folder, or Python lists (see the module docstring).

    Args:
        source: a path, a list of prompt strings, a list of records (dicts), or ``PromptData``.
        field: the column holding the prompt (default: the first of ``prompt``, ``question``, ``text``,
            ``input`` present).
        split: the split of a ``datasets.DatasetDict`` folder or a ``{split: [...]}`` JSON file
            (default ``train``).

    Raises:
        ValueError: unreadable source, missing prompt column, records of different columns, no prompt.
    """
    if isinstance(source, PromptData):
        return source
    name = str(source) if isinstance(source, (str, Path)) else "the records"
    try:
        rows = _rows(Path(source), split) if isinstance(source, (str, Path)) else list(source)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"Invalid prompts: cannot read {name} ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise ValueError(f"Invalid prompts: {name} holds no prompt")
    if all(isinstance(r, str) for r in rows):
        if field not in (None, "prompt", "text"):
            raise ValueError(f"Invalid field: {name} holds plain text lines, no column {field!r}")
        return PromptData(list(rows))  # type: ignore[arg-type]
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"Invalid prompts: {name} must hold strings or objects, one per prompt")
    columns = list(rows[0])
    if any(list(r) != columns and set(r) != set(columns) for r in rows):
        raise ValueError(f"Invalid prompts: the records of {name} do not all have the columns {columns}")
    key = field or next((c for c in PROMPT_COLUMNS if c in columns), None)
    if key is None or key not in columns:
        raise ValueError(
            f"Invalid field: {name} has no prompt column {field or ' / '.join(PROMPT_COLUMNS)!r}; "
            f"its columns are {columns} (choose one with field= / --field)"
        )
    prompts = [str(r[key]) for r in rows]
    return PromptData(prompts, {c: [r[c] for r in rows] for c in columns if c != key})


def batch_indices(n: int, b: int, seed: int, generation: int) -> list[int]:
    """Indices of the ``b`` prompts of ``generation`` (0-based) among ``n``: positions g·b … g·b+b−1 of
    the concatenated passes, pass e being a permutation of ``range(n)`` seeded by ``(seed, e)``."""
    if not 0 < b <= n:
        raise ValueError(f"Invalid prompts per step: {b} (the data holds {n} prompts)")
    out: list[int] = []
    position = generation * b
    while len(out) < b:
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        take = order[offset : offset + b - len(out)]
        out += take
        position += len(take)
    return out
