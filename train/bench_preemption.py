"""`python -m train.bench_preemption`: the time from SIGTERM to a trainer's exit (docs/training.md, Preemptible
machines).

Starts the trainer (`python -m train.flax` or `train.torch`) on the embedded digits `--runs` times, sends SIGTERM
once metrics.jsonl shows `--after-step` (or, with `--during-save`, as soon as a periodic checkpoint write has begun:
train.flax only) and prints the seconds until the process exited, with the trainer's own "checkpoint written N s
after it". Extra arguments go to the trainer (e.g. `--preset tiny`); the default model is the default run's,
ResNet-34.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r34.cli_help import DefaultsHelpFormatter
from r34.machine import cpu_description

WRITTEN = "checkpoint written "


def logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}") and '"train"' in line), default=0)


def save_started(workdir: Path) -> bool:
    checkpoints = workdir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.glob("*.orbax-checkpoint-tmp*"))


def one_run(module: str, workdir: Path, data_dir: Path, after_step: int, during_save: bool, extra: list[str],
            timeout_s: float) -> tuple[float, str]:
    """(seconds from SIGTERM to exit, the trainer's exit line)."""
    every = "2" if during_save else "1000"
    argv = [sys.executable, "-m", module, "--steps", "1000", "--checkpoint-every", every, "--log-every", "1",
            "--no-progress", "--data-dir", str(data_dir), "--workdir", str(workdir), *extra]
    log = workdir.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    ready = (lambda: save_started(workdir)) if during_save else (lambda: logged_step(workdir) >= after_step)
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{module} ended or stalled before the signal could be sent; its output: {log}")
        time.sleep(0.002)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    seconds = time.monotonic() - sent
    lines = [line for line in log.read_text().splitlines() if line.startswith("preempted at step")]
    if proc.returncode != 75 or not lines:
        raise RuntimeError(f"{module} exited {proc.returncode}, not 75 with its preemption line; its output: {log}")
    return seconds, lines[-1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.bench_preemption", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--trainer", choices=("flax", "torch"), default="flax", help="train.flax or train.torch")
    p.add_argument("--runs", type=int, default=3, help="runs, one signal each")
    p.add_argument("--after-step", type=int, default=5, help="send SIGTERM once this step is logged")
    p.add_argument("--during-save", action="store_true",
                   help="send it as soon as a periodic checkpoint write has begun (train.flax: orbax's temporary "
                        "directory appears)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for a run to reach the signal")
    return p


def main(argv: list[str] | None = None) -> int:
    """Time --runs preemptions of the trainer; extra arguments are the trainer's."""
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    if args.during_save and args.trainer == "torch":
        p.error("--during-save watches orbax's checkpoint writes: train.flax only")
    module = f"train.{args.trainer}"
    print(f"SIGTERM to exit, {module} {' '.join(extra) or '(the default run)'}, on {cpu_description()}")
    with tempfile.TemporaryDirectory(prefix="r34-preemption-") as tmp:
        for run in range(args.runs):
            seconds, line = one_run(module, Path(tmp) / f"run{run}", Path(tmp) / "tfds", args.after_step,
                                    args.during_save, extra, args.timeout)
            written = line[line.index(WRITTEN) + len(WRITTEN):].split(" s")[0] if WRITTEN in line else "?"
            print(f"run {run + 1}: {seconds:.2f} s from SIGTERM to exit (checkpoint written {written} s after it): "
                  f"{line.split(':')[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
