"""The recipe's optimizer, scheduler, clipping and EMA in PyTorch, built as torchvision's references build them.

The reference the optax side (train/optim_flax.py) is proven against: `torch.optim.SGD/RMSprop/AdamW` over the
parameter groups of torchvision's `utils.set_weight_decay`, `torch.optim.lr_scheduler` objects composed as its
train.py composes them (warmup through `SequentialLR`), `clip_grad_norm_`, and its `ExponentialMovingAverage` (an
`AveragedModel` over parameters and buffers). torchvision's `references/` scripts are not in the wheel, so their few
lines of composition are written here, from `../shared/RECIPE_FACTS.md`.
"""

from __future__ import annotations

import torch
from torch import nn

from train.recipe import ADAM_BETAS, ADAM_EPS, RMSPROP_ALPHA, RMSPROP_EPS, Recipe

# torchvision's set_weight_decay: the module classes whose parameters form the "norm" group.
NORM_CLASSES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                nn.LocalResponseNorm)


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """torchvision's `utils.set_weight_decay(model, wd, norm_weight_decay, custom_keys_weight_decay=[("bias", ..)])`:
    each module's own parameters, a custom key matched first, then norm layers, else "other"; non-empty groups in
    the order other, norm, custom keys."""
    custom = [("bias", recipe.bias_weight_decay)] if recipe.bias_weight_decay is not None else []
    params: dict[str, list[nn.Parameter]] = {"other": [], "norm": []}
    decays = {"other": recipe.weight_decay, "norm": recipe.norm_weight_decay}
    for key, decay in custom:
        params[key], decays[key] = [], decay

    def add(module: nn.Module, prefix: str = "") -> None:
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            key = next((k for k, _ in custom if k == (f"{prefix}.{name}" if prefix and "." in k else name)), None)
            if key is not None:
                params[key].append(p)
            elif recipe.norm_weight_decay is not None and isinstance(module, NORM_CLASSES):
                params["norm"].append(p)
            else:
                params["other"].append(p)
        for child_name, child in module.named_children():
            add(child, f"{prefix}.{child_name}" if prefix else child_name)

    add(model)
    return [{"params": params[k], "weight_decay": decays[k]} for k in params if params[k]]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """torchvision's train.py: `--opt` sgd / sgd_nesterov / rmsprop / adamw over `param_groups`."""
    groups = param_groups(model, recipe)
    if recipe.opt.startswith("sgd"):
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               nesterov=recipe.nesterov)
    if recipe.opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                   eps=RMSPROP_EPS, alpha=RMSPROP_ALPHA)
    return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=ADAM_BETAS, eps=ADAM_EPS)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    """torchvision's train.py: the main scheduler, behind `SequentialLR([warmup, main], [warmup_epochs])`; call
    `step()` once per epoch (`recipe.steps_per_iteration` optimizer steps)."""
    schedulers = torch.optim.lr_scheduler
    length = recipe.schedule_length
    if recipe.lr_scheduler == "steplr":
        main = schedulers.StepLR(optimizer, step_size=recipe.lr_step_size, gamma=recipe.lr_gamma)
    elif recipe.lr_scheduler == "cosineannealinglr":
        main = schedulers.CosineAnnealingLR(optimizer, T_max=length - recipe.lr_warmup_epochs, eta_min=recipe.lr_min)
    else:
        main = schedulers.ExponentialLR(optimizer, gamma=recipe.lr_gamma)
    if recipe.lr_warmup_epochs <= 0:
        return main
    if recipe.lr_warmup_method == "linear":
        warmup = schedulers.LinearLR(optimizer, start_factor=recipe.lr_warmup_decay,
                                     total_iters=recipe.lr_warmup_epochs)
    else:
        warmup = schedulers.ConstantLR(optimizer, factor=recipe.lr_warmup_decay, total_iters=recipe.lr_warmup_epochs)
    return schedulers.SequentialLR(optimizer, schedulers=[warmup, main], milestones=[recipe.lr_warmup_epochs])


class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """torchvision's `utils.ExponentialMovingAverage`: parameters and buffers averaged as `decay * avg + (1 - decay)
    * param`; the first update copies."""

    def __init__(self, model: nn.Module, decay: float, device: str = "cpu") -> None:
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


def update_ema(ema: ExponentialMovingAverage, model: nn.Module, recipe: Recipe, step: int) -> None:
    """After optimizer step `step` (0-based), as torchvision's train_one_epoch: every `model_ema_steps` iterations of
    the epoch (the index restarts each epoch), and during warmup the average restarts, copying the model."""
    if (step % recipe.steps_per_epoch) % recipe.model_ema_steps == 0:
        ema.update_parameters(model)
        if recipe.in_warmup(step):
            ema.n_averaged.fill_(0)


def clip_gradients(model: nn.Module, recipe: Recipe) -> None:
    """`--clip-grad-norm`: after backward, before the optimizer step."""
    if recipe.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm)
