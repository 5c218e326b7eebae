"""The recipe's learning-rate schedule and optimizer in optax (see `Recipe` for the torch equivalence)."""

from __future__ import annotations

import optax

from train.recipe import Recipe


def make_schedule(recipe: Recipe) -> optax.Schedule:
    decay_steps = recipe.total_steps - recipe.warmup_steps
    if recipe.warmup_steps == 0:
        return optax.cosine_decay_schedule(recipe.lr, decay_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=recipe.lr * recipe.warmup_start_factor,
        peak_value=recipe.lr,
        warmup_steps=recipe.warmup_steps,
        decay_steps=recipe.total_steps,
        end_value=0.0,
    )


def make_optimizer(recipe: Recipe) -> optax.GradientTransformation:
    schedule = make_schedule(recipe)
    if recipe.optimizer == "adamw":
        return optax.adamw(
            schedule, b1=recipe.adam_b1, b2=recipe.adam_b2, eps=recipe.adam_eps, eps_root=0.0,
            weight_decay=recipe.weight_decay,
        )
    return optax.chain(
        optax.add_decayed_weights(recipe.weight_decay),
        optax.sgd(schedule, momentum=recipe.momentum, nesterov=recipe.nesterov),
    )
