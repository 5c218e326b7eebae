"""The Flax training step: a pure function of (state, batch), jitted once with explicit shardings and the
state donated. Batch sharded over a 1-D "data" mesh, parameters, optimizer and EMA state replicated; BatchNorm
means over the sharded batch are global, so N devices compute what one device computes on the same global batch.
The recipe's float augmentations (RandomErasing, MixUp/CutMix) and the EMA model are part of the step
(train/augment_flax.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r34.config import ResNetConfig
from r34_flax.model import ResNet
from train import augment_flax
from train.recipe import Recipe

Labels = Mapping[str, jax.Array]  # head name -> integer labels, one entry per head ("fc" for single-head models)
# head name -> integer labels, or (with MixUp/CutMix) float probability vectors, torchvision's soft targets
Targets = Mapping[str, jax.Array]
Augment = Mapping[str, Any]  # the batch's drawn augmentation parameters ("erase", "mix"; train/data/batch_augment.py)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    # torchvision's EMA model: {"params", "batch_stats", "n_averaged"}; empty without --model-ema
    ema: dict = flax.struct.field(default_factory=dict)


def split_model(model: ResNet) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(train-mode graphdef, params, batch stats): everything the step needs, as pytrees."""
    model.train()
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, params, batch_stats


def init_train_state(
    model: ResNet, tx: optax.GradientTransformation, mesh: Mesh, ema: bool = False
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, state) with the state replicated on `mesh`: placed where the jitted step wants it, so the first
    call compiles the same program every later call runs. `ema`: keep torchvision's EMA model (a copy, never
    averaged yet)."""
    graphdef, params, batch_stats = split_model(model)
    average = ({"params": jax.tree.map(jnp.copy, params), "batch_stats": jax.tree.map(jnp.copy, batch_stats),
                "n_averaged": jnp.zeros((), jnp.int32)} if ema else {})
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params), average)
    return graphdef, jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


def shard_batch(tree: object, mesh: Mesh) -> object:
    """Put host arrays of a global batch on `mesh`, split along the batch axis (single-process helper)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("data")))


def normalize_images(images: jax.Array, table: jax.Array | None) -> jax.Array:
    """uint8 NHWC -> float32 through `table` (channels, 256), the pipeline's exact normalisation
    (train.data.transforms.normalization_table); float images (table None) pass unchanged."""
    if table is None:
        return images
    return jnp.asarray(table)[jnp.arange(table.shape[0]), images.astype(jnp.int32)]


def heads_of(outputs: jax.Array | Mapping[str, jax.Array], config: ResNetConfig) -> dict[str, jax.Array]:
    return dict(outputs) if isinstance(outputs, Mapping) else {config.head_names[0]: outputs}


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
    """Mean cross-entropy as torch.nn.functional.cross_entropy computes it, label smoothing ((1-e) target + e/K)
    included: `targets` are integer labels or probability vectors (MixUp/CutMix's soft targets)."""
    if jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    targets = optax.smooth_labels(targets.astype(logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def total_loss(heads: Mapping[str, jax.Array], targets: Targets, label_smoothing: float) -> jax.Array:
    """Sum of the heads' mean cross-entropies (for grapheme34 as in the Bengali.AI starter models)."""
    return sum(cross_entropy(heads[name].astype(jnp.float32) if heads[name].dtype == jnp.bfloat16 else heads[name],
                             targets[name], label_smoothing) for name in heads)


def loss_fn(
    params: nnx.State, batch_stats: nnx.State, graphdef: nnx.GraphDef, images: jax.Array, labels: Targets,
    label_smoothing: float,
) -> tuple[jax.Array, tuple[nnx.State, dict[str, jax.Array]]]:
    """(loss, (updated batch stats, logits per head)) of a train-mode forward."""
    # copy=True: fresh Variables in this trace; the State's own Variables belong to the enclosing jit trace and
    # BatchNorm's statistic updates would be refused there.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    heads = heads_of(model(images), model.config)
    return total_loss(heads, labels, label_smoothing), (nnx.state(model, nnx.BatchStat), heads)


def train_step(
    state: TrainState, images: jax.Array, targets: Targets, *, graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation, recipe: Recipe, skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on normalised (and augmented) `images`; `targets` integer labels or soft targets."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (batch_stats, heads)), grads = grad_fn(state.params, state.batch_stats, graphdef, images, targets,
                                                  recipe.label_smoothing)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss}
    for name, logits in heads.items():
        # torchvision's accuracy on soft targets compares with their argmax
        truth = targets[name] if jnp.issubdtype(targets[name].dtype, jnp.integer) else jnp.argmax(targets[name], -1)
        metrics[f"accuracy/{name}"] = jnp.mean(jnp.argmax(logits, -1) == truth)
    ema = state.ema
    if ema:
        ema = augment_flax.ema_update(
            ema, params, batch_stats, state.step, decay=recipe.ema_decay, steps_per_epoch=recipe.steps_per_epoch,
            every=recipe.model_ema_steps, in_warmup=state.step // recipe.steps_per_iteration < recipe.lr_warmup_epochs,
            zero=jnp.minimum(state.step, 0))
    new = TrainState(state.step + 1, params, batch_stats, opt_state, ema)
    if skip_nonfinite:
        # A step with a NaN/Inf loss or gradient leaves params, statistics, optimizer and EMA state as they were;
        # its batch is consumed (the step counter moves on), and the step is counted in metrics["skipped"].
        ok = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        keep = lambda n, o: jnp.where(ok, n, o)  # noqa: E731
        new = TrainState(new.step, *(jax.tree.map(keep, n, o) for n, o in (
            (params, state.params), (batch_stats, state.batch_stats), (opt_state, state.opt_state),
            (ema, state.ema))))
        metrics["skipped"] = (~ok).astype(jnp.int32)
    return new, metrics


def augment_batch(images: jax.Array, labels: Labels, augment: Augment, heads: Mapping[str, int],
                  zero: jax.Array) -> tuple[jax.Array, Targets]:
    """torchvision's order after normalisation: RandomErasing per image, then MixUp/CutMix (soft targets)."""
    if "erase" in augment:
        images = augment_flax.erase(images, augment["erase"])
    if "mix" not in augment:
        return images, labels
    one_hot = {name: jax.nn.one_hot(labels[name], heads[name], dtype=jnp.float32) for name in labels}
    return augment_flax.mix(images, one_hot, augment["mix"], zero)


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: every device JAX sees, all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(devices, ("data",))


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, recipe: Recipe, mesh: Mesh,
    skip_nonfinite: bool = False, input_table: np.ndarray | None = None,
) -> "TrainStep":
    """The jitted step: `state, metrics = step(state, images, labels, augment={})`; `state` is donated. With
    `input_table` the images are the pipeline's uint8 batches, normalised on the device (`normalize_images`);
    `augment` holds the batch's drawn RandomErasing boxes (sharded with the images) and MixUp/CutMix parameters
    (one row per replica, replicated)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))

    def step(state: TrainState, images: jax.Array, labels: Labels,
             augment: Augment) -> tuple[TrainState, dict[str, jax.Array]]:
        heads = dict(nnx.merge(graphdef, state.params, state.batch_stats, copy=True).config.heads)
        x, targets = augment_batch(normalize_images(images, input_table), labels, augment, heads,
                                   zero=jnp.minimum(state.step, 0))
        return train_step(state, x, targets, graphdef=graphdef, tx=tx, recipe=recipe, skip_nonfinite=skip_nonfinite)

    return TrainStep(step, {"erase": batch, "mix": replicated}, (replicated, batch, batch), replicated)


class TrainStep:
    """The jitted step, one program for a run: `step(state, images, labels, augment=None)`, `step.lower(...)` (as
    jax.jit's). A run's batches all carry the same augmentation parameters (none, erasing boxes, MixUp/CutMix
    draws), which fix the program's input shardings on the first call."""

    def __init__(self, fn: Callable, augment_shardings: dict, shardings: tuple, replicated: NamedSharding) -> None:
        self.fn, self.augment_shardings, self.shardings, self.replicated = fn, augment_shardings, shardings, replicated
        self.programs: dict[tuple[str, ...], Any] = {}

    def jitted(self, augment: Augment) -> Any:
        keys = tuple(sorted(augment))
        if keys not in self.programs:
            in_shardings = (*self.shardings, {k: self.augment_shardings[k] for k in keys})
            self.programs[keys] = jax.jit(self.fn, in_shardings=in_shardings,
                                          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
        return self.programs[keys]

    def __call__(self, state: TrainState, images: jax.Array, labels: Labels,
                 augment: Augment | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
        augment = augment or {}
        return self.jitted(augment)(state, images, labels, augment)

    def lower(self, state: TrainState, images: jax.Array, labels: Labels, augment: Augment | None = None) -> Any:
        augment = augment or {}
        return self.jitted(augment).lower(state, images, labels, augment)

