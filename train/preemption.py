"""Stopping a run cleanly on preemption: SIGTERM, SIGINT, a signal of the user's choice or a wall-clock limit.

The handler only records the request; the training loop asks `should_stop(step)` after each step (its logging,
checkpoint and evaluation done), saves a checkpoint at that step, flushes its metrics and exits with EXIT_PREEMPTED,
so rerunning the same command resumes exactly there. A second SIGINT (Ctrl-C twice) aborts at once with
EXIT_ABORTED: orbax and the PyTorch trainer write checkpoints under a temporary name renamed when complete, so a save
cut short never replaces the previous checkpoint.

Several processes (`--distributed`/`--coordinator`) must stop at the same step whichever got the signal: JAX's
preemption service does that (`jax.experimental.multihost_utils.reached_preemption_sync_point`, enabled by
`jax.distributed.initialize`): a SIGTERM to any process reaches every process through the coordination service, and
all agree on the next step to save at. SIGINT, a custom signal and the time limit are turned into a SIGTERM to the
process itself, so they take the same path.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from train.storage import StorageError

EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: stopped on purpose, rerun the same command to resume
EXIT_ABORTED = 130  # a second SIGINT during the final save: the previous checkpoint is kept
EXIT_STORAGE = 74  # sysexits' EX_IOERR: a checkpoint or export could not be written
SLURM_END = "SLURM_JOB_END_TIME"  # Unix time at which SLURM ends the job (SLURM 23.02 and later set it)
MIN_MARGIN_S = 5.0
# Before a run's first checkpoint write is timed, its time is estimated from the state's size: a fixed cost (orbax's
# or torch.save's start, the rename) plus the bytes at a rate slow disks and network filesystems still reach.
SAVE_FIXED_S = 2.0
SAVE_BYTES_PER_S = 200e6


class Preempted(Exception):
    """Raised by the training loop after the preemption checkpoint is written."""

    def __init__(self, step: int, epoch: int, reason: str, seconds: float) -> None:
        self.step, self.epoch, self.reason, self.seconds = step, epoch, reason, seconds
        super().__init__(f"preempted at step {step} (epoch {epoch}): rerun the same command to resume ({reason}; "
                         f"checkpoint written {seconds:.1f} s after it)")


def parse_duration(text: str) -> float:
    """'90m', '23h30m', '3600', '1h5m30s', '45s' -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ValueError(f"--time-limit {text!r}: expected a duration like 3600, 45s, 90m or 23h30m")
    hours, minutes, seconds = (float(p) if p else 0.0 for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def signal_number(name: str) -> int:
    """'SIGUSR1' or 'USR1' or '10' -> the signal's number."""
    text = name.upper()
    try:
        return int(text) if text.isdigit() else int(getattr(signal, text if text.startswith("SIG") else "SIG" + text))
    except (AttributeError, ValueError):
        raise ValueError(f"--preemption-signal {name!r}: not a signal name (e.g. SIGUSR1, SIGUSR2, SIGHUP)") from None


class StopRequest:
    """Watches for a reason to stop: a signal, or the wall-clock limit (--time-limit, or SLURM's job end). The
    margin before the limit is measured: twice the longest checkpoint save and step interval seen so far (at least
    MIN_MARGIN_S; before the first save, an estimate from the size of what a checkpoint writes)."""

    def __init__(self, extra_signal: int | None = None, time_limit_s: float | None = None,
                 distributed: bool = False, state_bytes: int = 0, say: Callable[[str], None] = print,
                 started: float | None = None):
        """`state_bytes`: what a checkpoint writes; `started`: time.monotonic() when the run started (the time limit
        counts from there; default now)."""
        self.distributed, self.say = distributed, say
        self.reason: str | None = None
        self.requested_at = 0.0
        self.started = time.monotonic() if started is None else started
        self.deadline = None
        limits = [time_limit_s] if time_limit_s is not None else []
        if os.environ.get(SLURM_END, "").isdigit():
            limits.append(float(os.environ[SLURM_END]) - time.time() + (self.started - time.monotonic()))
        if limits:
            self.deadline = self.started + min(limits)
        self.save_s, self.step_s = 0.0, 0.0
        self.estimated_save_s = SAVE_FIXED_S + state_bytes / SAVE_BYTES_PER_S
        self.last_step: float | None = None  # the first step's interval holds its compilation: not a step's time
        signals = [signal.SIGTERM, signal.SIGINT] + ([extra_signal] if extra_signal is not None else [])
        self.previous = {}
        for number in dict.fromkeys(signals):
            if distributed and number == signal.SIGTERM:
                continue  # JAX's preemption service listens for it
            self.previous[number] = signal.signal(number, self._handle)
        ACTIVE.append(self)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.reason is not None:
            if number == signal.SIGINT:
                print(f"second {name}: aborting now; the last complete checkpoint is kept", file=sys.stderr,
                      flush=True)
                os._exit(EXIT_ABORTED)
            return
        self.request(name)

    def request(self, reason: str) -> None:
        self.reason, self.requested_at = reason, time.monotonic()
        self.say(f"{reason}: finishing the step in flight, then saving a checkpoint and stopping")
        if self.distributed:  # every process must stop at the same step: through JAX's preemption service
            os.kill(os.getpid(), signal.SIGTERM)

    def margin(self) -> float:
        save = self.save_s or self.estimated_save_s
        return max(MIN_MARGIN_S, 2 * save + 2 * self.step_s)

    def should_stop(self, step: int) -> bool:
        """Called after every step (in every process: with several processes, at every step, as JAX's sync point
        requires)."""
        now = time.monotonic()
        if self.last_step is not None:
            self.step_s = max(self.step_s, now - self.last_step)
        self.last_step = now
        if self.reason is None and self.deadline is not None and now >= self.deadline - self.margin():
            self.request(f"time limit of {self.deadline - self.started:.0f} s, stopping {self.margin():.0f} s early "
                         f"at {now - self.started:.0f} s")
        if self.distributed:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                if self.reason is None:
                    self.reason, self.requested_at = "SIGTERM to one of the processes", now
                return True
            return False
        return self.reason is not None

    def stopped(self, step: int, epoch: int) -> Preempted:
        """The exception to raise once the preemption checkpoint is written."""
        return Preempted(step, epoch, self.reason or "", time.monotonic() - self.requested_at)

    def timed_save(self, save: Callable[[], None]) -> None:
        """Run a checkpoint save, measuring it for the margin."""
        start = time.monotonic()
        try:
            save()
        finally:
            self.save_s = max(self.save_s, time.monotonic() - start)

    def close(self) -> None:
        """Give the signals back their previous handlers (an in-process run must not keep them)."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
        if self in ACTIVE:
            ACTIVE.remove(self)

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ACTIVE: list[StopRequest] = []


def close_all() -> None:
    """Restore every handler a run installed (the trainers' main() calls it however the run ended)."""
    for request in list(ACTIVE):
        request.close()


def exit_code(run: Callable[[], Any], usage_errors: tuple[type[BaseException], ...],
              speaks: Callable[[], bool] = lambda: True) -> tuple[int, Any]:
    """(exit code, result) of a trainer's `run()`: 0 and its result, or a stop mapped to its documented code with its
    message printed: a usage error (bad flags, data, configuration) 2, Preempted EXIT_PREEMPTED (printed where
    `speaks()`, process 0 of several), StorageError EXIT_STORAGE. Signal handlers are given back however it ends."""
    try:
        return 0, run()
    except usage_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    except Preempted as e:
        if speaks():
            print(str(e), flush=True)
        return EXIT_PREEMPTED, None
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STORAGE, None
    finally:
        close_all()
