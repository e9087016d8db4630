"""A process-wide "please save and stop" flag that long-running stages poll.

Slurm warns a job before its time limit (and on preemption) with SIGUSR2; `scontrol requeue`/`scancel` send
SIGTERM a few seconds (KillWait) before SIGKILL. The job wrapper (`jobs.stages`) turns those signals into this
flag instead of stopping Python mid-step; the trainer checks it at step boundaries::

    from infra import signals
    for step in ...:
        ...train one step...
        if signals.preemption_requested():
            save_checkpoint(step)
            return output_dir            # the wrapper then requeues the job; the restart resumes from disk

Only the standard library is imported: cheap to import from any stage.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

_event = threading.Event()
_lock = threading.Lock()
_reason: str | None = None
_requested_at: float | None = None


def request_preemption(reason: str = "requested") -> None:
    """Raise the flag (idempotent: the first reason is kept)."""
    global _reason, _requested_at
    with _lock:
        if not _event.is_set():
            _reason, _requested_at = reason, time.time()
            _event.set()


def preemption_requested() -> bool:
    return _event.is_set()


def preemption_reason() -> str | None:
    return _reason


def wait_for_preemption(timeout: float | None = None) -> bool:
    """Block until the flag is raised (or `timeout` seconds pass); True if raised."""
    return _event.wait(timeout)


def clear() -> None:
    global _reason, _requested_at
    with _lock:
        _event.clear()
        _reason, _requested_at = None, None


# What signal.getsignal returns: a callable, SIG_DFL/SIG_IGN (ints), or None for a handler not installed from Python.
Handler = Callable[[int, FrameType | None], Any] | int | None


def flag_on_signals(signums: Iterable[int] = (signal.SIGUSR2, signal.SIGTERM)) -> dict[int, Handler]:
    """Install handlers that only raise the flag; returns the previous handlers (for `restore_handlers`).

    Must be called from the main thread (a Python rule for signal handlers)."""
    previous: dict[int, Handler] = {}
    for signum in signums:
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, lambda num, _frame: request_preemption(signal.Signals(num).name))
    return previous


def restore_handlers(previous: dict[int, Handler]) -> None:
    """Put back the handlers `flag_on_signals` replaced. One that was not installed from Python (getsignal gave
    None) cannot be put back, and signal.signal refuses None: the flag handler stays on that signal."""
    for signum, handler in previous.items():
        if handler is not None:
            signal.signal(signum, handler)


# --- helper processes --------------------------------------------------------------------------------------------
# Slurm delivers the time-limit warning (`--signal=USR2@N`) to *every* process of the job step, not only to the
# job's Python: Ray's daemons and actors (policy workers, vLLM engines) would die of SIGUSR2's default action
# before the trainer could save. Processes started with SIGUSR2 ignored pass that on to their children (an
# ignored disposition survives fork and exec), so Ray started this way lets only the driver hear the warning.


def ignore_preemption_signal() -> None:
    """`preexec_fn` for helper processes (e.g. `ray start`): ignore SIGUSR2 in them and their children."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class preemption_signal_ignored:
    """Context manager: SIGUSR2 ignored while helper processes are spawned (e.g. `ray.init` of a local Ray),
    then the previous handler back. A no-op outside the main thread (only it may set handlers)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGUSR2, self.previous)
        return False


class keep_sigterm_handler:
    """Context manager: the SIGTERM handler in place before it is put back after it, if it was one of Python's.

    `ray.init` installs a SIGTERM handler that exits the process at once; inside a checkpointable job the job's own
    handler (raise the flag: save, then stop) must stay. Where none was installed from Python (SIG_DFL), Ray's stays.
    A no-op outside the main thread."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGTERM)
        return self

    def __exit__(self, *exc):
        if callable(self.previous):
            signal.signal(signal.SIGTERM, self.previous)
        return False
