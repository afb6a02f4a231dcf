"""benchmarks/common.py, the timing and description helpers every benchmark script shares: what each one
calls, how often, and what it records (never how fast anything runs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402


def test_round_robin_times_plain_then_case_and_skips_the_slow_cases_repetitions():
    log = []
    fast = common.Case("fast", plain=lambda: log.append("p"), fn=lambda: log.append("f"), calls=2)
    slow = common.Case("slow", plain=lambda: log.append("P"), fn=lambda: log.append("S"), calls=1, every=2)
    common.round_robin([fast, slow], reps=3, plain_calls=1)
    warmup, timed = log[:4], "".join(log[4:])
    assert warmup == ["p", "f", "P", "S"]
    assert timed == "pff" + "PS" + "pff" + "pff" + "PS"  # the slow case in repetitions 0 and 2 only
    assert len(fast.plain_s) == len(fast.fn_s) == 3
    assert len(slow.plain_s) == len(slow.fn_s) == 2


def test_timed_repeats_leaves_the_first_repeat_untimed():
    calls, out = [], []
    common.timed_repeats(lambda: calls.append(1), 4, out)
    assert len(calls) == 4 and len(out) == 3 and all(t >= 0 for t in out)
    common.timed_repeats(lambda: calls.append(1), 0, out)
    assert len(calls) == 4 and len(out) == 3


def test_interleaved_takes_any_hashable_names_and_runs_repetitions_as_the_outer_loop():
    order = []
    fns = {("cnn", "plain"): lambda: order.append("a"), ("cnn", "step"): lambda: order.append("b")}
    out = common.interleaved(fns, reps=2, warmup=0)
    assert order == ["a", "b", "a", "b"]
    assert set(out) == set(fns) and all(len(v) == 2 for v in out.values())


def test_machine_names_extra_package_versions():
    line = common.machine(transformers="9.9.9")
    assert "eggroll-trainer" in line and ", transformers 9.9.9;" in line and "load average" in line


def test_device_helpers_on_the_cpu():
    import torch

    cpu = torch.device("cpu")
    fn = lambda: 3  # noqa: E731
    assert common.synced(fn, cpu) is fn  # nothing to wait for
    assert common.device_tag(cpu, torch.bfloat16) == "cpu_bfloat16"
    assert common.on_device(cpu).endswith("; device cpu")
