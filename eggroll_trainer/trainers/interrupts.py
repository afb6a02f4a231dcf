"""Ctrl-C between generations, never inside an update.

An update writes every parameter, the update rule's moments, the generation counter and the best member; a
``KeyboardInterrupt`` halfway would leave a model that no generation produced. Inside
[`defer_keyboard_interrupt`][eggroll_trainer.trainers.interrupts.defer_keyboard_interrupt] a SIGINT is recorded instead
of raised, and handed to the previous handler (by default: raise ``KeyboardInterrupt``; with ``SIG_DFL``: the
signal is raised again, so the process ends as it would have) when the block exits,
so [`ESTrainer.train`][eggroll_trainer.ESTrainer.train] stops on the last completed generation.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def defer_keyboard_interrupt() -> Iterator[None]:
    """Hold SIGINT for the duration of the block, then deliver the first one received (if any) to the
    handler that was installed before.

    Only the main thread can install signal handlers: elsewhere (and where signals are unavailable) the
    block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    except ValueError:  # signals unavailable here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if received:
            _deliver(previous, received[0])


def _deliver(previous: Any, args: tuple[Any, ...]) -> None:
    """Hand a held SIGINT to the handler it was meant for: a Python callable is called; the default action
    (``SIG_DFL``, or a handler not installed from Python) is taken by raising the signal again, now that the
    default is back in place; ``SIG_IGN`` drops it, as it would have."""
    if callable(previous):
        previous(*args)
    elif previous is not signal.SIG_IGN:
        signal.raise_signal(signal.SIGINT)
