"""When `bpbench up` restarts a child that died, and when it gives up.

A child that ran at least `stable_after_s` before it exited is restarted at once and its count starts
again; one that exits sooner is a fast failure, restarted after a backoff that doubles each time
(`first_backoff_s`, 2x, 4x, ... at most `max_backoff_s`), and after `max_fast_failures` fast failures in a
row the stack gives up: something is wrong that a restart will not mend (a damaged file, a bad setting).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RestartPolicy:
    """The restart decision for one child; `record_exit` says how long to wait, or None to give up."""

    stable_after_s: float = 10.0
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_fast_failures: int = 5
    fast_failures: int = 0
    restarts: int = 0

    def record_exit(self, uptime_s: float) -> float | None:
        """The child exited after `uptime_s`: the delay before its restart, or None to give up."""
        if uptime_s >= self.stable_after_s:
            self.fast_failures = 0
            self.restarts += 1
            return 0.0
        self.fast_failures += 1
        if self.fast_failures >= self.max_fast_failures:
            return None
        self.restarts += 1
        return min(self.first_backoff_s * 2 ** (self.fast_failures - 1), self.max_backoff_s)
