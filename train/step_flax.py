"""The Flax training step: a pure function of (state, batch), jitted once with explicit shardings and the
state donated. Batch sharded over a 1-D "data" mesh, parameters and optimizer state replicated; BatchNorm means
over the sharded batch are global, so N devices compute what one device computes on the same global batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r34.config import ResNetConfig
from r34_flax.model import ResNet

Labels = Mapping[str, jax.Array]  # head name -> integer labels, one entry per head ("fc" for single-head models)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState


def split_model(model: ResNet) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(train-mode graphdef, params, batch stats): everything the step needs, as pytrees."""
    model.train()
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, params, batch_stats


def init_train_state(
    model: ResNet, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, state) with the state replicated on `mesh`: placed where the jitted step wants it, so the first
    call compiles the same program every later call runs."""
    graphdef, params, batch_stats = split_model(model)
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))
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


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Mean cross-entropy with torch.nn.functional.cross_entropy's label smoothing ((1-e) one-hot + e/K)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def total_loss(heads: Mapping[str, jax.Array], labels: Labels, label_smoothing: float) -> jax.Array:
    """Sum of the heads' mean cross-entropies (for grapheme34 as in the Bengali.AI starter models)."""
    return sum(cross_entropy(heads[name].astype(jnp.float32) if heads[name].dtype == jnp.bfloat16 else heads[name],
                             labels[name], label_smoothing) for name in heads)


def loss_fn(
    params: nnx.State, batch_stats: nnx.State, graphdef: nnx.GraphDef, images: jax.Array, labels: Labels,
    label_smoothing: float,
) -> tuple[jax.Array, tuple[nnx.State, dict[str, jax.Array]]]:
    """(loss, (updated batch stats, logits per head)) of a train-mode forward."""
    # copy=True: fresh Variables in this trace; the State's own Variables belong to the enclosing jit trace and
    # BatchNorm's statistic updates would be refused there.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    heads = heads_of(model(images), model.config)
    return total_loss(heads, labels, label_smoothing), (nnx.state(model, nnx.BatchStat), heads)


def train_step(
    state: TrainState, images: jax.Array, labels: Labels, *, graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation, label_smoothing: float, skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (batch_stats, heads)), grads = grad_fn(state.params, state.batch_stats, graphdef, images, labels,
                                                  label_smoothing)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss}
    for name, logits in heads.items():
        metrics[f"accuracy/{name}"] = jnp.mean(jnp.argmax(logits, -1) == labels[name])
    new = TrainState(state.step + 1, params, batch_stats, opt_state)
    if skip_nonfinite:
        # A step with a NaN/Inf loss or gradient leaves params, statistics and optimizer state as they were; its
        # batch is consumed (the step counter moves on), and the step is counted in metrics["skipped"].
        ok = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        keep = lambda n, o: jnp.where(ok, n, o)  # noqa: E731
        new = TrainState(new.step, *(jax.tree.map(keep, n, o) for n, o in (
            (params, state.params), (batch_stats, state.batch_stats), (opt_state, state.opt_state))))
        metrics["skipped"] = (~ok).astype(jnp.int32)
    return new, metrics


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: every device JAX sees, all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(devices, ("data",))


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, label_smoothing: float, mesh: Mesh,
    skip_nonfinite: bool = False, input_table: np.ndarray | None = None,
) -> Callable[[TrainState, jax.Array, Labels], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted step: `state, metrics = step(state, images, labels)`; `state` is donated. With `input_table`
    the images are the pipeline's uint8 batches, normalised on the device (`normalize_images`)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))

    def step(state: TrainState, images: jax.Array, labels: Labels) -> tuple[TrainState, dict[str, jax.Array]]:
        return train_step(state, normalize_images(images, input_table), labels, graphdef=graphdef, tx=tx,
                          label_smoothing=label_smoothing, skip_nonfinite=skip_nonfinite)

    return jax.jit(
        step,
        in_shardings=(replicated, batch, batch),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
