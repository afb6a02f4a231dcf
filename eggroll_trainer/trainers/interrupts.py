"""Ctrl-C between generations, never inside an update.

An update writes every parameter, the update rule's moments, the generation counter and the best member; a
``KeyboardInterrupt`` halfway would leave a model that no generation produced. Inside
[`defer_keyboard_interrupt`][eggroll_trainer.trainers.interrupts.defer_keyboard_interrupt] a SIGINT is recorded instead
of raised, and handed to the previous handler (by default: raise ``KeyboardInterrupt``) when the block exits,
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
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])
