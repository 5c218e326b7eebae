"""The training recipe both trainers follow: torchvision's classification references, flag for flag.

One frozen `Recipe` holds what torchvision's `train.py` takes as optimizer, learning-rate, loss, MixUp/CutMix, EMA
and clipping flags, with the same names, defaults and meaning (`../shared/RECIPE_FACTS.md`); `train/optim_flax.py`
builds it in optax, `train/optim_torch.py` in torch exactly as torchvision does, and the parity suite proves the two
equal (parity_tests/test_recipe.py). The data side of a recipe (auto-augment, random erasing, crops, repeated
augmentation) is in `train/data/spec.py`.

Named recipes (`RECIPES`) are torchvision's documented commands for the ResNet family, as the flags they expand to.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from train import schedules

Optimizer = Literal["sgd", "sgd_nesterov", "rmsprop", "adamw"]
OPTIMIZERS = ("sgd", "sgd_nesterov", "rmsprop", "adamw")
SCHEDULERS = schedules.SCHEDULERS
WARMUP_METHODS = schedules.WARMUP_METHODS
# torchvision's train.py fixes these (RMSprop(eps=0.0316, alpha=0.9); AdamW and its defaults).
RMSPROP_EPS, RMSPROP_ALPHA = 0.0316, 0.9
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Optimizer, learning-rate schedule, loss, MixUp/CutMix, EMA and clipping, identical for both trainers.

    Field names are torchvision's flags (`--lr-warmup-epochs` is `lr_warmup_epochs`), defaults are train.py's.
    Learning rate: torch's schedulers as torchvision composes them, stepped once per epoch (`steps_per_epoch`
    optimizer steps), so the rate is constant within an epoch; `schedule_unit="step"` makes every optimizer step a
    scheduler step (this project's earlier `--warmup-steps` recipes: then the scheduler's length is the run's steps
    and `lr_warmup_epochs` counts steps). SGD adds weight decay to the gradient before
    momentum (torch's L2), AdamW decouples it; `norm_weight_decay`/`bias_weight_decay` give BatchNorm parameters and
    biases their own groups (torchvision's `set_weight_decay`). EMA: torchvision's `ExponentialMovingAverage` over
    parameters and buffers, decay adjusted by `ema_global_batch * model_ema_steps / epochs`.
    """

    opt: Optimizer = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    norm_weight_decay: float | None = None
    bias_weight_decay: float | None = None
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    lr_scheduler: str = "steplr"
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    lr_min: float = 0.0
    lr_warmup_epochs: int = 0
    lr_warmup_method: str = "constant"
    lr_warmup_decay: float = 0.01
    epochs: int = 90
    steps_per_epoch: int = 1
    total_steps: int | None = None  # optimizer steps this run takes (--steps); default epochs * steps_per_epoch
    schedule_unit: Literal["epoch", "step"] = "epoch"
    clip_grad_norm: float | None = None
    model_ema: bool = False
    model_ema_steps: int = 32
    model_ema_decay: float = 0.99998
    ema_global_batch: int = 256  # torchvision's world_size * batch_size, for the EMA decay adjustment

    def __post_init__(self) -> None:
        problems = []
        if self.opt not in OPTIMIZERS:
            problems.append(f"--opt {self.opt!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.lr_scheduler not in SCHEDULERS:
            problems.append(f"--lr-scheduler {self.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.lr_warmup_method not in WARMUP_METHODS:
            problems.append(f"--lr-warmup-method {self.lr_warmup_method!r} is not one of {', '.join(WARMUP_METHODS)}")
        if self.lr <= 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        if self.epochs < 1 or self.steps_per_epoch < 1:
            problems.append(f"--epochs and the steps per epoch must be >= 1, got {self.epochs} and "
                            f"{self.steps_per_epoch}")
        if self.total_steps is not None and self.total_steps < 1:
            problems.append(f"--steps must be >= 1, got {self.total_steps}")
        if self.schedule_unit not in ("epoch", "step"):
            problems.append(f"schedule_unit {self.schedule_unit!r} is not 'epoch' or 'step'")
        elif not 0 <= self.lr_warmup_epochs < self.schedule_length:
            flag, unit = (("--lr-warmup-epochs", "--epochs") if self.schedule_unit == "epoch"
                          else ("--warmup-steps", "the run's steps"))
            problems.append(f"{flag} must be in [0, {unit}={self.schedule_length}): the warmup is followed by the "
                            f"main schedule, got {self.lr_warmup_epochs}")
        if self.lr_warmup_method == "linear" and not 0 < self.lr_warmup_decay <= 1:
            problems.append(f"--lr-warmup-decay must be in (0, 1] for linear warmup (torch's LinearLR start factor), "
                            f"got {self.lr_warmup_decay}")
        if self.lr_warmup_method == "constant" and not 0 <= self.lr_warmup_decay <= 1:
            problems.append(f"--lr-warmup-decay must be in [0, 1] for constant warmup (torch's ConstantLR factor), "
                            f"got {self.lr_warmup_decay}")
        if self.lr_step_size < 1:
            problems.append(f"--lr-step-size must be >= 1, got {self.lr_step_size}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for flag, value in (("--mixup-alpha", self.mixup_alpha), ("--cutmix-alpha", self.cutmix_alpha)):
            if value < 0:
                problems.append(f"{flag} must be >= 0 (0 turns it off; Beta(alpha, alpha) otherwise), got {value}")
        for flag, value in (("--wd/--weight-decay", self.weight_decay), ("--momentum", self.momentum),
                            ("--norm-weight-decay", self.norm_weight_decay),
                            ("--bias-weight-decay", self.bias_weight_decay)):
            if value is not None and value < 0:
                problems.append(f"{flag} must be >= 0, got {value}")
        if self.opt == "sgd_nesterov" and self.momentum <= 0:
            problems.append("--opt sgd_nesterov needs --momentum > 0 (torch: Nesterov momentum requires a momentum)")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            problems.append(f"--clip-grad-norm must be > 0, got {self.clip_grad_norm}")
        if self.model_ema_steps < 1:
            problems.append(f"--model-ema-steps must be >= 1, got {self.model_ema_steps}")
        if not 0 <= self.model_ema_decay <= 1:
            problems.append(f"--model-ema-decay must be in [0, 1], got {self.model_ema_decay}")
        if problems:
            raise ValueError("invalid recipe: " + "; ".join(problems))

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    @property
    def steps(self) -> int:
        """Optimizer steps the run takes."""
        return self.total_steps if self.total_steps is not None else self.epochs * self.steps_per_epoch

    @property
    def nesterov(self) -> bool:
        return self.opt == "sgd_nesterov"

    @property
    def steps_per_iteration(self) -> int:
        """Optimizer steps per scheduler step: an epoch's, or 1 with schedule_unit "step"."""
        return self.steps_per_epoch if self.schedule_unit == "epoch" else 1

    @property
    def schedule_length(self) -> int:
        """The scheduler's `epochs` (cosine's T_max counts from it): the run's epochs, or its steps per step."""
        return self.epochs if self.schedule_unit == "epoch" else self.steps

    def in_warmup(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) lies in the warmup (torchvision: epoch < lr_warmup_epochs)."""
        return step // self.steps_per_iteration < self.lr_warmup_epochs

    @property
    def ema_decay(self) -> float:
        """torchvision's adjusted decay: alpha = min(1, (1 - decay) * world_size * batch * ema_steps / epochs)."""
        adjust = self.ema_global_batch * self.model_ema_steps / self.epochs
        alpha = min(1.0, (1.0 - self.model_ema_decay) * adjust)
        return 1.0 - alpha

    def lr_per_epoch(self) -> list[float]:
        """The learning rate of every scheduler step the run reaches, as torch's objects produce it."""
        count = math.ceil(self.steps / self.steps_per_iteration) + 1
        return schedules.lr_values(self.lr, self.lr_scheduler, self.schedule_length,
                                   warmup_epochs=self.lr_warmup_epochs,
                                   warmup_method=self.lr_warmup_method, warmup_decay=self.lr_warmup_decay,
                                   step_size=self.lr_step_size, gamma=self.lr_gamma, lr_min=self.lr_min, count=count)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return self.lr_per_epoch()[step // self.steps_per_iteration]


def decay_group(kind: str, param: str, recipe: Recipe) -> str:
    """torchvision's `set_weight_decay` for one parameter: its group ("bias", "norm" or "other"), from the kind of
    module holding it ("bn" for BatchNorm, as the conversion table names kinds) and its torch name (`bias`,
    `weight`). A custom key (bias) is matched first; norm layers form a group only when --norm-weight-decay is set."""
    if recipe.bias_weight_decay is not None and param == "bias":
        return "bias"
    if recipe.norm_weight_decay is not None and kind == "bn":
        return "norm"
    return "other"


def group_decay(recipe: Recipe) -> dict[str, float]:
    """Weight decay of each group, in torchvision's param-group order (other, norm, then the custom keys)."""
    decays = {"other": recipe.weight_decay}
    if recipe.norm_weight_decay is not None:
        decays["norm"] = recipe.norm_weight_decay
    if recipe.bias_weight_decay is not None:
        decays["bias"] = recipe.bias_weight_decay
    return decays


# torchvision's documented commands for the ResNet family (references/classification; RECIPE_FACTS.md). `-b` is per
# GPU and they ran on 8 GPUs: --world-size 8 keeps the global batch, EMA adjustment and repeated-augmentation split
# on any device count.
V1 = ("--opt", "sgd", "--lr", "0.1", "--momentum", "0.9", "--wd", "1e-4", "--lr-scheduler", "steplr",
      "--lr-step-size", "30", "--lr-gamma", "0.1", "--epochs", "90", "-b", "32", "--world-size", "8",
      "--train-crop-size", "224", "--val-resize-size", "256", "--val-crop-size", "224", "--interpolation", "bilinear")
RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "torchvision-v1": ("torchvision's V1 weights of every ResNet (resnet34 73.314%, resnet50 76.130%): "
                       "torchrun --nproc_per_node=8 train.py --model MODEL", V1),
    "torchvision-v1-resnext": ("torchvision's V1 ResNeXt-50 32x4d and ResNeXt-101 32x8d: ... --model MODEL "
                               "--epochs 100", (*V1, "--epochs", "100")),
    "torchvision-v2": (
        "torchvision's V2 weights (resnet50 80.858%; the other V2 ResNets link the same recipe): --model resnet50 "
        "--batch-size 128 --lr 0.5 ... --ra-sampler --ra-reps 4",
        ("--opt", "sgd", "--momentum", "0.9", "-b", "128", "--world-size", "8", "--lr", "0.5", "--lr-scheduler",
         "cosineannealinglr", "--lr-warmup-epochs", "5", "--lr-warmup-method", "linear", "--lr-warmup-decay", "0.01",
         "--auto-augment", "ta_wide", "--epochs", "600", "--random-erase", "0.1", "--weight-decay", "0.00002",
         "--norm-weight-decay", "0.0", "--label-smoothing", "0.1", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0",
         "--train-crop-size", "176", "--model-ema", "--model-ema-steps", "32", "--model-ema-decay", "0.99998",
         "--val-resize-size", "232", "--val-crop-size", "224", "--ra-sampler", "--ra-reps", "4", "--interpolation",
         "bilinear")),
    # This project's demo on the embedded digits (1,437 images): what `python -m train.flax` runs without flags.
    "digits": ("this project's recipe for the embedded digits, what a run without flags trains: AdamW, 5 epochs, "
               "cosine after a 1-epoch linear warmup",
               ("--opt", "adamw", "--lr", "2e-3", "--wd", "0.05", "--epochs", "5", "-b", "32", "--lr-scheduler",
                "cosineannealinglr", "--lr-warmup-epochs", "1", "--lr-warmup-method", "linear", "--lr-warmup-decay",
                "0.1")),
}
