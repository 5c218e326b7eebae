"""The training recipe both trainers follow: one frozen description of optimizer, schedule and loss."""

from __future__ import annotations

import dataclasses
from typing import Literal

Optimizer = Literal["sgd", "adamw"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Optimizer, learning-rate schedule and loss settings, identical for the Flax and PyTorch trainers.

    Schedule: `warmup_steps` of linear warmup from `lr * warmup_start_factor` to `lr`, then cosine decay to 0
    at `total_steps` (torch: SequentialLR(LinearLR, CosineAnnealingLR); optax: warmup_cosine_decay_schedule).
    Step k (0-based) of the optimizer uses the schedule's value at k.

    SGD: torch.optim.SGD(momentum, nesterov, weight_decay), which adds weight_decay * p to the gradient before
    momentum; optax: chain(add_decayed_weights, sgd(momentum, nesterov)). Weight decay applies to every
    parameter, BatchNorm and biases included, as torch's SGD over model.parameters() does.
    AdamW: decoupled weight decay, multiplied by the learning rate in both (torch p -= lr * wd * p; optax
    adamw adds wd * p to the update before scaling by lr); eps is added to sqrt(v_hat) (torch's eps = optax's
    eps, optax's eps_root stays 0).
    """

    optimizer: Optimizer = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    total_steps: int = 1000
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in ("sgd", "adamw"):
            problems.append(f"optimizer {self.optimizer!r} is not 'sgd' or 'adamw'")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.total_steps < 1:
            problems.append(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps < self.total_steps:
            problems.append(f"warmup_steps must be in [0, total_steps={self.total_steps}), got {self.warmup_steps}")
        if not 0 < self.warmup_start_factor <= 1:
            problems.append(f"warmup_start_factor must be in (0, 1] (torch's LinearLR), got {self.warmup_start_factor}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.momentum < 0:
            problems.append("weight_decay and momentum must be >= 0")
        if problems:
            raise ValueError("invalid Recipe: " + "; ".join(problems))

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)
