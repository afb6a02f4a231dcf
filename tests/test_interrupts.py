"""eggroll_trainer.trainers.interrupts: SIGINT is held inside the block and delivered once after it."""

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from eggroll_trainer import ESTrainer
from eggroll_trainer.trainers.interrupts import defer_keyboard_interrupt


@pytest.fixture(autouse=True)
def python_handles_sigint():
    """Python's own Ctrl-C handler, as in a terminal: a suite launched in the background (``nohup … &``)
    inherits SIGINT ignored, and these tests are about the handler, not about how the suite was started."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_is_deferred_to_the_end_of_the_block():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with defer_keyboard_interrupt():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_previous_handler_gets_the_first_signal_once_and_is_restored():
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with defer_keyboard_interrupt():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            assert calls == []
        assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is handler
        with defer_keyboard_interrupt():  # nothing received: nothing delivered
            pass
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_the_block_runs_unguarded():
    seen = []

    def body():
        with defer_keyboard_interrupt():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


class InterruptingSGD(torch.optim.SGD):
    """An update rule that receives Ctrl-C halfway through writing the parameters."""

    def step(self, closure=None):
        signal.raise_signal(signal.SIGINT)
        return super().step(closure)


def test_ctrl_c_during_an_update_lands_after_it():
    torch.manual_seed(0)
    model, twin = nn.Linear(3, 2), nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    fitness = lambda m: -float((m.weight**2).sum())  # noqa: E731
    trainer = ESTrainer(
        model.parameters(), model, fitness, population_size=4, seed=0, optimizer=InterruptingSGD
    )
    reference = ESTrainer(
        twin.parameters(), twin, fitness, population_size=4, seed=0, optimizer=torch.optim.SGD
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.step()
    reference.step()
    assert trainer.generation == 1 and len(trainer.fitness_history) == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


SIG_DFL_SCRIPT = """
import os, signal, sys
from eggroll_trainer.trainers.interrupts import defer_keyboard_interrupt
signal.signal(signal.SIGINT, signal.SIG_DFL)
with defer_keyboard_interrupt():
    os.kill(os.getpid(), signal.SIGINT)
    print("held", flush=True)
print("dropped", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_sigint_held_under_sig_dfl_takes_the_default_action_after_the_block():
    """With SIG_DFL installed (no Python handler) the held Ctrl-C must still end the process — not vanish."""
    done = subprocess.run([sys.executable, "-c", SIG_DFL_SCRIPT], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert done.stdout.split() == ["held"]
    assert done.returncode == -signal.SIGINT
