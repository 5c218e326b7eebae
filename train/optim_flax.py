"""The recipe's learning-rate schedule and optimizer in optax (see `Recipe` for the torch equivalence)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from train.recipe import Recipe


def make_schedule(recipe: Recipe) -> optax.Schedule:
    decay_steps = recipe.total_steps - recipe.warmup_steps
    if recipe.warmup_steps == 0:
        base = optax.cosine_decay_schedule(recipe.lr, decay_steps)
    else:
        base = optax.warmup_cosine_decay_schedule(
            init_value=recipe.lr * recipe.warmup_start_factor,
            peak_value=recipe.lr,
            warmup_steps=recipe.warmup_steps,
            decay_steps=recipe.total_steps,
            end_value=0.0,
        )

    def schedule(count: jax.Array) -> jax.Array:
        # optax counts steps in int32 and its schedules then compute in float32 even under jax_enable_x64 (2e-7
        # relative off torch's double-precision lr); evaluating at the default float dtype keeps float64 runs exact.
        return base(jnp.asarray(count, dtype=jnp.result_type(float)))

    return schedule


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
