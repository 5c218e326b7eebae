"""Both twins set up to train from identical weights on identical batches, for the training-parity tests."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx, traverse_util

from parity_tests.helpers import nchw_to_nhwc, torch_model
from parity_tests.roundings import DEFAULT, Rounding
from r34.config import ResNetConfig
from r34_flax import flax_to_torch, from_torch
from r34_flax.model import ResNet
from train import optim_torch, step_flax, step_torch
from train.recipe import Recipe

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass
class Batch:
    """One batch in both layouts: torch NCHW tensors and NHWC JAX arrays, labels per head."""

    torch_images: torch.Tensor
    torch_labels: dict[str, torch.Tensor]
    flax_images: jax.Array
    flax_labels: dict[str, jax.Array]


def make_batches(config: ResNetConfig, n: int, batch: int, size: int, dtype: str, seed: int,
                 rounding: Rounding = DEFAULT) -> list[Batch]:
    """`n` batches of standard normal images and uniform labels; `rounding` may nudge the images by an ulp."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        x = rounding.nudge(rng.standard_normal((batch, config.in_channels, size, size)).astype(dtype), 1000 + k)
        labels = {name: rng.integers(0, classes, batch) for name, classes in config.heads}
        out.append(Batch(
            rounding.torch_images(torch.from_numpy(x)),
            {k: torch.from_numpy(v) for k, v in labels.items()},
            jnp.asarray(nchw_to_nhwc(x)),
            {k: jnp.asarray(v.astype(np.int32)) for k, v in labels.items()},
        ))
    return out


def twins(config: ResNetConfig, dtype: str, seed: int,
          rounding: Rounding = DEFAULT) -> tuple[torch.nn.Module, ResNet]:
    """(torch twin, flax twin) with the same weights and randomised BN state; call under `precision(dtype)`.
    `rounding` may nudge the weights (both twins alike) and set the torch twin's memory format."""
    ref = rounding.torch_model(torch_twin(config, dtype, seed))
    return ref, from_torch(ref.state_dict(), config)


def torch_twin(config: ResNetConfig, dtype: str, seed: int) -> torch.nn.Module:
    """The torch side of `twins` alone (the float64 conditioning runs need no Flax model)."""
    return torch_model(config, seed).to(TORCH_DTYPES[dtype])


@dataclasses.dataclass
class Gradients:
    """One train-mode forward and backward: the loss, every parameter's gradient and the logits per head (torch's
    names and layouts), and the BatchNorm running statistics that forward left (`running_*`, num_batches_tracked)."""

    loss: float
    grads: dict[str, torch.Tensor]
    heads: dict[str, np.ndarray]
    statistics: dict[str, torch.Tensor]


def torch_grads(model: torch.nn.Module, batch: Batch, label_smoothing: float = 0.0) -> Gradients:
    model.train()
    model.zero_grad(set_to_none=True)
    heads = step_torch.heads_of(model(batch.torch_images), model.config)
    loss = step_torch.total_loss(heads, batch.torch_labels, label_smoothing)
    loss.backward()
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches_tracked" in k}
    return Gradients(loss.item(), {k: p.grad.detach().clone() for k, p in model.named_parameters()},
                     {k: v.detach().numpy().copy() for k, v in heads.items()}, statistics)


def flax_grads(model: ResNet, batch: Batch, label_smoothing: float = 0.0) -> Gradients:
    """The same through the trainer's own loss function, as one jitted call (its train-mode logits and BatchNorm
    statistics are the loss function's auxiliary outputs)."""
    graphdef, params, batch_stats = step_flax.split_model(model)
    # Jitted: one compile is faster than dispatching every primitive of the backward pass eagerly.
    grad_fn = jax.jit(jax.value_and_grad(step_flax.loss_fn, has_aux=True), static_argnums=(2, 5))
    (loss, (statistics, heads)), grads = grad_fn(params, batch_stats, graphdef, batch.flax_images, batch.flax_labels,
                                                 label_smoothing)

    def as_torch(tree: nnx.State) -> dict[str, torch.Tensor]:
        return flax_to_torch(traverse_util.flatten_dict(nnx.to_pure_dict(tree)), model.config, partial=True)

    return Gradients(float(loss), as_torch(grads), {k: np.asarray(v) for k, v in heads.items()},
                     as_torch(statistics))


def state_as_torch(state: step_flax.TrainState, graphdef: nnx.GraphDef) -> dict[str, torch.Tensor]:
    """A Flax TrainState's model (params and BN statistics) as a torch state_dict."""
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    return flax_to_torch(flat, model.config)


def torch_trajectory(model: torch.nn.Module, recipe: Recipe,
                     batches: list[Batch]) -> tuple[np.ndarray, list[dict[str, torch.Tensor]], list[float]]:
    """The torch trainer's steps over `batches`: (loss per step, state_dict after each step, lr of each step); the
    scheduler steps every `recipe.steps_per_iteration` optimizer steps, as the trainer's loop steps it."""
    optimizer = optim_torch.make_optimizer(model, recipe)
    scheduler = optim_torch.make_scheduler(optimizer, recipe)
    losses, states, lrs = [], [], []
    for k, batch in enumerate(batches):
        lrs.append(optimizer.param_groups[0]["lr"])
        losses.append(step_torch.train_step(model, optimizer, batch.torch_images, batch.torch_labels,
                                            recipe)["loss"].item())
        if (k + 1) % recipe.steps_per_iteration == 0:
            scheduler.step()
        states.append({name: t.clone() for name, t in model.state_dict().items()})
    return np.array(losses), states, lrs


def nudge_(tensors: list[torch.Tensor], relative: float, seed: int) -> None:
    """Multiply every element of `tensors` by 1 +- `relative` (random signs, seeded), in place: a float64 run that
    differs from the exact one by a rounding-sized change, to measure how sensitive a result is to rounding."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for tensor in tensors:
            signs = rng.integers(0, 2, tensor.shape, dtype=np.int8) * 2 - 1  # 20x faster than choice: 127M weights
            tensor.mul_(torch.from_numpy(1 + relative * signs.astype(np.float64)))
