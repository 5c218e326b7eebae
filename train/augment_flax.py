"""The recipe's float-image augmentations and the EMA model inside the Flax train step, as torchvision computes them.

The pipeline draws the parameters (train/data/batch_augment.py); here they are applied on the device after
normalisation, in torchvision's order: RandomErasing per image (zeros in the normalised image), then MixUp or CutMix
per replica batch (each image with its neighbour, `roll(1)`), soft targets mixed with the same λ. torch rounds each
product of `a * x + b * y` on its own; XLA:CPU would fuse them into fused multiply-adds (one rounding, up to 1 ulp
off): `torch_rounded` keeps torch's roundings, so the results are torchvision's bit for bit
(parity_tests/test_augment_parity.py, test_recipe.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from train.data.batch_augment import CUTMIX, MIXUP

INT_OF = {jnp.dtype(jnp.float32): jnp.int32, jnp.dtype(jnp.float64): jnp.int64}


def torch_rounded(x: jax.Array, zero: jax.Array) -> jax.Array:
    """`x`, rounded on its own before any addition consumes it. `zero` must be 0 at run time but not a constant the
    compiler can see (e.g. min(step, 0)): XLA cannot fuse a multiply-add across an integer bitcast or-ed with it."""
    as_int = INT_OF[jnp.dtype(x.dtype)]
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, as_int) | zero.astype(as_int), x.dtype)


def blend(a: jax.Array, wa: jax.Array, b: jax.Array, wb: jax.Array, zero: jax.Array) -> jax.Array:
    """a * wa + b * wb with torch's roundings (each product rounded, then the sum)."""
    return torch_rounded(a * wa, zero) + torch_rounded(b * wb, zero)


def box_mask(top: jax.Array, left: jax.Array, height: jax.Array, width: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """(..., H, W) True inside [top, top + height) x [left, left + width); arguments broadcast over the leading axes."""
    rows = jnp.arange(shape[0])[:, None]
    cols = jnp.arange(shape[1])[None, :]
    top, left, height, width = (v[..., None, None] for v in (top, left, height, width))
    return (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)


def erase(images: jax.Array, boxes: jax.Array) -> jax.Array:
    """RandomErasing's `F.erase(image, i, j, h, w, v=0)` per image: NHWC images, (N, 4) int boxes (top, left, h, w;
    h = 0 leaves the image as it is)."""
    inside = box_mask(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], images.shape[1:3])
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def mix(images: jax.Array, targets: Mapping[str, jax.Array], params: Mapping[str, jax.Array], zero: jax.Array
        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MixUp or CutMix per replica: `images` (N, H, W, C) are the replicas' batches one after the other, `targets` one
    float32 one-hot (N, classes) array per head, `params` one row per replica (batch_augment.batch_mix). Returns the
    mixed images and soft targets (torchvision's float32 labels; every head mixed with the replica's λ)."""
    replicas = params["kind"].shape[0]
    n, height, width, channels = images.shape
    x = images.reshape(replicas, n // replicas, height, width, channels)
    rolled = jnp.roll(x, 1, axis=1)
    kind = params["kind"]
    lam = params["lam"].astype(x.dtype)[:, None, None, None, None]
    lam_c = params["lam_complement"].astype(x.dtype)[:, None, None, None, None]
    mixed = blend(rolled, lam_c, x, lam, zero)  # torchvision: inpt.roll(1, 0).mul_(1 - lam).add_(inpt.mul(lam))
    box = params["box"]
    inside = box_mask(box[:, 1], box[:, 0], box[:, 3] - box[:, 1], box[:, 2] - box[:, 0], (height, width))
    cut = jnp.where(inside[:, None, :, :, None], rolled, x)
    k = kind[:, None, None, None, None]
    out = jnp.where(k == MIXUP, mixed, jnp.where(k == CUTMIX, cut, x)).reshape(images.shape)
    soft = {}
    for head, t in targets.items():
        t = t.reshape(replicas, n // replicas, t.shape[-1])
        lam32 = params["lam"].astype(t.dtype)[:, None, None]
        lam_c32 = params["lam_complement"].astype(t.dtype)[:, None, None]
        mixed_t = blend(jnp.roll(t, 1, axis=1), lam_c32, t, lam32, zero)  # _mixup_label
        soft[head] = jnp.where(kind[:, None, None] > 0, mixed_t, t).reshape(n, -1)
    return out, soft


def ema_update(ema: Mapping, params: object, batch_stats: object, step: jax.Array, *, decay: float,
               steps_per_epoch: int, every: int, in_warmup: jax.Array, zero: jax.Array) -> dict:
    """torchvision's ExponentialMovingAverage after optimizer step `step` (0-based): updated when the step's index
    within its epoch is a multiple of `every`; the first update (n_averaged 0) copies; parameters and buffers alike,
    `decay * avg + (1 - decay) * value`; BatchNorm counters as torch does on an int64 buffer (float32 arithmetic,
    truncated back to an integer); during warmup n_averaged is reset to 0 after the update."""
    due = (step % steps_per_epoch) % every == 0
    copy = ema["n_averaged"] == 0

    def average(avg: jax.Array, value: jax.Array) -> jax.Array:
        if jnp.issubdtype(avg.dtype, jnp.integer):
            f = jnp.float32  # torch: decay * int64 tensor -> the default float dtype
            new = blend(avg.astype(f), jnp.asarray(decay, f), value.astype(f), jnp.asarray(1 - decay, f), zero)
            new = new.astype(avg.dtype)
        else:
            new = blend(avg, jnp.asarray(decay, avg.dtype), value, jnp.asarray(1 - decay, avg.dtype), zero)
        return jnp.where(due, jnp.where(copy, value, new), avg)

    n = jnp.where(due, jnp.where(in_warmup, 0, ema["n_averaged"] + 1), ema["n_averaged"])
    return {"params": jax.tree.map(average, ema["params"], params),
            "batch_stats": jax.tree.map(average, ema["batch_stats"], batch_stats), "n_averaged": n}
