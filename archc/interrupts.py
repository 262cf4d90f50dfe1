"""Ctrl-C and SIGTERM held back while a temporary output is created and its cleanup is armed.

Every command that writes builds its output in a temporary file or directory and removes it on any
exception, KeyboardInterrupt and SIGTERM (archc.cli.Terminated) included. That leaves one window: a
signal landing after the temporary path exists but before the code that removes it is in place (inside
mkdtemp, before its result is bound, or while the owner file is written) leaves it behind. Signals
arriving inside `deferred_interrupts()` are recorded instead and raised when the block ends, so the
caller's cleanup sees them. pthread_sigmask would not do: the kernel hands a process signal to any thread
that has it unblocked (torch's and onnxruntime's pools), and CPython then runs the Python handler in the
main thread at its next check, inside the window.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM recorded, then deliver the first one to the handler that was
    in place (raising KeyboardInterrupt or Terminated at the block's end). Outside the main thread Python
    cannot set handlers, so the block runs unprotected (only the main thread receives them anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum, frame):  # noqa: ARG001
        got.append(signum)

    previous = {s: signal.signal(s, hold) for s in HELD}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if got:
            _deliver(got[0], previous[got[0]])


def _deliver(signum: int, handler) -> None:
    if callable(handler):  # Python's default_int_handler (KeyboardInterrupt), archc.cli's SIGTERM handler
        handler(signum, None)
    elif handler == signal.SIG_IGN:
        return
    else:  # SIG_DFL (or None: a handler not set from Python): let the default action happen now
        signal.raise_signal(signum)
