"""The PyTorch reference training step: same loss and update as `train.step_flax`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from r34.config import ResNetConfig


def heads_of(outputs: torch.Tensor | Mapping[str, torch.Tensor], config: ResNetConfig) -> dict[str, torch.Tensor]:
    return dict(outputs) if isinstance(outputs, Mapping) else {config.head_names[0]: outputs}


def total_loss(heads: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
               label_smoothing: float) -> torch.Tensor:
    """Sum of the heads' mean cross-entropies."""
    return sum(F.cross_entropy(heads[n].float() if heads[n].dtype == torch.bfloat16 else heads[n], labels[n],
                               label_smoothing=label_smoothing) for n in heads)


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor, labels: Mapping[str, torch.Tensor], label_smoothing: float,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One train-mode step; returns detached metrics (loss, accuracy per head). `autocast_dtype` (e.g.
    torch.bfloat16) runs the forward under autocast (AMP), the backward outside it as torch recommends."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        heads = heads_of(model(images), model.config)
        loss = total_loss(heads, labels, label_smoothing)
    loss.backward()
    optimizer.step()
    scheduler.step()
    metrics = {"loss": loss.detach()}
    for name, logits in heads.items():
        metrics[f"accuracy/{name}"] = (logits.detach().argmax(-1) == labels[name]).float().mean()
    return metrics
