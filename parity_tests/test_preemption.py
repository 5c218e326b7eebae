"""Preemption (docs/training.md#preemptible-machines): real signals sent to trainer processes mid-epoch, the same
command rerun each time, and the result bit-identical to an uninterrupted run's: exported weights (the model's and
the EMA model's), every learning-rate and loss record of metrics.jsonl and every evaluation. The recipe is
torchvision's V2 shortened, so the checkpoint carries what the random augmentations, MixUp/CutMix and the EMA need.
Also: two processes with the signal sent to one; a signal during a checkpoint write and Ctrl-C twice; the time limit;
a full disk (a file-size limit in a child process) and a damaged record of a prepared data set."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parity_tests import recipe_runs
from parity_tests.helpers import torch_model
from parity_tests.recipe_runs import STEPS_PER_EPOCH, TOTAL_STEPS
from parity_tests.test_trainer import command, free_port, subprocess_env
from r34 import get_preset
from train import loop_flax, loop_torch, preemption
from train.data import pipeline
from train.metrics import read_metrics

# Where the signals go in torchvision-v2's shortened run (recipe_runs.py: TrivialAugmentWide, RandomErasing,
# MixUp/CutMix, repeated augmentation, EMA every 4 iterations, label smoothing, cosine after a warmup epoch; 3 epochs
# of 8 steps): steps drawn once (seeded, so a failure reproduces), none on an epoch's last step.
SIGNAL_STEPS = sorted(random.Random(27).sample([s for s in range(2, TOTAL_STEPS - 3) if s % STEPS_PER_EPOCH], 3))
WAIT_S = 300  # for a subprocess to reach a step (start, compilation, data preparation on a slow 2-core machine)
STOPPED = re.compile(r"preempted at step (\d+) \(epoch (\d+)\): rerun the same command to resume \((.+); checkpoint "
                     r"written ([\d.]+) s after it\)")


def v2_argv(recipe_images: tuple[Path, Path], workdir: Path, *extra: str) -> list[str]:
    """The uninterrupted run is conftest's recipe_runs("torchvision-v2", ...); checkpoints every 6 steps here, so a
    signal also meets a periodic save (the checkpoint interval is not part of a run's identity)."""
    return recipe_runs.argv("torchvision-v2", *recipe_images, workdir, "--checkpoint-every", "6", *extra)


def logged_step(workdir: Path) -> int:
    """The last train step metrics.jsonl holds (0 before any)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
             if line.endswith("}") and '"kind": "train"' in line]
    return max(steps, default=0)


def launch(module: str, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as out:  # a file, not a pipe: nothing blocks however much the run prints
        return subprocess.Popen(command(module, argv), env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_until(proc: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}: nothing was tested"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.002)


def preempt(module: str, argv: list[str], workdir: Path, after_step: int, env: dict[str, str],
            sig: signal.Signals = signal.SIGTERM, steps_per_epoch: int = STEPS_PER_EPOCH) -> tuple[int, float]:
    """Start the run, send `sig` once metrics.jsonl shows `after_step`; (the step it stopped at, seconds from the
    signal to the process's exit)."""
    log = workdir.parent / f"{workdir.name}-{after_step}.log"
    proc = launch(module, argv, log, env)
    wait_until(proc, lambda: logged_step(workdir) >= after_step, f"step {after_step}")
    sent = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=WAIT_S)
    seconds = time.monotonic() - sent
    out = log.read_text()
    assert proc.returncode == preemption.EXIT_PREEMPTED, out[-3000:]
    stopped = STOPPED.search(out)
    assert stopped, out[-3000:]
    step = int(stopped[1])
    assert int(stopped[2]) == step // steps_per_epoch and stopped[3].startswith(sig.name)
    assert logged_step(workdir) == step  # the metrics of every step up to the checkpoint were written
    return step, seconds


def assert_same_run(one: Path, other: Path) -> None:
    """Bit-identical exports (model and EMA model) and metrics.jsonl records (learning rates, losses, evaluations)."""
    names = sorted(p.name for p in (one / "export").glob("*.pth"))
    assert names == sorted(p.name for p in (other / "export").glob("*.pth"))
    for name in names:
        a = torch.load(one / "export" / name, weights_only=True)
        b = torch.load(other / "export" / name, weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k}"
    records = [read_metrics(w / "metrics.jsonl") for w in (one, other)]
    assert [(r["step"], r["kind"]) for r in records[0]] == [(r["step"], r["kind"]) for r in records[1]]
    for a, b in zip(*records):
        for key in a.keys() - {"images_per_s", "input_wait"}:  # timings differ; every value of the run is equal
            assert a[key] == b[key], (a["step"], a["kind"], key, a[key], b[key])


def test_sigterm_mid_epoch_three_times_then_resume_is_bit_identical(recipe_runs, recipe_images: tuple[Path, Path],
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    workdir = tmp_path / "run"
    argv = v2_argv(recipe_images, workdir)
    env = subprocess_env(1, cpu_flags=False)  # as this process: XLA:CPU flags change the bits
    stops = []
    for target in SIGNAL_STEPS:
        step, seconds = preempt("train.flax", argv, workdir, max(target, stops[-1][0] + 1 if stops else 0), env)
        assert step < TOTAL_STEPS and (not stops or step > stops[-1][0])
        assert (workdir / "checkpoints" / str(step)).is_dir()
        assert not list((workdir / "checkpoints").glob("*tmp*"))
        stops.append((step, seconds))
    with capsys.disabled():
        print(f"\nSIGTERM after steps {SIGNAL_STEPS}: stopped at {[s for s, _ in stops]} (epochs "
              f"{[s // STEPS_PER_EPOCH for s, _ in stops]}), signal to exit {max(t for _, t in stops):.1f} s at most")
    assert loop_flax.main(argv) == 0  # the same command, to the end (in this process: the signals were the others')
    assert f"resumed from {workdir / 'checkpoints'} at step {stops[-1][0]}" in capsys.readouterr().out
    assert_same_run(recipe_runs("torchvision-v2", "flax"), workdir)
    assert (workdir / "export" / "model_ema.pth").is_file()


def test_torch_trainer_sigterm_mid_epoch_twice_then_resume_is_bit_identical(recipe_runs,
                                                                            recipe_images: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    """SIGTERM, then the signal of --preemption-signal (as SLURM's --signal sends it)."""
    workdir = tmp_path / "run"
    argv = v2_argv(recipe_images, workdir, "--preemption-signal", "SIGUSR1")
    stops = []
    for target, sig in zip(SIGNAL_STEPS[::2], (signal.SIGTERM, signal.SIGUSR1)):
        step, _ = preempt("train.torch", argv, workdir, max(target, stops[-1] + 1 if stops else 0),
                          subprocess_env(1), sig)
        assert step < TOTAL_STEPS and (not stops or step > stops[-1])
        stops.append(step)
    print(f"\ntrain.torch: SIGTERM after step {SIGNAL_STEPS[0]}, SIGUSR1 after {SIGNAL_STEPS[2]}: stopped at {stops}")
    assert loop_torch.main(argv) == 0
    assert_same_run(recipe_runs("torchvision-v2", "torch"), workdir)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(TFDS data directory for the embedded digits, starting weights of the tiny body for them)."""
    init = tmp_path_factory.mktemp("digits_init") / "tiny.pth"
    torch.save(torch_model(get_preset("tiny").replace(in_channels=1), seed=7).state_dict(), init)
    return tmp_path_factory.mktemp("digits_tfds"), init


def digits_argv(digits: tuple[Path, Path], workdir: Path, *extra: str) -> list[str]:
    data_dir, init = digits
    return ["--preset", "tiny", "--batch-size", "32", "--opt", "sgd_nesterov", "--lr", "0.05", "--warmup-steps", "2",
            "--log-every", "1", "--no-progress", "--data-dir", str(data_dir), "--init-from", str(init), "--workdir",
            str(workdir), *extra]


# Two JAX processes of 4 CPU devices each over localhost, as test_trainer's multi-process test, for 8 steps.
TWO_PROCESSES = ("--steps", "8", "--batch-size", "2", "--world-size", "8", "--checkpoint-every", "5")


def launch_two(digits: tuple[Path, Path], workdir: Path, tag: str) -> list[subprocess.Popen]:
    port = free_port()
    return [launch("train.flax", digits_argv(digits, workdir, *TWO_PROCESSES, "--coordinator", f"127.0.0.1:{port}",
                                             "--num-processes", "2", "--process-id", str(i)),
                   workdir.parent / f"{workdir.name}-{tag}-{i}.log", subprocess_env(4)) for i in range(2)]


def finish(procs: list[subprocess.Popen], workdir: Path, tag: str) -> list[str]:
    for p in procs:
        p.wait(timeout=WAIT_S)
    return [(workdir.parent / f"{workdir.name}-{tag}-{i}.log").read_text() for i in range(len(procs))]


def test_two_processes_stop_at_the_same_step_when_one_is_signalled(digits: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    """JAX's preemption service (jax.distributed.initialize starts it): the SIGTERM sent to process 1 alone reaches
    process 0 through the coordination service; both save the same step collectively and exit 75; rerun, the two
    processes finish bit-identically to an uninterrupted two-process run."""
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    procs = launch_two(digits, reference, "whole")
    outs = finish(procs, reference, "whole")
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    procs = launch_two(digits, workdir, "signalled")
    wait_until(procs[0], lambda: logged_step(workdir) >= 3, "step 3")
    procs[1].send_signal(signal.SIGTERM)
    outs = finish(procs, workdir, "signalled")
    assert [p.returncode for p in procs] == [preemption.EXIT_PREEMPTED] * 2, outs[0][-3000:] + outs[1][-3000:]
    stopped = STOPPED.search(outs[0])  # process 0 prints for both
    assert stopped and stopped[3].startswith("SIGTERM"), outs[0][-3000:]
    step = int(stopped[1])
    assert 3 <= step < 8 and logged_step(workdir) == step
    assert "preempted at step" not in outs[1]  # process 0 speaks for the run
    for out in outs:  # each process stopped through JAX's preemption service, at the step it agreed on
        assert f"Reached preemption sync point, step={step}" in out, out[-3000:]
    assert (workdir / "checkpoints" / str(step)).is_dir() and not list((workdir / "checkpoints").glob("*tmp*"))
    print(f"\ntwo processes, SIGTERM to process 1 after step 3: both stopped at step {step}")
    procs = launch_two(digits, workdir, "resumed")
    outs = finish(procs, workdir, "resumed")
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert f"at step {step}" in outs[0]
    assert_same_run(reference, workdir)


# ResNet-18 on the digits from random weights: a checkpoint of ~110 MB takes long enough to write (~0.5 s) that a
# signal lands inside.
BIG = ("--preset", "resnet18", "--steps", "6", "--checkpoint-every", "2", "--log-every", "1", "--no-progress")


def partial_saves(checkpoints: Path) -> list[Path]:
    return list(checkpoints.glob("*.orbax-checkpoint-tmp*")) if checkpoints.is_dir() else []


def complete_steps(checkpoints: Path) -> list[int]:
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())


def test_signal_during_a_checkpoint_write_and_ctrl_c_twice_keep_complete_checkpoints(
        digits: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """SIGTERM while orbax writes a ResNet-18 checkpoint in the background: that write completes (and the preemption
    checkpoint is written if the step moved on); Ctrl-C twice, the second while a checkpoint is being written: the
    process exits 130 at once, the save it cut short never counts, and the same command resumes from the last
    complete checkpoint to the end."""
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    argv = [*BIG, "--data-dir", str(digits[0]), "--workdir", str(workdir)]
    env = subprocess_env(1, cpu_flags=False)  # the flags of this process, which finishes the run
    proc = launch("train.flax", argv, tmp_path / "sigterm.log", env)
    wait_until(proc, lambda: partial_saves(checkpoints), "checkpoint write")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=WAIT_S)
    out = (tmp_path / "sigterm.log").read_text()
    assert proc.returncode == preemption.EXIT_PREEMPTED, out[-3000:]
    step = int(STOPPED.search(out)[1])
    assert not partial_saves(checkpoints) and step in complete_steps(checkpoints)
    assert complete_steps(checkpoints)[0] == 2  # the write the signal met completed

    proc = launch("train.flax", argv, tmp_path / "ctrl-c.log", env)
    wait_until(proc, lambda: logged_step(workdir) > step, f"a step after {step}")
    proc.send_signal(signal.SIGINT)
    wait_until(proc, lambda: partial_saves(checkpoints), "the preemption save")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=WAIT_S)
    out = (tmp_path / "ctrl-c.log").read_text()
    assert proc.returncode == preemption.EXIT_ABORTED, out[-3000:]
    assert "second SIGINT: aborting now; the last complete checkpoint is kept" in out
    kept = complete_steps(checkpoints)[-1]
    with capsys.disabled():
        print(f"\nSIGTERM during the step-2 write: stopped at step {step}; Ctrl-C twice: exit 130, resumes from "
              f"{kept}")
    assert loop_flax.main(argv) == 0
    assert f"resumed from {checkpoints} at step {kept}" in capsys.readouterr().out
    assert not partial_saves(checkpoints) and complete_steps(checkpoints)[-1] == 6


def test_time_limit_stops_a_measured_margin_before_the_limit(digits: tuple[Path, Path], tmp_path: Path) -> None:
    """--time-limit 15s on a run that would take longer: it stops the measured margin early, as on a SIGTERM
    (SLURM's job end, later here, is read too and loses to the earlier limit)."""
    workdir = tmp_path / "run"
    argv = digits_argv(digits, workdir, "--steps", "100000", "--time-limit", "15s")
    env = {**subprocess_env(1), preemption.SLURM_END: str(int(time.time()) + 3600)}
    done = subprocess.run(command("train.flax", argv), env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == preemption.EXIT_PREEMPTED, done.stderr[-3000:]
    stopped = STOPPED.search(done.stdout)
    limit = re.fullmatch(r"time limit of (\d+) s, stopping (\d+) s early at (\d+) s", stopped[3])
    assert limit, stopped[3]
    total, margin, at = (int(g) for g in limit.groups())
    print(f"\n--time-limit 15s: stopped at step {stopped[1]} at {at} s (margin {margin} s), checkpoint written "
          f"{stopped[4]} s later")
    assert total == 15 and at + margin >= total - 1 and at + float(stopped[4]) <= total
    assert int(stopped[1]) in complete_steps(workdir / "checkpoints")


def test_slurm_job_end_time_sets_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(preemption.SLURM_END, str(int(time.time()) + 100))
    with preemption.StopRequest(time_limit_s=1000, started=time.monotonic()) as stop:
        assert 98 <= stop.deadline - stop.started <= 100
    with preemption.StopRequest(time_limit_s=50) as stop:
        assert stop.deadline - stop.started == 50
    monkeypatch.delenv(preemption.SLURM_END)
    with preemption.StopRequest() as stop:
        assert stop.deadline is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


@pytest.mark.parametrize("text, seconds", [("3600", 3600), ("45s", 45), ("90m", 5400), ("23h30m", 84600),
                                           ("1h5m30s", 3930), ("0.5h", 1800)])
def test_durations(text: str, seconds: float) -> None:
    assert preemption.parse_duration(text) == seconds


@pytest.mark.parametrize("flags, message", [
    (["--time-limit", "soon"], "--time-limit 'soon': expected a duration like 3600, 45s, 90m or 23h30m"),
    (["--time-limit", ""], "--time-limit '': expected a duration"),
    (["--preemption-signal", "SIGFOO"], "--preemption-signal 'SIGFOO': not a signal name"),
])
def test_bad_preemption_flags_are_refused(flags: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    for main in (loop_flax.main, loop_torch.main):
        assert main(["--data-dir", str(tmp_path / "tfds"), "--workdir", str(tmp_path / "w"), *flags]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "w").exists()


# A child process whose files may not grow past a size (RLIMIT_FSIZE), as a full disk: a write past it fails with
# EFBIG (SIGXFSZ ignored, as it is by default for a process that handles it, else the kernel kills the process).
FSIZE_CHILD = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
FILE_LIMIT = 100_000  # bytes: above every file a tiny-body run writes besides its checkpoints and exports (measured
# 1.3 KB metrics, 20 KB TensorBoard events); below every checkpoint's largest file (120-630 KB) and an export (400 KB)
SHORT_DIGITS = ("--steps", "12", "--checkpoint-every", "4")
DIGITS_STEPS_PER_EPOCH = 1437 // 32  # the digits' train split in batches of 32


def run_limited(module: str, argv: list[str], cpu_flags: bool) -> subprocess.CompletedProcess:
    # JAX's compilation cache read but not written (only compilations longer than the threshold are): its entries
    # would be cut short too (JAX reads such an entry with a warning and compiles again; other tests would pay).
    env = {**subprocess_env(1, cpu_flags), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}
    return subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(FILE_LIMIT), module, *argv], env=env,
                          capture_output=True, text=True, timeout=WAIT_S)


@pytest.fixture(scope="module")
def digits_reference(tmp_path_factory: pytest.TempPathFactory, digits: tuple[Path, Path]) -> Path:
    workdir = tmp_path_factory.mktemp("digits_reference") / "run"
    assert loop_flax.main(digits_argv(digits, workdir, *SHORT_DIGITS)) == 0
    return workdir


def test_sigterm_saves_exits_75_and_the_same_command_resumes(digits: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """The preemption path at its smallest, the quick tier's check: `python -m train.torch` (the stop machinery is
    the trainers' shared train/preemption.py, and torch compiles nothing: 10 s against train.flax's 27 s here; the
    Flax trainer's proofs, bit-identity included, are the tests above) on the digits, SIGTERM after step 3: exit 75
    and its message, metrics up to the step it stopped at; the same command resumes there and finishes."""
    workdir = tmp_path / "run"
    argv = digits_argv(digits, workdir, *SHORT_DIGITS)
    step, _ = preempt("train.torch", argv, workdir, 3, subprocess_env(1), steps_per_epoch=DIGITS_STEPS_PER_EPOCH)
    assert step < 12 and (workdir / "checkpoint.pth").is_file()
    assert loop_torch.main(argv) == 0
    assert f"resumed from {workdir / 'checkpoint.pth'} at step {step}" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(workdir / "metrics.jsonl") if r["kind"] == "train"] == list(range(1, 13))
    assert (workdir / "export" / "model.pth").is_file()


def test_full_disk_names_the_path_and_size_and_keeps_the_previous_checkpoint(digits_reference: Path,
                                                                           digits: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    """A run resumed from step 4 cannot write its step-8 checkpoint: exit 74, the message names the checkpoint
    directory, the cause and the size a checkpoint takes; step 4 is still the complete checkpoint, and the same
    command with space again finishes the run bit-identically to one that never failed. Then an export that cannot
    be written: exit 74, nothing half-written left in export/."""
    workdir = tmp_path / "run"
    shutil.copytree(digits_reference, workdir)
    shutil.rmtree(workdir / "export")
    for step in ("8", "12"):
        shutil.rmtree(workdir / "checkpoints" / step)
    argv = digits_argv(digits, workdir, *SHORT_DIGITS)
    done = run_limited("train.flax", argv, cpu_flags=False)
    assert done.returncode == preemption.EXIT_STORAGE, done.stderr[-3000:]
    # orbax's writer threads report their failures too (tracebacks, some of them while the process ends)
    message = next(line for line in done.stderr.splitlines() if line.startswith("error: "))
    print(f"\n{message}")
    checkpoints = re.escape(str(workdir / "checkpoints"))
    assert re.fullmatch(rf"error: cannot write the checkpoint in {checkpoints}: file too large \(a size limit\) "
                        rf"\(File too large: {checkpoints}/8\.orbax-checkpoint-tmp/.+\); a checkpoint takes about "
                        r"[\d.]+ MB there: free that much \(or lower --keep\) and rerun the same command; the previous "
                        r"checkpoint is intact", message), message
    assert complete_steps(workdir / "checkpoints") == [4]
    assert loop_flax.main(argv) == 0  # space again: the same command
    assert_same_run(digits_reference, workdir)

    shutil.rmtree(workdir / "export")  # the finished run exports again when rerun
    done = run_limited("train.flax", argv, cpu_flags=False)
    assert done.returncode == preemption.EXIT_STORAGE, done.stderr[-3000:]
    assert f"error: cannot write the export in {workdir / 'export'}: file too large" in done.stderr
    assert [p.name for p in (workdir / "export").iterdir()] == []


def test_torch_trainer_full_disk_keeps_the_previous_checkpoint(digits: tuple[Path, Path], tmp_path: Path) -> None:
    """train.torch: preempted (SIGTERM) after step 2, then resumed where checkpoint.pth cannot be written again:
    exit 74 naming the file, checkpoint.pth as it was (no temporary file left); with space, the same command ends
    bit-identically to an uninterrupted run."""
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    assert loop_torch.main(digits_argv(digits, reference, *SHORT_DIGITS)) == 0
    argv = digits_argv(digits, workdir, *SHORT_DIGITS)
    step, _ = preempt("train.torch", argv, workdir, 2, subprocess_env(1))
    assert step < 12  # the resumed run's next checkpoint is the one that fails
    before = (workdir / "checkpoint.pth").read_bytes()
    done = run_limited("train.torch", argv, cpu_flags=True)
    assert done.returncode == preemption.EXIT_STORAGE, done.stderr[-3000:]
    assert f"error: cannot write the checkpoint in {workdir / 'checkpoint.pth'}: file too large" in done.stderr
    assert (workdir / "checkpoint.pth").read_bytes() == before
    assert not list(workdir.glob(".checkpoint.pth.*"))
    assert loop_torch.main(argv) == 0
    assert_same_run(reference, workdir)


def test_damaged_record_names_it_and_skip_bad_images_replaces_it(recipe_images: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """A prepared data set damaged after preparation (bytes of records flipped: array_record's checksums fail):
    met mid-epoch, the error names the record, the file it is in and the command that prepares it again, exit 2;
    with --skip-bad-images the run replaces it with the next record, says so, and finishes."""
    prepared = tmp_path / "prepared"
    folder, init = recipe_images
    argv = [*recipe_runs.argv("torchvision-v2", folder, init, tmp_path / "run"), "--epochs", "1",
            "--lr-warmup-epochs", "0", "--checkpoint-every", "6", "--prepared-dir", str(prepared)]
    spec, _ = pipeline.load("imagefolder", folder, prepared_dir=prepared)  # prepare it
    records = next(Path(spec.prepared).glob("*-train.array_record-*"))
    data = bytearray(records.read_bytes())
    for at in range(len(data) // 10, len(data), len(data) // 10):  # ten records, so an epoch meets one
        data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    records.write_bytes(bytes(data))
    assert loop_flax.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(rf"train record \d+ \(in {re.escape(str(records))}\) cannot be read \(RuntimeError: Corrupted "
                     rf"Riegeli/records file.*; the prepared copy in {re.escape(spec.prepared)} is damaged: "
                     rf"`rm -r {re.escape(spec.prepared)}` and rerun the same command", err), err[-2000:]
    assert loop_flax.main([*argv, "--skip-bad-images"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: .+: train record \d+ \(in .+\) cannot be read .+; replaced by the next readable "
                     r"record \(--skip-bad-images\)", err), err[-2000:]
