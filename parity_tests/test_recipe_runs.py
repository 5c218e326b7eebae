"""Each named torchvision recipe, shortened, end to end in both trainers on generated images: the learning-rate
curve, the loss curve and the EMA model's top-1 land in metrics.jsonl and curves.png, the two trainers' learning
rates are identical, and from the same weights their float32 loss curves agree over the first steps (the same
batches: TrivialAugmentWide, RandomErasing, MixUp/CutMix and repeated augmentation drawn once, applied by this
project's code on one side and torchvision's on the other)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from parity_tests.recipe_runs import RECIPE_FLAGS, STEPS_PER_EPOCH
from parity_tests.tolerances import F32_TRAINER_LOSS_ABS
from train import loop_flax, loop_torch
from train.metrics import read_metrics

COMPARED_STEPS = 4  # as test_trainer: float32 loss curves from the same batches, tolerances.F32_TRAINER_LOSS_ABS


@pytest.mark.parametrize("recipe", RECIPE_FLAGS)
def test_named_recipe_runs_in_both_trainers(recipe: str, recipe_runs: Callable[[str, str], Path]) -> None:
    records = {}
    for framework in ("flax", "torch"):
        workdir = recipe_runs(recipe, framework)
        config = json.loads((workdir / "config.json").read_text())
        assert config["args"]["recipe"] == recipe and config["recipe_expansion"]
        assert config["describe"][0].startswith("batch: 16 per replica x 2 replicas = 32 global")
        printed = (workdir.parent / "stdout.txt").read_text()  # the expansion and the batch layout, printed at start
        assert f"recipe {recipe} (--recipe): " in printed
        assert "batch: 16 per replica x 2 replicas = 32 global" in printed
        assert config["steps_per_epoch"] == STEPS_PER_EPOCH
        records[framework] = read_metrics(workdir / "metrics.jsonl")
        assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    train = {f: [r for r in rs if r["kind"] == "train"] for f, rs in records.items()}
    lrs = {f: [r["lr"] for r in rows] for f, rows in train.items()}
    assert lrs["flax"] == lrs["torch"], (lrs["flax"], lrs["torch"])
    epochs = sorted({r["epoch"] for r in train["flax"]})
    assert epochs == [0, 1, 2] and len({lr for lr in lrs["flax"]}) == 3  # one learning rate per epoch
    for framework, rows in records.items():
        evals = [r for r in rows if r["kind"] == "eval"]
        assert len(evals) == 3 and all("top1/fc" in r for r in evals), framework
        if recipe == "torchvision-v2":
            ema = [r for r in rows if r["kind"] == "eval_ema"]
            assert len(ema) == 3 and all("top1/fc" in r for r in ema), framework
    losses = {f: np.array([r["loss"] for r in rows]) for f, rows in train.items()}
    diff = np.abs(losses["flax"] - losses["torch"])
    print(f"\n{recipe}: lr per epoch {sorted(set(lrs['flax']), reverse=True)}; flax vs torch loss per step "
          f"{np.array2string(diff[:8], precision=1)}")
    assert diff[:COMPARED_STEPS].max() <= F32_TRAINER_LOSS_ABS, diff


@pytest.mark.parametrize("flags, message", [
    (["--lr-scheduler", "onecycle"], "invalid choice: 'onecycle'"),
    (["--auto-augment", "rand"], "invalid choice: 'rand'"),
    (["--opt", "lamb"], "invalid choice: 'lamb'"),
    (["--lr-warmup-epochs", "5", "--epochs", "5"], "--lr-warmup-epochs must be in [0, --epochs=5)"),
    (["--mixup-alpha", "-0.1"], "--mixup-alpha must be >= 0"),
    (["--cutmix-alpha", "-1"], "--cutmix-alpha must be >= 0"),
    (["--ra-sampler", "--ra-reps", "0"], "--ra-reps must be >= 1 with --ra-sampler"),
    (["--model-ema", "--model-ema-steps", "0"], "--model-ema-steps must be >= 1"),
    (["--val-resize-size", "200", "--val-crop-size", "224"], "--val-resize-size 200 cannot give a 224 px centre crop"),
    (["--auto-augment", "augmix"], "--auto-augment augmix is not supported"),
    (["--amp"], "--amp (torchvision's CUDA float16 autocast"),
    (["--start-epoch", "3"], "--start-epoch is not supported"),
    (["--optimizer", "sgd", "--opt", "adamw"], "--optimizer (this project's earlier spelling) and --opt"),
    (["--warmup-steps", "2", "--lr-warmup-epochs", "1"], "--warmup-steps (steps, this project's earlier schedule)"),
])
def test_bad_recipe_flags_are_refused_before_any_data_is_prepared(flags: list[str], message: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Each refused with its flag named, exit 2, before the data set is prepared or a checkpoint touched."""
    for main in (loop_flax.main, loop_torch.main):
        argv = ["--preset", "tiny", "--data-dir", str(tmp_path / "tfds"), "--output-dir", str(tmp_path / "w"), *flags]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's invalid choice
            code = e.code
        assert code == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "tfds").exists() and not (tmp_path / "w").exists()


def test_amp_names_what_to_use_in_each_trainer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--amp", "--data-dir", str(tmp_path / "tfds")]
    assert loop_flax.main(argv) == 2 and "use --dtype bfloat16" in capsys.readouterr().err
    assert loop_torch.main(argv) == 2 and "train.torch runs on the CPU; drop --amp" in capsys.readouterr().err
