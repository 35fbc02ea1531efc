"""Choosing how many threads a repeated native call uses, by timing it.

A decoding step of the native kernels meets at hundreds of thread barriers.
On an idle machine two threads decode a small model about 1.6x faster than
one; when another process keeps a core busy, every barrier waits for the
preempted thread and two threads become several times *slower* than one
(SmolLM2 Q4_1 on two cores: 22 against 67 tokens/s). The results do not
depend on the thread count (each output is computed by one thread), so the
count can follow whatever is faster right now.

:class:`ThreadChoice` keeps a moving average of the step time for each count
and uses the faster one, probing the other now and then: after every probe
that loses, it waits twice as long before the next one (up to
``MAX_INTERVAL`` steps), and a probe that wins switches at once, as does a
current count whose average grows well past the other's.
``BESTIARY_ADAPTIVE_THREADS=0`` (read when a model's native plans are built) always uses
``torch.get_num_threads()``.
"""

from __future__ import annotations

import os

__all__ = ["ThreadChoice", "ENV_VAR"]

ENV_VAR = "BESTIARY_ADAPTIVE_THREADS"
FIRST_INTERVAL = 8
MAX_INTERVAL = 128
_SMOOTHING = 0.3  # weight of the newest step in a count's moving average
_SLOWER = 1.5  # the current count's average this much above the other's switches without waiting for a probe


class ThreadChoice:
    """Picks the thread count (``most`` or 1) for each call of a repeated native step."""

    def __init__(self) -> None:
        self.adaptive = _adaptive()  # read once: threads() runs for every native call
        self.most = 0  # the thread count allowed when the averages were taken (0: not choosing)
        self.average: dict[int, float] = {}
        self.current = 0
        self.interval = FIRST_INTERVAL
        self.since_probe = 0

    def threads(self, most: int) -> int:
        """The thread count for the next step, given the ``most`` threads allowed."""
        if most <= 1 or not self.adaptive:
            self.most = 0
            return max(most, 1)
        if most != self.most:  # first use, or torch.set_num_threads changed: measure again
            self.most, self.average, self.current, self.interval, self.since_probe = most, {}, most, FIRST_INTERVAL, 0
        other = 1 if self.current == most else most
        if self.current in self.average and (other not in self.average or self.since_probe >= self.interval):
            return other
        return self.current

    def record(self, threads: int, seconds: float) -> None:
        """Account one step that ran with ``threads`` threads in ``seconds``."""
        if not self.most:  # no choice was made (one thread allowed, or adaptivity off): nothing to learn
            return
        other = next((count for count in self.average if count != self.current), None)
        if threads != self.current:  # a probe: a fresh measurement, the old average is stale
            self.average[threads] = seconds
            self.since_probe = 0
            if self.average[threads] < self.average.get(self.current, float("inf")):
                self.current, self.interval = threads, FIRST_INTERVAL
            else:
                self.interval = min(2 * self.interval, MAX_INTERVAL)
            return
        previous = self.average.get(threads)
        self.average[threads] = seconds if previous is None else previous + _SMOOTHING * (seconds - previous)
        self.since_probe += 1
        if other is not None and self.average[threads] > _SLOWER * self.average[other]:
            # the machine got busier (or quieter) since the other count was timed
            self.current, self.interval, self.since_probe = other, FIRST_INTERVAL, 0


def _adaptive() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")
