"""A process-wide "please save and stop" flag that long-running stages poll.

Slurm warns a job before its time limit (and on preemption) with SIGUSR2; `scontrol requeue`/`scancel` send
SIGTERM a few seconds (KillWait) before SIGKILL. The job wrapper (`jobs.stages`) turns those signals into this
flag instead of stopping Python mid-step; the trainer checks it at step boundaries::

    from pipeline import signals
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


def flag_on_signals(signums=(signal.SIGUSR2, signal.SIGTERM)) -> dict[int, object]:
    """Install handlers that only raise the flag; returns the previous handlers (for `restore_handlers`).

    Must be called from the main thread (a Python rule for signal handlers)."""
    previous = {}
    for signum in signums:
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, lambda num, _frame: request_preemption(signal.Signals(num).name))
    return previous


def restore_handlers(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
