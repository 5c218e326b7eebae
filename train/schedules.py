"""Learning rates as torch's schedulers produce them, epoch by epoch, in plain Python (no torch, no jax).

torchvision's classification references build `StepLR`, `CosineAnnealingLR` or `ExponentialLR`, behind a
`LinearLR` or `ConstantLR` warmup joined by `SequentialLR(milestones=[warmup])`, and step it once per epoch. torch
computes most of these recursively from the optimizer's current lr (the "chainable" forms), and `SequentialLR`
switches to the main scheduler through its closed form at the milestone: the values differ from a textbook formula
in the last bits. `lr_values` replays exactly the arithmetic torch's objects do (torch 2.14, `torch/optim/
lr_scheduler.py`), so the Flax trainer's schedule equals the PyTorch trainer's bit for bit (parity_tests/
test_recipe.py builds torch's objects and compares every value).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

SCHEDULERS = ("steplr", "cosineannealinglr", "exponentiallr")
WARMUP_METHODS = ("linear", "constant")


class _Scheduler:
    """One torch scheduler's state over a shared group lr: `initial` is its first step (constructor), `update` a
    regular step, `closed_form` the jump SequentialLR makes at a milestone."""

    def __init__(self, base_lr: float) -> None:
        self.base_lr = base_lr
        self.last_epoch = -1
        self.step_count = 0

    def chained(self, lr: float, initial: bool) -> float:
        raise NotImplementedError

    def closed_form(self) -> float:
        raise NotImplementedError

    def initial_step(self, lr: float) -> float:
        self.step_count = 0
        return self.step(lr, initial=True)

    def step(self, lr: float, initial: bool = False) -> float:
        self.step_count += 1
        self.last_epoch += 1
        return self.chained(lr, initial)

    def jump_to_start(self) -> float:
        """SequentialLR at a milestone: `scheduler._update_lr(0)`, the closed form at epoch 0 (no step counted)."""
        self.last_epoch = 0
        return self.closed_form()


class _StepLR(_Scheduler):
    def __init__(self, base_lr: float, step_size: int, gamma: float) -> None:
        super().__init__(base_lr)
        self.step_size, self.gamma = step_size, gamma

    def chained(self, lr: float, initial: bool) -> float:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma

    def closed_form(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class _ExponentialLR(_Scheduler):
    def __init__(self, base_lr: float, gamma: float) -> None:
        super().__init__(base_lr)
        self.gamma = gamma

    def chained(self, lr: float, initial: bool) -> float:
        return lr if initial else lr * self.gamma

    def closed_form(self) -> float:
        return self.base_lr * self.gamma ** self.last_epoch


class _CosineAnnealingLR(_Scheduler):
    def __init__(self, base_lr: float, t_max: int, eta_min: float) -> None:
        super().__init__(base_lr)
        self.t_max, self.eta_min = t_max, eta_min

    def chained(self, lr: float, initial: bool) -> float:
        e, t, eta = self.last_epoch, self.t_max, self.eta_min
        if initial:
            return lr
        if self.step_count == 1 and e > 0:
            return eta + (self.base_lr - eta) * (1 + math.cos(e * math.pi / t)) / 2
        if (e - 1 - t) % (2 * t) == 0:
            return lr + (self.base_lr - eta) * (1 - math.cos(math.pi / t)) / 2
        return (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t)) * (lr - eta) + eta

    def closed_form(self) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.t_max)) / 2


class _LinearLR(_Scheduler):
    def __init__(self, base_lr: float, start_factor: float, total_iters: int, end_factor: float = 1.0) -> None:
        super().__init__(base_lr)
        self.start, self.end, self.total = start_factor, end_factor, total_iters

    def chained(self, lr: float, initial: bool) -> float:
        if self.last_epoch == 0:
            return lr * self.start
        if initial or self.last_epoch > self.total:
            return lr
        return lr * (1.0 + (self.end - self.start)
                     / (self.total * self.start + (self.last_epoch - 1) * (self.end - self.start)))

    def closed_form(self) -> float:
        return self.base_lr * (self.start + (self.end - self.start) * min(self.total, self.last_epoch) / self.total)


class _ConstantLR(_Scheduler):
    def __init__(self, base_lr: float, factor: float, total_iters: int) -> None:
        super().__init__(base_lr)
        self.factor, self.total = factor, total_iters

    def chained(self, lr: float, initial: bool) -> float:
        if self.last_epoch == 0:
            return lr * self.factor
        if self.last_epoch != self.total:
            return lr
        return lr * (1.0 / self.factor)

    def closed_form(self) -> float:
        return self.base_lr * (self.factor + (self.last_epoch >= self.total) * (1 - self.factor))


def main_scheduler(name: str, lr: float, epochs: int, warmup_epochs: int, step_size: int, gamma: float,
                   lr_min: float) -> _Scheduler:
    """The main scheduler as torchvision's train.py builds it (cosine over the epochs after warmup)."""
    if name == "steplr":
        return _StepLR(lr, step_size, gamma)
    if name == "cosineannealinglr":
        return _CosineAnnealingLR(lr, epochs - warmup_epochs, lr_min)
    if name == "exponentiallr":
        return _ExponentialLR(lr, gamma)
    raise ValueError(f"unknown lr scheduler {name!r}; one of {', '.join(SCHEDULERS)}")


def warmup_scheduler(method: str, lr: float, epochs: int, decay: float) -> _Scheduler:
    if method == "linear":
        return _LinearLR(lr, decay, epochs)
    if method == "constant":
        return _ConstantLR(lr, decay, epochs)
    raise ValueError(f"unknown warmup method {method!r}; one of {', '.join(WARMUP_METHODS)}")


def lr_values(lr: float, scheduler: str, epochs: int, *, warmup_epochs: int = 0, warmup_method: str = "constant",
              warmup_decay: float = 0.01, step_size: int = 30, gamma: float = 0.1, lr_min: float = 0.0,
              count: int | None = None) -> list[float]:
    """The learning rate of epochs 0 .. count-1 (default `epochs`): the optimizer's lr after 0, 1, ... scheduler
    steps, as torch's objects set it (`SequentialLR([warmup, main], [warmup_epochs])` when warmup_epochs > 0)."""
    count = epochs if count is None else count
    main = main_scheduler(scheduler, lr, epochs, warmup_epochs, step_size, gamma, lr_min)
    if warmup_epochs <= 0:
        group_lr = main.initial_step(lr)
        step: Callable[[float], float] = main.step
    else:
        warmup = warmup_scheduler(warmup_method, lr, warmup_epochs, warmup_decay)
        # Construction: each scheduler takes its initial step in turn (the main one from the warmup's lr)...
        main.initial_step(warmup.initial_step(lr))
        # ...then SequentialLR resets the lr, undoes both steps and re-runs the warmup's initial step.
        warmup.last_epoch -= 1
        main.last_epoch -= 1
        group_lr = warmup.initial_step(lr)
        milestones, schedulers, sequential_epoch = [warmup_epochs], [warmup, main], 0

        def step(current: float) -> float:
            nonlocal sequential_epoch
            sequential_epoch += 1
            index = bisect_right(milestones, sequential_epoch)
            if index > 0 and milestones[index - 1] == sequential_epoch:
                return schedulers[index].jump_to_start()
            return schedulers[index].step(current)

    values = []
    for _ in range(count):
        values.append(group_lr)
        group_lr = step(group_lr)
    return values
