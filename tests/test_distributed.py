"""The population sharded over torch.distributed: 2-process gloo runs on loopback.

pytest starts this file as a script in two processes (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``,
as ``torchrun`` would); each runs every scenario and saves what it saw; the tests compare that with
single-process runs of the same scenarios here. Every spawn is bounded by a timeout, so a hang fails.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))  # conftest, when run as a script
from conftest import make_data, make_model, params_of  # noqa: E402

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer, current_population  # noqa: E402
from eggroll_trainer.distributed import RankMismatchError, RemoteFitnessError, all_sum, any_rank  # noqa: E402
from eggroll_trainer.shaping import prompt_baseline  # noqa: E402

WORLD = 2
GENERATIONS = 3
SPAWN_TIMEOUT = 120  # seconds; a hang fails the test instead of blocking the suite

# population_size 6 on 2 ranks: 3 members each, so antithetic pair 1 (members 2, 3) is split across ranks.
CASES = {
    "sequential": dict(cls=EGGROLLTrainer, population_size=6, rank=2, optimizer="adam"),
    "batched": dict(cls=EGGROLLTrainer, population_size=6, rank=2, batched=True, momentum=0.9, norm=True),
    "batched_chunks": dict(
        cls=VanillaESTrainer, population_size=8, batched=True, antithetic=False, chunk_size=3
    ),
    # (K, P) scores, one per data row (as a language-model fitness gives one per prompt), gathered as (N, P)
    "batched_prompts": dict(
        cls=EGGROLLTrainer,
        population_size=6,
        rank=1,
        batched=True,
        chunk_size=2,
        per_row=True,
        fitness_shaping=prompt_baseline,
    ),  # fmt: skip
    "sequential_prompts": dict(
        cls=EGGROLLTrainer, population_size=6, rank=1, per_row=True, fitness_shaping=prompt_baseline
    ),
}


class Fitness:
    """Negative MSE (sequential or batched) that logs which members it was asked to score."""

    def __init__(self, batched: bool, per_row: bool = False) -> None:
        self.x, self.y = make_data()
        self.batched = batched
        self.per_row = per_row  # (K, rows) scores instead of (K,)
        self.calls: list[tuple[int, int, int]] = []  # (start, size, total) per call; sequential: (-1, 1, -1)
        self.fail_at: int | None = None  # raise at this call index

    def __call__(self, model: torch.nn.Module):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise ValueError("fitness exploded on purpose")
        if not self.batched:
            self.calls.append((-1, 1, -1))
            if self.per_row:
                return -((model(self.x) - self.y) ** 2).view(1, -1)  # (1, rows)
            return -((model(self.x) - self.y) ** 2).mean().item()
        info = current_population()
        self.calls.append((info.start, info.size, info.total))
        pred = model(self.x.expand(info.size, *self.x.shape))
        return -((pred - self.y) ** 2).mean(dim=2 if self.per_row else (1, 2))


def build(case: str, seed: int | None = 0):
    options = dict(CASES[case])
    cls, norm = options.pop("cls"), options.pop("norm", False)
    model = make_model(norm=norm)
    fitness = Fitness(options.get("batched", False), options.pop("per_row", False))
    trainer = cls(model.parameters(), model=model, fitness_fn=fitness, learning_rate=0.05, sigma=0.1, seed=seed,
                  **options)  # fmt: skip
    return model, trainer, fitness


def snapshot(model, trainer, fitness=None) -> dict:
    return dict(
        params=params_of(model),
        history=list(trainer.fitness_history),
        best_fitness=trainer.best_fitness,
        best_model=params_of(trainer.get_best_model()),
        state=trainer.state_dict(),
        calls=None if fitness is None else list(fitness.calls),
        seed=trainer.seed,
    )


def run(case: str, generations: int, checkpoint: dict | None = None) -> dict:
    model, trainer, fitness = build(case)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        trainer.load_state_dict(checkpoint["trainer"])
    for _ in range(generations):
        trainer.step()
    return snapshot(model, trainer, fitness)


def checkpoint_after(case: str, generations: int) -> dict:
    model, trainer, _ = build(case)
    for _ in range(generations):
        trainer.step()
    return {"model": model.state_dict(), "trainer": trainer.state_dict()}


def outcome(fn) -> str:
    """``"ok"`` or ``"<ExceptionType>: <message>"`` (and the exception's notes, one a line)."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 — recorded for the test to inspect
        return "\n".join([f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", [])])
    return "ok"


# ----------------------------------------------------------------------------- worker processes
def worker(scenario: str, out: Path) -> None:
    if scenario == "hang":
        hang(out)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    results: dict = {}
    for case in CASES:
        results[case] = run(case, GENERATIONS)
    _, trainer, _ = build("sequential", seed=None)
    results["random_seed"] = trainer.seed
    results["any_rank"] = (any_rank(rank == 1), any_rank(False))
    results["all_sum"] = all_sum(torch.tensor([1.0, rank], dtype=torch.float64)).tolist()
    # checkpoint written by one process, resumed here on two; and the reverse (rank 0 saves)
    results["resumed"] = run("sequential", GENERATIONS - 1, torch.load(out / "checkpoint_1proc.pt"))
    ckpt = checkpoint_after("batched", 1)
    if rank == 0:
        torch.save(ckpt, out / "checkpoint_2proc.pt")
    # a raising fitness on rank 1 only (its 2nd member of generation 1); then recovery on every rank
    model, trainer, fitness = build("sequential")
    trainer.step()
    before = params_of(model)
    if rank == 1:
        fitness.fail_at = len(fitness.calls) + 1
    results["failure"] = outcome(trainer.step)
    results["after_failure"] = params_of(model)
    results["unchanged"] = all(torch.equal(a, b) for a, b in zip(before, results["after_failure"]))
    fitness.fail_at = None
    results["recovered"] = outcome(trainer.step)
    results["recovered_params"] = params_of(model)
    # population not divisible by the world size
    model = make_model()
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=Fitness(False), population_size=5, seed=0
    )
    results["indivisible"] = outcome(trainer.step)
    # a checkpoint loaded on rank 1 only: the ranks disagree on seed and generation
    model, trainer, _ = build("sequential", seed=1)
    if rank == 1:
        trainer.load_state_dict(torch.load(out / "checkpoint_1proc.pt")["trainer"])
    results["mismatch"] = outcome(trainer.step)
    torch.save(results, out / f"main_rank{rank}.pt")
    # last, as it breaks the group: rank 1 dies inside its fitness
    if rank == 1:
        trainer.fitness_fn = lambda model: os._exit(3)
    started = time.perf_counter()
    error = outcome(trainer.step)
    torch.save({"error": error, "seconds": time.perf_counter() - started}, out / "dead_rank0.pt")
    os._exit(0)  # the group is broken; do not wait on it at exit


def hang(out: Path) -> None:
    """Rank 1 hangs inside its fitness; rank 0 must fail after the group's timeout (4 s)."""
    _, trainer, _ = build("sequential")  # built first (no collective: seed given), so start-up skew is small
    dist.init_process_group("gloo", timeout=timedelta(seconds=4))
    if dist.get_rank() == 1:
        trainer.fitness_fn = lambda model: time.sleep(SPAWN_TIMEOUT)
    started = time.perf_counter()
    error = outcome(trainer.step)
    torch.save({"error": error, "seconds": time.perf_counter() - started}, out / "hang_rank0.pt")
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(scenario: str, out: Path) -> tuple[list[int | None], list[str]]:
    """Start WORLD worker processes on loopback and wait for rank 0 (killed at the timeout); ranks still
    running 2 s after rank 0 ended are killed (exit code None). Returns exit codes and stderr."""
    port = free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, __file__, scenario, str(out)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
    errors, codes = [], []
    try:
        for rank, proc in enumerate(procs):
            try:
                errors.append(proc.communicate(timeout=SPAWN_TIMEOUT if rank == 0 else 2)[1])
                codes.append(proc.returncode)
            except subprocess.TimeoutExpired:
                if rank == 0:
                    pytest.fail(f"distributed scenario {scenario!r}: rank 0 hung for {SPAWN_TIMEOUT} s")
                proc.kill()
                errors.append(proc.communicate()[1])
                codes.append(None)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return codes, errors


def load(out: Path, scenario: str) -> list[dict]:
    return [torch.load(out / f"{scenario}_rank{rank}.pt") for rank in range(WORLD)]


# ------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    torch.save(checkpoint_after("sequential", 1), out / "checkpoint_1proc.pt")
    codes, errors = spawn("main", out)
    assert codes == [0, 3], "\n".join(errors)  # rank 1 ends by dying on purpose (the last scenario)
    return out, load(out, "main")


def close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    # 1- and 2-process runs sum in different orders: they agree to ~1e-6 (float32), so allow 1e-5.
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-5) for x, y in zip(a, b, strict=True))


def identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one(ranks, case):
    _, results = ranks
    single = run(case, GENERATIONS)
    for result in (r[case] for r in results):
        assert close(result["params"], single["params"])
        assert result["history"] == pytest.approx(single["history"], rel=1e-6)
        assert result["best_fitness"] == pytest.approx(single["best_fitness"], rel=1e-6)
        assert close(result["best_model"], single["best_model"])


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_agree_exactly(ranks, case):
    _, (zero, one) = ranks
    assert identical(zero[case]["params"], one[case]["params"])
    assert identical(zero[case]["best_model"], one[case]["best_model"])
    assert (
        zero[case]["history"] == one[case]["history"]
        and zero[case]["best_fitness"] == one[case]["best_fitness"]
    )
    assert zero[case]["state"]["es"]["seed"] == one[case]["state"]["es"]["seed"]
    moments = [zero[case]["state"]["state"], one[case]["state"]["state"]]
    for key, value in moments[0].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(moments[1][key][name])), name


@pytest.mark.parametrize("case", list(CASES))
def test_each_rank_scores_only_its_members(ranks, case):
    _, results = ranks
    n = CASES[case]["population_size"]
    share = n // WORLD
    for rank, result in enumerate(results):
        calls = result[case]["calls"]
        if not CASES[case].get("batched"):
            assert len(calls) == GENERATIONS * share
            continue
        # batched: population-mode calls cover exactly this rank's slice, chunk by chunk, every generation
        chunk = CASES[case].get("chunk_size") or share
        expected = [(first, min(chunk, rank * share + share - first), n)
                    for first in range(rank * share, rank * share + share, chunk)]  # fmt: skip
        assert calls == expected * GENERATIONS


def test_random_seed_is_shared(ranks):
    _, (zero, one) = ranks
    assert zero["random_seed"] == one["random_seed"]


def test_any_rank_and_all_sum_are_collective(ranks):
    _, results = ranks
    assert [r["any_rank"] for r in results] == [(True, False)] * WORLD
    assert [r["all_sum"] for r in results] == [[2.0, 1.0]] * WORLD


def test_resume_across_world_sizes(ranks):
    out, results = ranks
    single = run("sequential", GENERATIONS)
    for result in results:  # saved by one process, resumed on two
        assert close(result["resumed"]["params"], single["params"])
        assert result["resumed"]["history"] == pytest.approx(single["history"], rel=1e-6)
    # saved by rank 0 of two, resumed by one process
    resumed = run("batched", GENERATIONS - 1, torch.load(out / "checkpoint_2proc.pt"))
    single = run("batched", GENERATIONS)
    assert close(resumed["params"], single["params"])
    assert resumed["history"] == pytest.approx(single["history"], rel=1e-6)


def test_a_failing_rank_fails_every_rank(ranks):
    _, (zero, one) = ranks
    assert one["failure"] == "ValueError: fitness exploded on purpose"
    assert zero["failure"].startswith(RemoteFitnessError.__name__) and "rank(s) [1]" in zero["failure"]
    assert zero["unchanged"] and one["unchanged"]  # no update anywhere; θ restored on the failing rank
    assert zero["recovered"] == one["recovered"] == "ok"  # the group is still usable, the ranks still agree
    assert identical(zero["recovered_params"], one["recovered_params"])


def test_indivisible_population_raises(ranks):
    _, results = ranks
    for result in results:
        assert result["indivisible"].startswith(
            "ValueError: population_size=5 must be divisible by the world size 2"
        )


def test_ranks_running_different_runs_raise(ranks):
    _, results = ranks
    for result in results:
        assert result["mismatch"].startswith(RankMismatchError.__name__)


def test_a_dead_rank_fails_the_others_at_once(ranks):
    out, _ = ranks
    zero = torch.load(out / "dead_rank0.pt")
    assert zero["error"] != "ok" and zero["seconds"] < 30, zero
    if sys.version_info >= (3, 11):
        assert "another rank has probably died" in zero["error"]


def test_a_hung_rank_fails_the_others_after_the_timeout(tmp_path):
    codes, errors = spawn("hang", tmp_path)
    zero = torch.load(tmp_path / "hang_rank0.pt")
    assert codes[0] == 0, errors[0]
    assert zero["error"] != "ok" and 3.5 < zero["seconds"] < 30, zero
    if sys.version_info >= (3, 11):
        assert "init_process_group(timeout=...)" in zero["error"]


def test_torchrun_example_matches_one_process():
    """examples/distributed_regression.py under torchrun (the trainer initialises torch.distributed from
    torchrun's environment) ends with the parameters of the one-process run."""
    script = Path(__file__).resolve().parent.parent / "examples" / "distributed_regression.py"
    flags = ["--generations", "3", "--population", "16", "--rows", "32", "--hidden", "8"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    outputs = []
    for launch in ([sys.executable], torchrun):
        done = subprocess.run([*launch, str(script), *flags], capture_output=True, text=True,
                              timeout=SPAWN_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    assert f"{WORLD} process(es), {16 // WORLD} members each" in outputs[1]
    checksums = [re.search(r"parameter checksum (\S+)", out).group(1) for out in outputs]
    assert checksums[0] == checksums[1], outputs


def test_mujoco_example_under_torchrun(tmp_path):
    """The documented 2-process command of the MuJoCo example runs end to end (a tiny step budget)."""
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    script = Path(__file__).resolve().parent.parent / "examples" / "mujoco_agent.py"
    flags = ["--env-id", "Hopper-v5", "--total-env-steps", "2000", "--num-workers", "0", "--calibration-s", "0.1",
             "--eval-episodes", "1", "--output-dir", str(tmp_path)]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    done = subprocess.run(
        [*torchrun, str(script), *flags], capture_output=True, text=True, timeout=SPAWN_TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("generation,env_steps") and len(rows) >= 2
    assert (tmp_path / "policy.pt").exists()


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
