"""The PyTorch reference training step: same loss, clipping and update as `train.step_flax`, as torchvision's
`train_one_epoch` does them (the scheduler and the EMA model step around it: train.optim_torch)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from r34.config import ResNetConfig
from train.optim_torch import clip_gradients
from train.recipe import Recipe


def heads_of(outputs: torch.Tensor | Mapping[str, torch.Tensor], config: ResNetConfig) -> dict[str, torch.Tensor]:
    return dict(outputs) if isinstance(outputs, Mapping) else {config.head_names[0]: outputs}


def total_loss(heads: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               label_smoothing: float) -> torch.Tensor:
    """Sum of the heads' mean cross-entropies; `targets` integer labels or soft targets (probabilities)."""
    total = 0
    for name, logits in heads.items():
        logits = logits.float() if logits.dtype == torch.bfloat16 else logits
        target = targets[name]
        target = target.to(logits.dtype) if target.is_floating_point() else target
        total = total + F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return total


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
    targets: Mapping[str, torch.Tensor], recipe: Recipe, autocast_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One train-mode step (forward, backward, `--clip-grad-norm`, optimizer step); returns detached metrics (loss,
    accuracy per head against the targets' argmax for soft targets, as torchvision's `utils.accuracy`).
    `autocast_dtype` (e.g. torch.bfloat16) runs the forward under autocast (AMP), the backward outside it."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        heads = heads_of(model(images), model.config)
        loss = total_loss(heads, targets, recipe.label_smoothing)
    loss.backward()
    clip_gradients(model, recipe)
    optimizer.step()
    metrics = {"loss": loss.detach()}
    for name, logits in heads.items():
        truth = targets[name].argmax(-1) if targets[name].is_floating_point() else targets[name]
        metrics[f"accuracy/{name}"] = (logits.detach().argmax(-1) == truth).float().mean()
    return metrics
