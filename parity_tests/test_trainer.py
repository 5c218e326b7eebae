"""`python -m train.flax` and `python -m train.torch` end to end on the embedded data set (tiny model)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from parity_tests import sharded_step
from parity_tests.helpers import max_rel, torch_model
from parity_tests.injections import BUGS
from parity_tests.tolerances import F32_SHARDED_REL, F32_TRAINER_LOSS_ABS
from r34 import get_preset
from r34_flax import xla_cpu
from train import loop_flax, loop_torch
from train import metrics as metrics_lib
from train.metrics import read_metrics

STEPS = 24
# Runs that only need a few steps take this many: the recipe's learning-rate schedule is compiled into the train step,
# so runs of equal length (and flags) share one compiled step through the compilation cache (~6 s each on a 2-core
# Xeon).
SHORT = ("--steps", "6")
# Steps over which the two trainers' float32 loss curves are held to F32_TRAINER_LOSS_ABS (see tolerances.py).
COMPARED_STEPS = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def init_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared starting weights: the tiny body fitted to the digits (1 channel, 10 classes)."""
    path = tmp_path_factory.mktemp("init") / "init.pth"
    torch.save(torch_model(get_preset("tiny").replace(in_channels=1), seed=7).state_dict(), path)
    return path


def flags(data_dir: Path, init_file: Path, workdir: Path, *extra: str) -> list[str]:
    # Nesterov SGD, the schedule stepped every step (2 warmup steps, cosine over the run): this project's earlier
    # recipe, which these tests were written with (the torchvision recipes: test_recipe_runs.py).
    return ["--preset", "tiny", "--batch-size", "32", "--opt", "sgd_nesterov", "--lr", "0.05", "--wd", "1e-4",
            "--warmup-steps", "2", "--steps", str(STEPS),
            "--log-every", "1", "--checkpoint-every", "4", "--no-progress", "--data-dir", str(data_dir),
            "--init-from", str(init_file), "--workdir", str(workdir), *extra]


def command(module: str, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", module, *argv]


def subprocess_env(devices: int = 1, cpu_flags: bool = True) -> dict[str, str]:
    """Environment of a trainer subprocess; cpu_flags=False keeps `python -m train.flax` from adding its XLA:CPU
    flags (r34_flax.xla_cpu), for a run whose bits are compared with a run in this process, which has none."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env[xla_cpu.OPT_OUT] = "1" if cpu_flags else "0"
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, init_file: Path) -> Path:
    """An uninterrupted single-device run, in this process."""
    workdir = tmp_path_factory.mktemp("reference")
    assert loop_flax.main(flags(data_dir, init_file, workdir)) == 0
    return workdir


def exported(workdir: Path) -> dict[str, torch.Tensor]:
    return torch.load(workdir / "export" / "model.pth", weights_only=True)


def train_losses(workdir: Path) -> np.ndarray:
    return np.array([r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if r["kind"] == "train"])


def test_short_run_learns_exports_and_rescoring_agrees(reference: Path, capsys: pytest.CaptureFixture) -> None:
    losses = train_losses(reference)
    assert len(losses) == STEPS
    assert losses[-4:].mean() < losses[:4].mean() - 0.3, losses
    evals = [r for r in read_metrics(reference / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals and "top1/fc" in evals[-1] and "top5/fc" in evals[-1]
    for name in ("curves.png", "export/model.pth", "export/model.safetensors", "export/model_flax.safetensors"):
        assert (reference / name).is_file(), name
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    model = torch_model(get_preset("tiny").replace(in_channels=1), seed=0)
    model.load_state_dict(exported(reference), strict=True)


def test_default_run_shortened(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`python -m train.flax` as the README runs it (ResNet-34 on the embedded digits, the digits recipe), two steps:
    it trains, evaluates, exports torchvision-named weights, and the PyTorch twin re-scores them equally."""
    assert loop_flax.main(["--steps", "2", "--no-progress", "--data-dir", str(data_dir), "--workdir",
                           str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "recipe digits (the default for the embedded digits)" in out and "training resnet34 on sklearn_digits" in out
    final = json.loads(out.strip().splitlines()[-1])
    assert final["final"] == final["torch_rescore"] and set(final["final"]) == {"top1/fc", "top5/fc"}
    model = torch_model(get_preset("resnet34").replace(in_channels=1, heads=(("fc", 10),)), seed=0)
    model.load_state_dict(exported(tmp_path), strict=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["run"]["recipe"]["opt"] == "adamw" and config["total_steps"] == 2


def test_final_line_reports_equal_flax_and_torch_accuracy(tmp_path: Path, data_dir: Path, init_file: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert loop_flax.main(flags(data_dir, init_file, tmp_path, *SHORT)) == 0
    out = capsys.readouterr().out
    final = json.loads(out.strip().splitlines()[-1])
    assert final["final"]["top1/fc"] == final["torch_rescore"]["top1/fc"]
    assert "final top1/fc: flax" in out and "torch re-score from model.pth" in out


# Global batch 16: 2 per replica, 8 replicas (one per device on 8 devices; the torch trainer's one batch of 16).
MULTI_DEVICE = ("--steps", "3", "--batch-size", "2", "--world-size", "8", "--checkpoint-every", "2")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, init_file: Path) -> tuple[Path, str]:
    """One 8-device process: the sharded-step comparison, then the trainer with MULTI_DEVICE flags."""
    workdir = tmp_path_factory.mktemp("eight")
    argv = [str(data_dir), *flags(data_dir, init_file, workdir, *MULTI_DEVICE)]
    done = subprocess.run(command("parity_tests.sharded_step", argv), env=subprocess_env(8),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return workdir, done.stdout


def test_eight_devices(eight_devices: tuple[Path, str]) -> None:
    """The trainer's step on an 8-device mesh computes what it computes on one device (BN over the global batch),
    and the whole trainer runs data-parallel on the 8 devices."""
    workdir, stdout = eight_devices
    lines = stdout.strip().splitlines()
    results = [json.loads(line) for line in lines if line.startswith('{"steps"')]
    assert [r["rounding"] for r in results] == list(sharded_step.SHARDED_ROUNDINGS), results
    for result in results:
        print(f"\n8 devices vs 1, {result['steps']} steps ({result['rounding']}): worst rel {result['rel']:.2e} "
              f"({result['worst']})")
        assert result["counters_equal"] and result["rel"] <= F32_SHARDED_REL, result
    assert any("on 8 cpu device(s), batch 16" in line for line in lines)
    assert (workdir / "export" / "model.pth").is_file()


def test_resume_after_sigkill_is_bit_identical(reference: Path, data_dir: Path, init_file: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = command("train.flax", flags(data_dir, init_file, tmp_path))
    # Same flags as the reference and the resumed half, which run in this process: XLA:CPU flags change the bits.
    proc = subprocess.Popen(argv, env=subprocess_env(1, cpu_flags=False), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "checkpoints" / "4"
    deadline = time.monotonic() + 300
    while not (first / "commit_success.txt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed: nothing was tested"
    assert not (tmp_path / "export").exists()
    # The same command again (in this process: the kill was the subprocess's).
    assert loop_flax.main(flags(data_dir, init_file, tmp_path)) == 0
    assert f"resumed from {tmp_path / 'checkpoints'} at step" in capsys.readouterr().out
    one, resumed = exported(reference), exported(tmp_path)
    for k in one:
        assert torch.equal(one[k], resumed[k]), k
    np.testing.assert_array_equal(train_losses(reference), train_losses(tmp_path))


def test_torch_trainer_follows_the_same_loss_curve(reference: Path, data_dir: Path, init_file: Path,
                                                   tmp_path: Path) -> None:
    assert loop_torch.main(flags(data_dir, init_file, tmp_path)) == 0
    flax_losses, torch_losses = train_losses(reference), train_losses(tmp_path)
    diff = np.abs(flax_losses - torch_losses)
    print(f"\nflax vs torch trainer loss per step: {np.array2string(diff, precision=1)}")
    assert diff[:COMPARED_STEPS].max() <= F32_TRAINER_LOSS_ABS, diff


def test_torch_trainer_follows_the_eight_device_loss_curve(eight_devices: tuple[Path, str], data_dir: Path,
                                                           init_file: Path, tmp_path: Path) -> None:
    """The same check under other float32 roundings of the Flax trainer: 8 devices (BatchNorm's global means and
    the gradient all-reduce summed in another order) and the trainer's XLA:CPU flag (another convolution kernel),
    which the 8-device process applies."""
    workdir, _ = eight_devices
    assert loop_torch.main(flags(data_dir, init_file, tmp_path, *MULTI_DEVICE)) == 0
    flax_losses, torch_losses = train_losses(workdir), train_losses(tmp_path)
    diff = np.abs(flax_losses - torch_losses)
    print(f"\n8-device flax vs torch trainer loss per step: {np.array2string(diff, precision=1)}")
    assert len(diff) == int(MULTI_DEVICE[1]) and diff.max() <= F32_TRAINER_LOSS_ABS, diff


def test_bengali_run_reports_the_competition_metric(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    bengali_files: tuple[Path, dict], bengali_data_dir: Path) -> None:
    argv = ["--preset", "tiny_grapheme", "--dataset", "bengali_graphemes", "--manual-dir", str(bengali_files[0]),
            "--data-dir", str(bengali_data_dir), "--image-size", "32", "--batch-size", "4", "--steps", "3",
            "--no-progress", "--workdir", str(tmp_path / "run")]
    assert loop_flax.main(argv) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(final["final"]) >= {"grapheme_score", "top1/grapheme_root", "macro_recall/vowel_diacritic"}
    assert final["final"]["grapheme_score"] == final["torch_rescore"]["grapheme_score"]


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "no_such_set"], "unknown data set 'no_such_set'"),
    (["--platform", "tpu"], "platform 'tpu' requested but JAX finds no such device; present: cpu"),
    (["--tpu"], "A Cloud TPU VM needs libtpu: pip install -e '.[tpu]'"),
    (["--platform", "gpu"], "A CUDA host needs JAX's CUDA plugin: pip install -e '.[cuda]'"),
    (["--preset", "grapheme34"], "preset 'grapheme34' has heads"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "5000"], "--batch-size 5000 x 1 replicas = 5000 images exceeds the 1437 training examples"),
    (["--dataset", "bengali_graphemes"], "prepared from files you download yourself: manual dir"),
])
def test_bad_flags_are_clear_errors(extra: list[str], message: str, data_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    argv = ["--preset", "tiny", "--no-progress", "--data-dir", str(data_dir), "--workdir", str(tmp_path / "w"),
            "--manual-dir", str(tmp_path / "empty"), *extra]
    assert loop_flax.main(argv) == 2
    assert message in capsys.readouterr().err


def test_init_from_another_architecture_is_refused(data_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    torch.save(torch_model(get_preset("resnet18"), seed=0).state_dict(), tmp_path / "r18.pth")
    argv = ["--preset", "tiny", "--no-progress", "--data-dir", str(data_dir), "--workdir", str(tmp_path / "w"),
            "--init-from", str(tmp_path / "r18.pth")]
    assert loop_flax.main(argv) == 2
    assert "the body is another architecture: stage_sizes=(2, 2, 2, 2) (this run: (1, 1, 2, 1))" in \
        capsys.readouterr().err


def test_batch_not_divisible_by_devices(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    """Checked before any data or compute; 8 devices stood in by one (the check reads only their number)."""
    monkeypatch.setattr(loop_flax, "select_devices", lambda platform: jax.devices()[:1] * 8)
    argv = ["--preset", "tiny", "--batch-size", "3", "--world-size", "4", "--data-dir", str(data_dir), "--workdir",
            str(tmp_path)]
    assert loop_flax.main(argv) == 2
    assert "--batch-size 3 x --world-size 4 = 12 images is not divisible by the 8 devices" in capsys.readouterr().err


def copy_run(reference: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "export")
    return workdir


def test_damaged_newest_checkpoint_falls_back_to_the_previous(reference: Path, data_dir: Path, init_file: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    workdir = copy_run(reference, tmp_path)
    newest = workdir / "checkpoints" / str(STEPS)
    for f in (newest / "train_state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated, as by a crash mid-write
    assert loop_flax.main(flags(data_dir, init_file, workdir)) == 0
    captured = capsys.readouterr()
    assert f"warning: checkpoint step {STEPS} in {workdir / 'checkpoints'} is unreadable" in captured.err
    assert f"resumed from {workdir / 'checkpoints'} at step {STEPS - 4}" in captured.out
    one, again = exported(reference), exported(workdir)
    assert all(torch.equal(one[k], again[k]) for k in one)  # the 4 steps were redone exactly


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(reference: Path, data_dir: Path, init_file: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    workdir = copy_run(reference, tmp_path)
    for f in (workdir / "checkpoints").rglob("*"):
        if f.is_file() and "train_state" in f.parts:
            f.write_bytes(b"")
    assert loop_flax.main(flags(data_dir, init_file, workdir)) == 2
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and "pass --restart to start over on purpose" in err
    assert loop_flax.main(flags(data_dir, init_file, workdir)) == 2  # still refused: they were set aside, not lost
    assert "only damaged ones" in capsys.readouterr().err
    assert loop_flax.main(flags(data_dir, init_file, workdir, "--restart", *SHORT)) == 0
    assert "resumed" not in capsys.readouterr().out


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir: Path, init_file: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    argv = flags(data_dir, init_file, tmp_path, "--lr", "1e30", "--warmup-steps", "0", "--checkpoint-every", "1")
    assert loop_flax.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: loss is" in err and "the last good checkpoint is step" in err
    step = int(err.split("the last good checkpoint is step ")[1].split()[0])
    nan_step = int(err.split(" at step ")[1].split()[0])
    assert step == nan_step - 1 and (tmp_path / "checkpoints" / str(step)).is_dir()
    assert not (tmp_path / "checkpoints" / str(nan_step)).exists()


def test_skip_nonfinite_steps(data_dir: Path, init_file: Path, tmp_path: Path) -> None:
    argv = flags(data_dir, init_file, tmp_path, "--lr", "1e30", "--warmup-steps", "0", "--steps", "6",
                 "--skip-nonfinite")
    assert loop_flax.main(argv) == 0
    skipped = [r.get("skipped") for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert any(skipped), skipped
    state = exported(tmp_path)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# gloo's threads print "[Gloo] Rank R is connected to N peer ranks. Expected number of connected peer ranks is : N"
# in several writes each, so concurrent messages interleave mid-line: CI saw the final number on a line of its own, and
# "Rank [Gloo] Rank 4 is connected to 7 peer ranks. 5Expected number ..." (a number glued to the next message's word).
# Each write holds whole words, so the check is on words (runs of letters) against gloo's vocabulary, not on phrases.
GLOO_VOCABULARY = frozenset("Gloo Rank is connected to peer ranks Expected number of".split())


def words_besides_gloo(stdout: str) -> list[str]:
    """The words of a process's stdout that are not in gloo's connection messages (numbers and punctuation aside)."""
    return [w for w in re.findall(r"[A-Za-z]+", stdout) if w not in GLOO_VOCABULARY]


def test_gloo_filter_takes_interleaved_messages_and_nothing_else() -> None:
    """What process 1 printed in a CI run (gloo's threads interleaved) is all gloo; a line of the trainer's is not."""
    interleaved = ("[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n"
                   "[Gloo] Rank [Gloo] Rank 4 is connected to 7 peer ranks. 5Expected number of connected peer ranks "
                   "is : 7\n is connected to 7 peer ranks. Expected number of connected peer ranks is : 7\n")
    assert words_besides_gloo(interleaved) == []
    assert words_besides_gloo(interleaved + "step 3 loss 2.31\n") == ["step", "loss"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_train_like_one_of_eight(eight_devices: tuple[Path, str], data_dir: Path,
                                                                init_file: Path, tmp_path: Path) -> None:
    """Multi-host on one machine: 2 JAX processes x 4 CPU devices over localhost (gloo collectives), each reading
    its own shard of every global batch, against 1 process x 8 devices on the same global batches."""
    port = free_port()
    procs = [subprocess.Popen(
        command("train.flax", flags(data_dir, init_file, tmp_path, *MULTI_DEVICE, "--coordinator",
                                    f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i))),
        env=subprocess_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "on 8 cpu device(s), batch 16" in outputs[0][0]
    assert "batch: 2 per replica x 8 replicas = 16 global, 2 per device on 8 device(s)" in outputs[0][0]
    # Only process 0 prints (gloo's own connection messages aside).
    assert not words_besides_gloo(outputs[1][0]), outputs[1][0]
    one, two = exported(eight_devices[0]), exported(tmp_path)
    errors = {k: max_rel(one[k].double().numpy(), two[k].double().numpy()) for k in one if one[k].is_floating_point()}
    worst = max(errors, key=errors.get)
    print(f"\n2 processes x 4 devices vs 1 x 8, 3 steps: worst rel {errors[worst]:.2e} ({worst})")
    assert errors[worst] <= F32_SHARDED_REL, f"{worst}: {errors[worst]:.3e}"
    assert all(torch.equal(one[k], two[k]) for k in one if not one[k].is_floating_point())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]


def test_partial_save_never_counts(reference: Path, data_dir: Path, init_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    """orbax writes a checkpoint under a temporary name and renames it when complete; one left by a crash is
    not a checkpoint."""
    workdir = copy_run(reference, tmp_path)
    partial = workdir / "checkpoints" / f"{STEPS + 4}.orbax-checkpoint-tmp-1764460000"
    (partial / "train_state").mkdir(parents=True)
    (partial / "train_state" / "half").write_bytes(b"\0" * 100)
    assert loop_flax.main(flags(data_dir, init_file, workdir)) == 0
    captured = capsys.readouterr()
    assert f"resumed from {workdir / 'checkpoints'} at step {STEPS}" in captured.out
    assert "unreadable" not in captured.err


def test_workdir_of_another_configuration_is_refused(reference: Path, data_dir: Path, init_file: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    workdir = copy_run(reference, tmp_path)
    assert loop_flax.main(flags(data_dir, init_file, workdir, "--lr", "0.07")) == 2
    assert f"holds a checkpoint (step {STEPS}) of a different configuration (recipe.lr: 0.05 -> 0.07)" in \
        capsys.readouterr().err


def test_unknown_preset_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        loop_flax.main(["--preset", "resnet51"])
    assert e.value.code == 2 and "invalid choice: 'resnet51'" in capsys.readouterr().err


def test_bfloat16_run_exports_weights_that_torch_scores_like_flax_float32(data_dir: Path, init_file: Path,
                                                                          tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    assert loop_flax.main(flags(data_dir, init_file, tmp_path, "--steps", "3", "--dtype", "bfloat16")) == 0
    out = capsys.readouterr().out
    assert "float32 compute" not in out and "bfloat16 compute" in out
    final = json.loads(out.strip().splitlines()[-1])
    assert final["final_float32"] == final["torch_rescore"]
    assert exported(tmp_path)["conv1.weight"].dtype == torch.float32  # float32 parameters under bf16 compute


def test_trainer_loss_curve_check_catches_nesterov_flipped(tmp_path: Path, data_dir: Path, init_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer loss-curve check can fail: a Flax trainer with Nesterov momentum off (parity_tests/injections.py)
    leaves the torch trainer's curve within the compared steps."""
    short = ("--steps", str(COMPARED_STEPS))
    assert loop_torch.main(flags(data_dir, init_file, tmp_path / "torch", *short)) == 0
    monkeypatch.setattr(loop_flax, "make_optimizer", BUGS["nesterov_flipped"].optimizer)
    assert loop_flax.main(flags(data_dir, init_file, tmp_path / "flax", *short)) == 0
    diff = np.abs(train_losses(tmp_path / "flax") - train_losses(tmp_path / "torch"))
    print(f"\nnesterov_flipped: flax vs torch trainer loss per step: {np.array2string(diff, precision=1)}")
    assert diff.max() > F32_TRAINER_LOSS_ABS, diff


def test_rerunning_a_finished_run_reports_its_final_metrics(reference: Path, data_dir: Path, init_file: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """The same command again on a finished workdir: no training, the final state scored again, not `"final": {}`."""
    last_eval = [r for r in read_metrics(reference / "metrics.jsonl") if r["kind"] == "eval"][-1]
    capsys.readouterr()
    assert loop_flax.main(flags(data_dir, init_file, reference)) == 0
    out = capsys.readouterr().out
    assert f"run already complete at step {STEPS} of {STEPS}" in out
    final = json.loads(out.strip().splitlines()[-1])["final"]
    assert final and all(final[k] == pytest.approx(last_eval[k], abs=1e-9) for k in final), (final, last_eval)


def test_input_clock_tells_waiting_from_working() -> None:
    def source(delay: float):
        for k in range(5):
            time.sleep(delay)
            yield k

    for delay, work, input_bound in ((0.03, 0.0, True), (0.0, 0.03, False)):
        clock = metrics_lib.InputClock()
        for _ in clock.batches(source(delay)):
            time.sleep(work)  # the step
        share = clock.fraction()
        assert (share > 0.9) if input_bound else (share < 0.1), (delay, work, share)
        # 5 batches over at least 5 sleeps of max(delay, work): the rate counts each batch once.
        assert 0 < clock.batches_per_s() <= 1 / max(delay, work), clock.batches_per_s()


@pytest.mark.parametrize("main", [loop_flax.main, loop_torch.main], ids=["flax", "torch"])
def test_input_wait_shows_an_input_bound_run(main, data_dir: Path, init_file: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics.jsonl's input_wait (the share of wall time spent waiting for batches, also on the progress bar):
    with each batch made 0.4 s late (a tiny-model step takes 10-70 ms), the run reads as input-bound."""
    from train.data import pipeline

    make_batches = pipeline.train_batches

    def late(*args, **kwargs):
        for batch in make_batches(*args, **kwargs):
            time.sleep(0.4)
            yield batch

    monkeypatch.setattr(pipeline, "train_batches", late)
    argv = flags(data_dir, init_file, tmp_path, *SHORT, "--log-every", "3", "--checkpoint-every", "100")
    assert main(argv) == 0
    waits = [r["input_wait"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    print(f"\ninput_wait per interval: {waits}")
    assert len(waits) == 2 and waits[-1] > 0.75, waits  # the first interval holds compilation


def test_fine_tunes_a_torchvision_resnet50_checkpoint(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`--preset resnet50 --init-from` torchvision's resnet50 file: the Bottleneck body is loaded (its 3-channel stem
    summed to the digits' 1 channel, the 1000-class fc re-initialised for 10), trained, and exported as a
    torchvision-layout state_dict whose body moved from the file's by the steps taken, not re-initialised."""
    import torchvision

    # zero_init_residual: a body whose residual branches start near identity, as a trained one is; torchvision's
    # default draw is an exploding 50-layer net whose stem gradient moves it by 5x its size in two steps at lr 1e-3.
    tv = torchvision.models.resnet50(zero_init_residual=True).state_dict()
    # Where torchvision would have downloaded ResNet50_Weights.IMAGENET1K_V1 (random weights here: no network): the
    # trainer's --init-from torchvision:resnet50.IMAGENET1K_V1 finds it in torch's hub cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.save(tv, cached)
    steps = 2
    argv = ["--preset", "resnet50", "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.001", "--warmup-steps", "0",
            "--steps", str(steps),
            "--log-every", "1", "--no-progress", "--data-dir", str(data_dir), "--init-from",
            "torchvision:resnet50.IMAGENET1K_V1", "--workdir", str(tmp_path / "w")]
    assert loop_flax.main(argv) == 0
    out = capsys.readouterr().out
    assert "adapted the 3-channel stem to 1 channel by summing conv1 over its input channels" in out
    assert "head fc: re-initialised (10 classes; the file has 1000 classes)" in out
    losses = train_losses(tmp_path / "w")
    assert len(losses) == steps and np.isfinite(losses).all(), losses
    model = torch_model(get_preset("resnet50").replace(in_channels=1, heads=(("fc", 10),)), seed=0)
    model.load_state_dict(exported(tmp_path / "w"), strict=True)
    tuned = model.state_dict()
    # Another draw: how far a re-initialised body would be.
    fresh = torchvision.models.resnet50(zero_init_residual=True).state_dict()
    for key in ("conv1.weight", "layer1.0.downsample.0.weight", "layer3.5.conv3.weight", "layer4.2.conv2.weight"):
        start, redraw = tv[key].numpy(), fresh[key].numpy()
        if key == "conv1.weight":  # the file's 3-channel stem, summed over its input channels
            start, redraw = start.sum(1, keepdims=True), redraw.sum(1, keepdims=True)
        moved, redrawn = max_rel(start, tuned[key].numpy()), max_rel(start, redraw)
        print(f"{key}: moved {moved:.1e} from the file's (a fresh draw: {redrawn:.1e})")
        assert 0 < moved < redrawn / 4, (key, moved, redrawn)  # loaded, then stepped: not the file's bits, not a draw
    assert int(tuned["layer4.2.bn3.num_batches_tracked"]) == int(tv["layer4.2.bn3.num_batches_tracked"]) + steps
