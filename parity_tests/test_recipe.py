"""torchvision's training recipe in both trainers, proven equal (issue 25): learning rates, optimizer steps with
weight-decay groups and clipping, the EMA model, MixUp/CutMix/RandomErasing, repeated augmentation, and a 10-step
trajectory of a V2-style recipe through both trainers' step functions, each ingredient's bug caught.

The torch side is built from torch's and torchvision's own objects (train/optim_torch.py, train/augment_torch.py);
the Flax side is optax/JAX (train/optim_flax.py, train/augment_flax.py, train/step_flax.py).
"""

from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx, traverse_util

from parity_tests.helpers import max_rel, precision, torch_model
from parity_tests.train_twins import state_as_torch
from parity_tests.tolerances import F64_TRAJECTORY
from r34 import get_preset
from r34_flax import flax_to_torch, from_torch
from r34_flax.conversion import conversion_table
from train import augment_flax, augment_torch, optim_flax, optim_torch, step_flax, step_torch
from train.data import batch_augment
from train.recipe import Recipe, group_decay
from train.schedules import SCHEDULERS, WARMUP_METHODS

TINY = get_preset("tiny")


# ------------------------------------------------------------------------------------------- learning rates


def torch_trainer_lrs(recipe: Recipe, resume_at: int | None = None) -> list[float]:
    """The lr of every optimizer step as train.torch's loop sets it (scheduler stepped every epoch); with
    `resume_at`, the run is checkpointed after that many steps and resumed from the checkpoint into new objects."""
    model = torch.nn.Linear(1, 1)
    optimizer = optim_torch.make_optimizer(model, recipe)
    scheduler = optim_torch.make_scheduler(optimizer, recipe)
    lrs = []
    for step in range(recipe.steps):
        if step == resume_at:
            saved = {"optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()}
            model = torch.nn.Linear(1, 1)
            optimizer = optim_torch.make_optimizer(model, recipe)
            scheduler = optim_torch.make_scheduler(optimizer, recipe)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["lr_scheduler"])
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if (step + 1) % recipe.steps_per_iteration == 0:
            scheduler.step()
    return lrs


LR_RECIPES = [
    Recipe(lr=lr, lr_scheduler=scheduler, lr_warmup_epochs=warmup, lr_warmup_method=method, epochs=epochs,
           steps_per_epoch=3, lr_step_size=2, lr_gamma=0.7 if scheduler == "exponentiallr" else 0.1, lr_min=lr_min,
           lr_warmup_decay=0.01 if method == "linear" else 0.3)
    for scheduler, method, warmup, (lr, lr_min), epochs in itertools.product(
        SCHEDULERS, WARMUP_METHODS, (0, 2), ((0.5, 0.0), (0.1, 1e-4)), (7,))
] + [Recipe(lr=2e-3, opt="adamw", lr_scheduler="cosineannealinglr", lr_warmup_epochs=3, lr_warmup_method="linear",
            lr_warmup_decay=0.1, epochs=10, steps_per_epoch=1, schedule_unit="step")]


@pytest.mark.parametrize("recipe", LR_RECIPES, ids=lambda r: f"{r.lr_scheduler}-{r.lr_warmup_method}"
                         f"{r.lr_warmup_epochs}-lr{r.lr}-min{r.lr_min}-{r.schedule_unit}")
def test_learning_rate_of_every_step_equals_torchs_schedulers(recipe: Recipe) -> None:
    """Every optimizer step's lr, over 7 epochs of 3 steps, resumed mid-epoch too: torch's objects (composed as
    torchvision composes them, stepped once per epoch) against the optax schedule, bit for bit."""
    expected = torch_trainer_lrs(recipe)
    assert torch_trainer_lrs(recipe, resume_at=4) == expected  # resumed mid-epoch 1
    with jax.enable_x64(True):
        schedule = optim_flax.make_schedule(recipe)
        optax_lrs = [float(schedule(k)) for k in range(recipe.steps)]
    assert optax_lrs == expected
    assert [recipe.lr_at(k) for k in range(recipe.steps)] == expected
    if recipe.schedule_unit == "epoch":  # constant within an epoch, torchvision's granularity
        assert all(len(set(expected[e * 3:(e + 1) * 3])) == 1 for e in range(recipe.epochs))
        assert len(set(expected)) > recipe.epochs // 2  # and it moves between epochs


def test_per_step_schedule_is_caught() -> None:
    """Stepping the scheduler every optimizer step (a different recipe) fails the comparison."""
    recipe = LR_RECIPES[5]
    expected = torch_trainer_lrs(recipe)
    per_step = recipe.replace(schedule_unit="step", epochs=recipe.steps, steps_per_epoch=1)
    with jax.enable_x64(True):
        schedule = optim_flax.make_schedule(per_step)
        assert [float(schedule(k)) for k in range(recipe.steps)] != expected


# ------------------------------------------------------------------------------------------ optimizer steps


OPTIMIZER_RECIPES = {
    "sgd": Recipe(opt="sgd", lr=0.1, momentum=0.9, weight_decay=0.05, norm_weight_decay=0.0),
    "sgd_nesterov": Recipe(opt="sgd_nesterov", lr=0.1, weight_decay=0.05, bias_weight_decay=0.2,
                           norm_weight_decay=0.01),
    "rmsprop": Recipe(opt="rmsprop", lr=0.01, momentum=0.9, weight_decay=0.05, norm_weight_decay=0.0),
    "adamw": Recipe(opt="adamw", lr=0.01, weight_decay=0.05, norm_weight_decay=0.0, bias_weight_decay=0.1),
    "sgd-clipped": Recipe(opt="sgd", lr=0.1, weight_decay=0.05, norm_weight_decay=0.0, clip_grad_norm=0.5),
}


TABLE = {entry.flax_path: entry for entry in conversion_table(TINY)}


def as_torch(tree: nnx.State) -> dict[str, torch.Tensor]:
    """A Flax parameter-shaped tree (parameters, gradients, optimizer moments) under torch's names and layouts."""
    return flax_to_torch(traverse_util.flatten_dict(nnx.to_pure_dict(tree)), TINY, partial=True)


def as_flax(tensors: dict[str, torch.Tensor], like: nnx.State) -> nnx.State:
    """Torch-named tensors in the structure and layouts of the Flax tree `like`."""
    def leaf(path: tuple, _: jax.Array) -> jax.Array:
        entry = TABLE[tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))]
        return jnp.asarray(entry.layout.to_flax(tensors[entry.torch_key].numpy()))

    return jax.tree_util.tree_map_with_path(leaf, like)


# torch's optimizer state -> the optax state holding the same numbers
STATE_FIELDS = {optax.TraceState: {"trace": "momentum_buffer"},
                optax.ScaleByAdamState: {"mu": "exp_avg", "nu": "exp_avg_sq"},
                optax.ScaleByRmsState: {"nu": "square_avg"}}


@pytest.mark.parametrize("name", OPTIMIZER_RECIPES)
def test_optimizer_steps_with_weight_decay_groups_equal_torchs(name: str) -> None:
    """Three steps of each --opt with its weight-decay groups (and --clip-grad-norm, clipping) from the same
    gradients: parameters and optimizer state equal torch's in float64, and the groups are torchvision's
    set_weight_decay's."""
    recipe = OPTIMIZER_RECIPES[name]
    with precision("float64"):
        model = torch_model(TINY, seed=0).double()
        _, params, _ = nnx.split(from_torch(model.state_dict(), TINY), nnx.Param, nnx.BatchStat)
        optimizer = optim_torch.make_optimizer(model, recipe)
        names = {id(p): n for n, p in model.named_parameters()}
        torch_groups = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        decays = group_decay(recipe)
        flax_groups = {TABLE[path].torch_key: decays[g] for path, g in optim_flax.decay_groups(TINY, recipe).items()}
        assert torch_groups == flax_groups
        tx = optim_flax.make_optimizer(recipe, TINY)
        opt_state = tx.init(params)
        rng = np.random.default_rng(1)
        clipped = []
        for step in range(3):
            grads = {n: torch.from_numpy(rng.standard_normal(p.shape) * (1 + step))
                     for n, p in model.named_parameters()}
            for n, p in model.named_parameters():
                p.grad = grads[n].clone()
            optim_torch.clip_gradients(model, recipe)
            clipped.append(any(not torch.equal(p.grad, grads[n]) for n, p in model.named_parameters()))
            optimizer.step()
            updates, opt_state = tx.update(as_flax(grads, params), opt_state, params)
            params = optax.apply_updates(params, updates)
            got = as_torch(params)
            for key, value in model.named_parameters():
                assert max_rel(value.detach().numpy(), got[key].numpy()) <= F64_TRAJECTORY, (name, step, key)
            compared = 0
            for node in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: type(x) in STATE_FIELDS):
                for field, torch_field in STATE_FIELDS.get(type(node), {}).items():
                    mine = as_torch(getattr(node, field))
                    for key, p in model.named_parameters():
                        theirs = optimizer.state[p][torch_field].numpy()
                        assert max_rel(theirs, mine[key].numpy()) <= F64_TRAJECTORY, (name, step, field, key)
                    compared += 1
            assert compared == {"sgd": 1, "sgd_nesterov": 1, "rmsprop": 2, "adamw": 2, "sgd-clipped": 1}[name]
    assert all(clipped) == (recipe.clip_grad_norm is not None)  # the clipped case clips every step, the others none


# ---------------------------------------------------------------------------------------------------- EMA


EMA_RECIPE = Recipe(model_ema=True, model_ema_steps=2, model_ema_decay=0.99, ema_global_batch=8, epochs=5,
                    steps_per_epoch=3, lr_warmup_epochs=2)


def ema_runs(recipe: Recipe, dtype: str, steps: int = 12) -> list[tuple[dict, dict]]:
    """torchvision's ExponentialMovingAverage (train/optim_torch.py) and the Flax step's EMA update following the
    same model states (random moves of every parameter and statistic, counters +1 a step): their state_dicts."""
    out = []
    with precision(dtype):
        model = torch_model(TINY, seed=2).to(getattr(torch, dtype))
        ema = optim_torch.ExponentialMovingAverage(model, recipe.ema_decay)
        graphdef, params, stats = nnx.split(from_torch(model.state_dict(), TINY), nnx.Param, nnx.BatchStat)
        state = {"params": params, "batch_stats": stats, "n_averaged": jnp.zeros((), jnp.int32)}
        update = jax.jit(lambda e, p, s, step: augment_flax.ema_update(
            e, p, s, step, decay=recipe.ema_decay, steps_per_epoch=recipe.steps_per_epoch,
            every=recipe.model_ema_steps, in_warmup=step // recipe.steps_per_iteration < recipe.lr_warmup_epochs,
            zero=jnp.minimum(step, 0)))
        rng = np.random.default_rng(3)
        for step in range(steps):
            with torch.no_grad():
                for name, value in model.state_dict().items():
                    if value.is_floating_point():
                        value.add_(torch.from_numpy(rng.standard_normal(value.shape)).to(value.dtype) * 0.1)
                    else:
                        value.add_(1)
            optim_torch.update_ema(ema, model, recipe, step)
            _, params, stats = nnx.split(from_torch(model.state_dict(), TINY), nnx.Param, nnx.BatchStat)
            state = update(state, params, stats, jnp.int32(step))
            average = nnx.state(nnx.merge(graphdef, state["params"], state["batch_stats"]))
            mine = flax_to_torch(traverse_util.flatten_dict(nnx.to_pure_dict(average)), TINY)
            mine["n_averaged"] = torch.tensor(int(state["n_averaged"]))
            theirs = {k: v.clone() for k, v in ema.module.state_dict().items()}
            theirs["n_averaged"] = ema.n_averaged.clone()
            out.append((theirs, mine))
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ema_parameters_and_buffers_equal_torchvisions(dtype: str) -> None:
    """12 steps of 3-step epochs, update every 2 iterations of an epoch, 2 warmup epochs (the average restarts
    after each update): every parameter, running statistic, BatchNorm counter and n_averaged equal torchvision's
    EMA bit for bit, float32 included (each product rounded as torch rounds it)."""
    runs = ema_runs(EMA_RECIPE, dtype)
    for step, (theirs, mine) in enumerate(runs):
        for key, value in theirs.items():
            assert torch.equal(value.to(mine[key].dtype), mine[key]), (dtype, step, key)
    averaged = [int(theirs["n_averaged"]) for theirs, _ in runs]
    assert averaged == [0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 4], averaged  # reset in warmup, then counting


def test_ema_without_warmup_reset_is_caught() -> None:
    """An EMA that keeps averaging through the warmup epochs leaves torchvision's."""
    runs = ema_runs(EMA_RECIPE, "float64")
    with mock.patch.object(augment_flax, "ema_update", no_warmup_reset(augment_flax.ema_update)):
        bug = ema_runs(EMA_RECIPE, "float64")
    worst = max(max_rel(theirs[k].double().numpy(), mine[k].double().numpy())
                for (theirs, _), (_, mine) in zip(runs, bug) for k in theirs if theirs[k].is_floating_point())
    assert worst > 1e-3, worst


def no_warmup_reset(ema_update):
    """ema_update with the warmup reset left out (an injected bug)."""

    def buggy(*args, **kwargs):
        return ema_update(*args, **{**kwargs, "in_warmup": jnp.asarray(False)})
    return buggy


# ------------------------------------------------------------------------- a V2-style trajectory, both trainers


V2_STYLE = Recipe(opt="sgd", lr=0.05, momentum=0.9, weight_decay=0.05, norm_weight_decay=0.0, label_smoothing=0.1,
                  mixup_alpha=0.2, cutmix_alpha=1.0, lr_scheduler="cosineannealinglr", lr_warmup_epochs=1,
                  lr_warmup_method="linear", lr_warmup_decay=0.1, epochs=4, steps_per_epoch=3, total_steps=10,
                  clip_grad_norm=14.0, model_ema=True, model_ema_steps=2, model_ema_decay=0.99, ema_global_batch=8)
TRAJECTORY_STEPS, REPLICAS, REPLICA_BATCH, SIZE = 10, 2, 4, 32


def v2_batches(seed: int = 11) -> list[dict]:
    """Float64 images, labels and the drawn RandomErasing boxes (p 0.5) and MixUp/CutMix parameters per step."""
    rng = np.random.default_rng(seed)
    n = REPLICAS * REPLICA_BATCH
    out = []
    for _ in range(TRAJECTORY_STEPS):
        out.append({"image": rng.standard_normal((n, SIZE, SIZE, 3)), "labels": {"fc": rng.integers(0, 10, n)},
                    "erase": np.array([batch_augment.erase_box(rng, SIZE, SIZE, 0.5) for _ in range(n)], np.int32),
                    "mix": batch_augment.batch_mix(rng, REPLICAS, V2_STYLE.mixup_alpha, V2_STYLE.cutmix_alpha,
                                                   SIZE, SIZE)})
    return out


def torch_v2_trajectory(recipe: Recipe, batches: list[dict]) -> tuple[list, list, list, list, list]:
    """train.torch's loop over the batches: torchvision's erasing and MixUp/CutMix transforms, the step (loss,
    backward, clipping, SGD), the EMA update, the scheduler every epoch. (losses, states, EMA states, lrs, norms)."""
    model = torch_model(TINY, seed=4).double()
    optimizer = optim_torch.make_optimizer(model, recipe)
    scheduler = optim_torch.make_scheduler(optimizer, recipe)
    ema = optim_torch.ExponentialMovingAverage(model, recipe.ema_decay)
    losses, states, emas, lrs, norms = [], [], [], [], []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        norms.append(float(clip(*args, **kwargs)))
        return norms[-1]

    with mock.patch.object(torch.nn.utils, "clip_grad_norm_", recording_clip):
        for step, batch in enumerate(batches):
            images = augment_torch.erase(torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()), batch["erase"])
            labels = {h: torch.from_numpy(v) for h, v in batch["labels"].items()}
            images, targets = augment_torch.mix(images, labels, batch["mix"], dict(TINY.heads))
            lrs.append(optimizer.param_groups[0]["lr"])
            losses.append(step_torch.train_step(model, optimizer, images, targets, recipe)["loss"].item())
            optim_torch.update_ema(ema, model, recipe, step)
            if (step + 1) % recipe.steps_per_iteration == 0:
                scheduler.step()
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            emas.append({k: v.clone() for k, v in ema.module.state_dict().items()})
    return losses, states, emas, lrs, norms


def flax_v2_trajectory(recipe: Recipe, batches: list[dict]) -> tuple[list, list, list]:
    """The Flax trainer's jitted step over the same batches (augmentation applied in the step): (losses, states,
    EMA states), torch-named."""
    with precision("float64"):
        model = from_torch(torch_model(TINY, seed=4).double().state_dict(), TINY)
        tx = optim_flax.make_optimizer(recipe, TINY)
        mesh = step_flax.data_mesh()
        graphdef, state = step_flax.init_train_state(model, tx, mesh, ema=True)
        step = step_flax.make_train_step(graphdef, tx, recipe, mesh)
        losses, states, emas = [], [], []
        for batch in batches:
            augment = {"erase": jnp.asarray(batch["erase"]),
                       "mix": {k: jnp.asarray(v) for k, v in batch["mix"].items()}}
            labels = {h: jnp.asarray(v.astype(np.int32)) for h, v in batch["labels"].items()}
            state, metrics = step(state, jnp.asarray(batch["image"]), labels, augment)
            losses.append(float(metrics["loss"]))
            states.append(state_as_torch(state, graphdef))
            average = SimpleNamespace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])
            emas.append(state_as_torch(average, graphdef))
    return losses, states, emas


@functools.cache
def torch_v2() -> tuple:
    return torch_v2_trajectory(V2_STYLE, v2_batches())


def v2_errors(flax_run: tuple) -> tuple[float, float, float]:
    """(loss |d|, worst state rel, worst EMA rel) of a Flax run against the torch trainer's, over every step."""
    losses, states, emas, _, _ = torch_v2()
    f_losses, f_states, f_emas = flax_run
    loss = float(np.max(np.abs(np.array(losses) - np.array(f_losses))))
    state = max(max_rel(s[k].numpy(), f[k].numpy()) for s, f in zip(states, f_states) for k in s
                if s[k].is_floating_point())
    ema = max(max_rel(s[k].double().numpy(), f[k].double().numpy()) for s, f in zip(emas, f_emas) for k in s)
    return loss, state, ema


def test_v2_style_trajectory_through_both_trainers_agrees_in_float64() -> None:
    """10 steps of 3-step epochs with torchvision's V2 ingredients: label smoothing, MixUp/CutMix and RandomErasing
    (the same draws; torchvision's transforms on the torch side), BatchNorm parameters without weight decay, plain
    momentum SGD, gradient clipping (active), per-epoch warmup + cosine, EMA with its warmup reset: loss, parameters
    and statistics, and the EMA model after every step within the float64 trajectory bound."""
    losses, states, emas, lrs, norms = torch_v2()
    assert lrs == [V2_STYLE.lr_at(k) for k in range(TRAJECTORY_STEPS)] and len(set(lrs)) == 4
    assert any(n > V2_STYLE.clip_grad_norm for n in norms) and any(n <= V2_STYLE.clip_grad_norm for n in norms)
    loss, state, ema = v2_errors(flax_v2_trajectory(V2_STYLE, v2_batches()))
    print(f"\nV2-style recipe, float64, {TRAJECTORY_STEPS} steps: loss |d| {loss:.1e}, state rel {state:.1e}, EMA rel "
          f"{ema:.1e}; clipped {sum(n > V2_STYLE.clip_grad_norm for n in norms)} of {len(norms)} steps")
    assert loss <= F64_TRAJECTORY and state <= F64_TRAJECTORY and ema <= F64_TRAJECTORY, (loss, state, ema)
    initial = torch_model(TINY, seed=4).double().state_dict()
    moved = max(max_rel(initial[k].numpy(), states[-1][k].numpy()) for k in initial if initial[k].is_floating_point())
    assert moved > 1e3 * F64_TRAJECTORY  # the run trained


def _nesterov_on(recipe: Recipe, config) -> object:
    return ORIGINAL_OPTIMIZER(recipe.replace(opt="sgd_nesterov"), config)


def _decay_on_norm(recipe: Recipe, config) -> object:
    return ORIGINAL_OPTIMIZER(recipe.replace(norm_weight_decay=None), config)


def _per_step_schedule(recipe: Recipe) -> object:
    return ORIGINAL_SCHEDULE(recipe.replace(schedule_unit="step", epochs=recipe.steps, steps_per_epoch=1))


ORIGINAL_OPTIMIZER, ORIGINAL_SCHEDULE = optim_flax.make_optimizer, optim_flax.make_schedule
RECIPE_BUGS = {
    "nesterov_on": (optim_flax, "make_optimizer", _nesterov_on),
    "weight_decay_on_norm": (optim_flax, "make_optimizer", _decay_on_norm),
    "ema_not_reset_in_warmup": (augment_flax, "ema_update", no_warmup_reset(augment_flax.ema_update)),
    "per_step_lr": (optim_flax, "make_schedule", _per_step_schedule),
}


@pytest.mark.parametrize("bug", RECIPE_BUGS)
def test_v2_style_trajectory_catches_each_ingredient_mis_implemented(bug: str) -> None:
    """Each ingredient wrong on the Flax side on purpose leaves the torch trainer's trajectory by far more than the
    bound (λ not area-corrected: test_augment_parity.test_cutmix_lambda_is_corrected_to_the_pasted_area)."""
    module, name, replacement = RECIPE_BUGS[bug]
    with mock.patch.object(module, name, replacement):
        loss, state, ema = v2_errors(flax_v2_trajectory(V2_STYLE, v2_batches()))
    print(f"\n{bug}: loss |d| {loss:.1e}, state rel {state:.1e}, EMA rel {ema:.1e}")
    assert max(loss, state, ema) > 1e3 * F64_TRAJECTORY, (loss, state, ema)
