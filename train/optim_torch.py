"""The recipe's optimizer and learning-rate scheduler in PyTorch (the reference the optax twin is tested against)."""

from __future__ import annotations

import torch

from train.recipe import Recipe


def make_optimizer(
    params, recipe: Recipe
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(optimizer, scheduler); call `scheduler.step()` after every `optimizer.step()`."""
    if recipe.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=recipe.lr, betas=(recipe.adam_b1, recipe.adam_b2), eps=recipe.adam_eps,
            weight_decay=recipe.weight_decay,
        )
    else:
        optimizer = torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
        )
    decay_steps = recipe.total_steps - recipe.warmup_steps
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=0.0)
    if recipe.warmup_steps == 0:
        return optimizer, cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=recipe.warmup_start_factor, end_factor=1.0, total_iters=recipe.warmup_steps
    )
    sequential = torch.optim.lr_scheduler.SequentialLR(
        optimizer, schedulers=[warmup, cosine], milestones=[recipe.warmup_steps]
    )
    return optimizer, sequential
