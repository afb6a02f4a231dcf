"""Smoke tests: the machine-learning examples run end to end on a tiny budget (each well under 30 s)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, out: Path, *flags: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--quick", "--output-dir", str(out), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_drop_in_classifier(tmp_path: Path) -> None:
    stdout = run_example("drop_in_classifier.py", tmp_path, "--sweep")
    for name in ("results.csv", "results.md", "curves.csv", "drop_in_classifier.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = read_csv(tmp_path / "results.csv")
    by_loop = {(r["method"], r["loop"]): r for r in rows}
    assert set(by_loop) == {
        ("Adam", "unchanged"),
        ("EGGROLL", "unchanged"),
        ("EGGROLL", "population"),
        ("EGGROLL", "sweep"),
    }
    assert len([r for r in rows if r["loop"] == "sweep"]) == 4  # the --quick sweep is 2 sizes x 2 ranks
    acc = {key: float(r["test_accuracy"]) for key, r in by_loop.items()}
    # 10 classes: chance is 0.1. After 2 epochs Adam is near 0.9 and EGGROLL (N=32) near 0.45.
    assert acc["Adam", "unchanged"] > 0.5
    assert acc["EGGROLL", "population"] > 0.2
    # Same noise, same minibatches: the sequential loop and the population loop learn the same model.
    assert abs(acc["EGGROLL", "unchanged"] - acc["EGGROLL", "population"]) < 0.05
    assert all(float(r["wall_time_s"]) > 0 for r in rows)
    assert "| method |" in stdout


def test_non_differentiable(tmp_path: Path) -> None:
    stdout = run_example("non_differentiable.py", tmp_path)
    for name in ("results.md", "history.csv", "model_int8.pt", "non_differentiable.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    # Autograd gets no signal: the accuracy has no graph, the cross-entropy gradient is exactly zero.
    assert "does not require grad" in stdout
    assert "cross-entropy: largest gradient norm | 0.0 |" in stdout
    assert "integer predictions identical to training forward | True |" in stdout
    history = read_csv(tmp_path / "history.csv")
    first, last = history[0], history[-1]
    assert int(last["generation"]) == 30
    assert last["adam_test_accuracy"] == first["adam_test_accuracy"]  # Adam never moves
    # 30 generations take the int8 sign network from chance (0.1) to ~0.7 test accuracy.
    assert float(last["es_test_accuracy"]) > 0.3
