"""Starting Ray again when a start does not come up: the one retry policy of the two places that start Ray.

Ray waits a fixed 30 s for a new raylet to register with its GCS. On an overloaded host (the local Slurm cluster
shares its cores with every job and test) that wait times out: `ray.init` of a private instance raises "The
current node timed out during startup" (trainer.distributed.init_ray) and `ray start` of a job's head or worker
node exits (jobs.ray_cluster). A new attempt a moment later usually comes up, so both retry, after killing what
the failed attempt had started (its daemons hold ports and CPU). What counts as a failed start, how to clean it
up and how long to pause differ, and the callers say so; the number of attempts and the loop are here.
Only the standard library is imported (jobs.ray_cluster is imported on login nodes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# attempts in all, for both paths; SLURM_GRPO_RAY_START_ATTEMPTS overrides it (read at each start)
DEFAULT_ATTEMPTS = 3
STARTUP_TIMEOUT_TEXT = "timed out during startup"  # Ray's message when its raylet did not register in time


class RayStartError(RuntimeError):
    """Ray did not come up, in this attempt or, raised by `start_with_retries`, in all of them."""


def start_attempts() -> int:
    return max(1, int(os.environ.get("SLURM_GRPO_RAY_START_ATTEMPTS", DEFAULT_ATTEMPTS)))


def is_startup_timeout(err: BaseException) -> bool:
    """Ray's raylet-registration timeout (Ray raises a bare Exception for it), the failure worth retrying."""
    return STARTUP_TIMEOUT_TEXT in str(err)


def start_with_retries(
    attempt: Callable[[], T],
    what: str,
    *,
    retryable: Callable[[Exception], bool],
    clean_up: Callable[[], None] = lambda: None,
    pause_s: float = 0.0,
    log: Callable[[str], None] = print,
    attempts: int | None = None,
) -> T:
    """Return `attempt()`'s result; when it raises an error `retryable` accepts, `clean_up()` what it left and
    try again, up to `attempts` (default `start_attempts()`) in all. Other errors propagate at once; after the
    last attempt a RayStartError says how many were made, with the last error as its cause."""
    attempts = start_attempts() if attempts is None else max(1, attempts)
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except Exception as err:
            if not retryable(err):
                raise
            clean_up()
            if number == attempts:
                raise RayStartError(f"{what} did not start in {attempts} attempts: {err}") from err
            log(f"{what} did not come up (attempt {number}/{attempts}: {err}); retrying")
            time.sleep(pause_s)
    raise AssertionError("unreachable")
