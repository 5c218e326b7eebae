"""The recipe's optimizer and learning-rate schedule in optax, each transformation placed where torch computes it.

- the schedule: torch's per-epoch values (train/schedules.py, exact), looked up at `step // steps_per_epoch`;
- `--clip-grad-norm`: torch's `clip_grad_norm_` (total norm of the per-tensor norms, `max / (norm + 1e-6)` clamped to
  1) on the raw gradients, before weight decay, as torchvision clips before `optimizer.step()`;
- SGD and RMSprop: weight decay per group added to the gradient (torch's L2), then momentum (`optax.trace`: torch's
  buffer, Nesterov `g + m * buf`) or RMSprop's scaling (`scale_by_rms`, eps outside the square root), then `-lr`;
- AdamW: Adam's moments, decoupled weight decay per group, then `-lr` (torch's `p *= 1 - lr * wd` times the same lr).
Weight decay groups follow torchvision's `set_weight_decay` (train.recipe.decay_group), read off the conversion table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r34.config import ResNetConfig
from r34_flax.conversion import conversion_table
from train.recipe import ADAM_BETAS, ADAM_EPS, RMSPROP_ALPHA, RMSPROP_EPS, Recipe, decay_group, group_decay


def make_schedule(recipe: Recipe) -> optax.Schedule:
    """The learning rate at optimizer step `count`: torch's value for epoch `count // steps_per_epoch` (or for step
    `count` with schedule_unit "step")."""
    table = np.asarray(recipe.lr_per_epoch())
    steps_per_iteration = recipe.steps_per_iteration

    def schedule(count: jax.Array) -> jax.Array:
        # At the default float dtype: float64 runs use torch's double values exactly, float32 runs their rounding.
        values = jnp.asarray(table, dtype=jnp.result_type(float))
        return values[jnp.minimum(jnp.asarray(count) // steps_per_iteration, len(table) - 1)]

    return schedule


def decay_groups(config: ResNetConfig, recipe: Recipe) -> dict[tuple, str]:
    """Each parameter's weight-decay group by its Flax path, as torchvision's set_weight_decay assigns it."""
    return {entry.flax_path: decay_group(entry.kind, entry.torch_key.rsplit(".", 1)[-1], recipe)
            for entry in conversion_table(config) if not entry.buffer}


def group_mask(groups: Mapping[tuple, str], group: str):
    """An optax mask (a function of the parameter tree) selecting the parameters of `group`."""

    def mask(params: Any) -> Any:
        def member(path: tuple, _: Any) -> bool:
            return groups[tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))] == group

        return jax.tree_util.tree_map_with_path(member, params)

    return mask


class ClipState(NamedTuple):
    pass


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: total = norm of the per-tensor 2-norms; grads *= min(1, max / (total + 1e-6))."""

    def update(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        total = jnp.linalg.norm(jnp.stack([jnp.linalg.norm(g.ravel()) for g in leaves]))
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: ClipState(), update)


def make_optimizer(recipe: Recipe, config: ResNetConfig) -> optax.GradientTransformation:
    """The recipe's optimizer for the parameters of a model of `config` (an nnx.State of its nnx.Param)."""
    schedule = make_schedule(recipe)
    groups = decay_groups(config, recipe)
    decays = group_decay(recipe)

    def weight_decay() -> list[optax.GradientTransformation]:
        # A group without decay adds nothing (0 * p): left out.
        return [optax.add_decayed_weights(decays[g], mask=group_mask(groups, g)) for g in decays if decays[g] != 0.0]

    head = [clip_grad_norm(recipe.clip_grad_norm)] if recipe.clip_grad_norm is not None else []
    if recipe.opt == "adamw":
        b1, b2 = ADAM_BETAS
        return optax.chain(*head, optax.scale_by_adam(b1, b2, ADAM_EPS, eps_root=0.0), *weight_decay(),
                           optax.scale_by_learning_rate(schedule))
    if recipe.opt == "rmsprop":
        momentum = [optax.trace(recipe.momentum)] if recipe.momentum else []
        return optax.chain(*head, *weight_decay(),
                           optax.scale_by_rms(RMSPROP_ALPHA, RMSPROP_EPS, initial_scale=0.0, eps_in_sqrt=False),
                           *momentum, optax.scale_by_learning_rate(schedule))
    momentum = [optax.trace(recipe.momentum, nesterov=recipe.nesterov)] if recipe.momentum else []
    return optax.chain(*head, *weight_decay(), *momentum, optax.scale_by_learning_rate(schedule))
