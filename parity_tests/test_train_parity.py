"""Training parity: train-mode forward and BatchNorm statistics, gradients, optimizer steps and trajectories.

The Flax side runs the trainer's own code (`train.step_flax`: loss, jitted step, optax optimizer and schedule),
the torch side the reference trainer's (`train.step_torch`, `train.optim_torch`).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch

from parity_tests.helpers import max_abs, max_rel, precision, torch_model
from parity_tests.tolerances import (
    F32_BN_STATE_REL,
    F32_GRAD_REL,
    F32_REL,
    F32_TRAIN_LOGITS_REL,
    F32_TRAJECTORY_LOSS_ABS,
    F32_TRAJECTORY_REL,
    F64_ABS,
    F64_GRAD_REL,
    F64_TRAJECTORY,
)
from parity_tests.train_twins import (
    flax_grads,
    make_batches,
    state_as_torch,
    torch_grads,
    twins,
)
from r34 import get_preset
from r34_flax import to_torch
from train import optim_flax, optim_torch, step_flax, step_torch
from train.recipe import Recipe

# Smallest models that still exercise each path: `tiny` (single head), `tiny` with the grapheme34 input and
# heads (1 channel, three heads, summed loss); the full presets at small inputs; ResNet-34 at 224 behind `slow`.
TINY_GRAPHEME = get_preset("tiny_grapheme")
CASES = {
    "tiny": (get_preset("tiny"), 32),
    "tiny_grapheme": (TINY_GRAPHEME, 32),
    "resnet18": (get_preset("resnet18"), 64),
    "grapheme34": (get_preset("grapheme34"), 64),
}
FULL = pytest.param("resnet34_224", marks=pytest.mark.slow)
CASES["resnet34_224"] = (get_preset("resnet34"), 224)


def _close(ref: np.ndarray, got: np.ndarray, dtype: str, f32_rel: float, what: str) -> str:
    if dtype == "float64":
        err = max_abs(ref, got)
        assert err <= F64_ABS, f"{what}: max|d|={err:.3e} > F64_ABS"
        return f"{err:.1e}"
    err = max_rel(ref, got)
    assert err <= f32_rel, f"{what}: rel={err:.3e} > {f32_rel}"
    return f"{err:.1e}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ["tiny", "tiny_grapheme", "grapheme34", FULL])
def test_train_mode_forward_and_batchnorm_state(case: str, dtype: str) -> None:
    config, size = CASES[case]
    with precision(dtype):
        ref, model = twins(config, dtype, seed=1)
        model.train()
        worst_logits, worst_state = 0.0, 0.0
        for step, batch in enumerate(make_batches(config, 2, 4, size, dtype, seed=2)):
            ref.train()
            with torch.no_grad():
                out_ref = step_torch.heads_of(ref(batch.torch_images), config)
            out = step_flax.heads_of(model(batch.flax_images), config)
            for head in out_ref:
                _close(out_ref[head].numpy(), np.asarray(out[head]), dtype, F32_TRAIN_LOGITS_REL, f"{head}, step {step}")
                worst_logits = max(worst_logits, max_rel(out_ref[head].numpy(), np.asarray(out[head])))
        exported = to_torch(model)
        for key, value in ref.state_dict().items():
            if key.endswith("num_batches_tracked"):
                assert int(exported[key]) == int(value), key
            elif "running" in key:
                _close(value.numpy(), exported[key].numpy(), dtype, F32_BN_STATE_REL, key)
                worst_state = max(worst_state, max_rel(value.numpy(), exported[key].numpy()))
    print(f"\n{case} {dtype}: train-mode logits rel {worst_logits:.2e}, BN running stats rel {worst_state:.2e}")


# float32 gradients only on the small models: in float32 a ReLU whose input lies within float32 noise (~1e-5) of
# zero can take the other branch in one twin, and the gradients behind it then differ by O(1) of that element's
# cotangent (measured: resnet18 at 64, batch 4, 1 such flip in 6 seeds, 3% on one BN-bias gradient; grapheme34
# likewise). That is a discontinuity of float32 arithmetic, not a port error; float64 proves the function.
GRADIENT_CASES = [(case, "float64") for case in ("tiny", "tiny_grapheme", "resnet18", "grapheme34")]
GRADIENT_CASES += [(case, "float32") for case in ("tiny", "tiny_grapheme")]
GRADIENT_CASES += [pytest.param("resnet34_224", "float64", marks=pytest.mark.slow)]


@pytest.mark.parametrize("case, dtype", GRADIENT_CASES)
def test_gradients_of_every_parameter(case: str, dtype: str) -> None:
    config, size = CASES[case]
    with precision(dtype):
        ref, model = twins(config, dtype, seed=3)
        batch = make_batches(config, 1, 4, size, dtype, seed=4)[0]
        loss_ref, grads_ref = torch_grads(ref, batch)
        loss, grads = flax_grads(model, batch)
    assert set(grads) == set(grads_ref) and len(grads) == len(list(ref.parameters()))
    bound = F64_GRAD_REL if dtype == "float64" else F32_GRAD_REL
    errors = {k: max_rel(grads_ref[k].numpy(), grads[k].numpy()) for k in grads_ref}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= bound, f"{worst}: gradient rel error {errors[worst]:.3e} > {bound}"
    assert abs(loss - loss_ref) <= (F64_ABS if dtype == "float64" else F32_REL * abs(loss_ref))
    print(f"\n{case} {dtype}: loss |d|={abs(loss - loss_ref):.1e}, worst gradient rel {errors[worst]:.2e} ({worst})")


RECIPES = {
    "sgd": Recipe(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, warmup_steps=3,
                  total_steps=10, label_smoothing=0.1),
    "adamw": Recipe(optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_steps=3, total_steps=10,
                    label_smoothing=0.1),
}


SNAPSHOTS = (1, 10)  # compare after one step and after a 10-step trajectory


@functools.cache
def trajectories(case: str, optimizer: str, dtype: str):
    """run_trajectories for a named case and recipe, run once per session: the float64 run is both a test of its
    own and the float32 test's referee."""
    config, size = CASES[case]
    return run_trajectories(config, size, RECIPES[optimizer], dtype)


def run_trajectories(config, size: int, recipe: Recipe, dtype: str):
    """Both trainers for 10 steps from identical weights on identical batches. Returns the torch and Flax loss
    curves and, per snapshot step, both models' state_dicts."""
    with precision(dtype):
        ref, model = twins(config, dtype, seed=5)
        optimizer, scheduler = optim_torch.make_optimizer(ref.parameters(), recipe)
        tx = optim_flax.make_optimizer(recipe)
        mesh = step_flax.data_mesh()
        graphdef, state = step_flax.init_train_state(model, tx, mesh)
        step = step_flax.make_train_step(graphdef, tx, recipe.label_smoothing, mesh)
        losses_ref, losses, lrs, snapshots = [], [], [], {}
        for k, batch in enumerate(make_batches(config, max(SNAPSHOTS), 8, size, dtype, seed=6), start=1):
            lrs.append(optimizer.param_groups[0]["lr"])
            losses_ref.append(step_torch.train_step(ref, optimizer, scheduler, batch.torch_images,
                                                    batch.torch_labels, recipe.label_smoothing)["loss"].item())
            images, labels = step_flax.shard_batch((batch.flax_images, batch.flax_labels), mesh)
            state, metrics = step(state, images, labels)
            losses.append(float(metrics["loss"]))
            if k in SNAPSHOTS:
                snapshots[k] = ({n: t.clone() for n, t in ref.state_dict().items()}, state_as_torch(state, graphdef))
        if dtype == "float64":  # in float32 runs optax's lr is itself rounded to float32
            schedule = optim_flax.make_schedule(recipe)
            np.testing.assert_allclose(lrs, [float(schedule(k)) for k in range(len(lrs))], rtol=1e-14, atol=0)
        assert int(state.step) == max(SNAPSHOTS)
        return np.array(losses_ref), np.array(losses), snapshots


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", list(RECIPES))
@pytest.mark.parametrize("case", ["tiny", "tiny_grapheme"])
def test_optimizer_trajectories(case: str, optimizer: str, dtype: str) -> None:
    config, _ = CASES[case]
    initial = torch_model(config, seed=5).state_dict()
    losses_ref, losses, snapshots = trajectories(case, optimizer, dtype)
    torch_f32 = None
    if dtype == "float32":
        # The referee for float32 is the float64 torch trajectory (which the float64 Flax twin matches to ~1e-14),
        # not torch's own float32 run: float32 runs occasionally cross a near-tie (a ReLU input or max-pool pair
        # within rounding of each other) and then the run that crossed it leaves the exact trajectory. Seen: tiny,
        # SGD, 10 steps: torch float32 left the float64 curve by 5.8e-3 (loss) while Flax float32 stayed within
        # 2.6e-6 of it; comparing the two float32 runs would blame the twin that was right.
        torch_f32 = (losses_ref, snapshots)
        losses_exact, _, snapshots_exact = trajectories(case, optimizer, "float64")
        losses_ref = losses_exact
        snapshots = {k: (snapshots_exact[k][0], snapshots[k][1]) for k in snapshots}
    for steps, (sd_ref, sd) in snapshots.items():
        loss_err = float(np.max(np.abs(losses_ref[:steps] - losses[:steps])))
        floats = [k for k in sd_ref if not k.endswith("num_batches_tracked")]
        errors = {k: max_rel(sd_ref[k].numpy(), sd[k].numpy()) for k in floats}
        worst = max(errors, key=errors.get)
        counters = [k for k in sd_ref if k.endswith("num_batches_tracked")]
        assert all(int(sd[k]) == int(sd_ref[k]) == int(initial[k]) + steps for k in counters)
        if dtype == "float64":
            assert loss_err <= F64_TRAJECTORY, f"loss curve differs by {loss_err:.3e} over {steps} steps"
            assert errors[worst] <= F64_TRAJECTORY, f"{worst}: rel {errors[worst]:.3e} after {steps} steps"
        else:
            assert loss_err <= F32_TRAJECTORY_LOSS_ABS, f"float32 loss curve drifts by {loss_err:.3e}"
            assert errors[worst] <= F32_TRAJECTORY_REL, f"{worst}: float32 drift {errors[worst]:.3e} after {steps}"
        # Not vacuous: training moved the parameters far more than the tolerance allows the twins to differ.
        moved = max(max_rel(initial[k].double().numpy(), sd_ref[k].double().numpy()) for k in floats)
        assert moved > 10 * (F64_TRAJECTORY if dtype == "float64" else F32_TRAJECTORY_REL), moved
        note = ""
        if torch_f32 is not None:  # for the record: how far torch's own float32 run is from the referee
            torch_loss = float(np.max(np.abs(losses_ref[:steps] - torch_f32[0][:steps])))
            torch_state = max(max_rel(sd_ref[k].numpy(), torch_f32[1][steps][0][k].numpy()) for k in floats)
            note = f"; torch float32 vs float64: loss |d| {torch_loss:.1e}, state rel {torch_state:.1e}"
        print(f"\n{case} {optimizer} {steps} step(s) {dtype}: loss |d| {loss_err:.1e}, worst state rel "
              f"{errors[worst]:.1e} ({worst}); loss {losses_ref[0]:.3f} -> {losses_ref[steps - 1]:.3f}; "
              f"moved {moved:.1e}{note}")


def test_schedules_match_step_by_step() -> None:
    """Warmup + cosine: torch's SequentialLR(LinearLR, CosineAnnealingLR) against optax, over a whole run."""
    for recipe in (Recipe(warmup_steps=7, total_steps=50), Recipe(warmup_steps=0, total_steps=50),
                   Recipe(optimizer="adamw", lr=1e-3, warmup_steps=1, total_steps=9, warmup_start_factor=0.5)):
        optimizer, scheduler = optim_torch.make_optimizer([torch.nn.Parameter(torch.zeros(1))], recipe)
        torch_lrs = []
        for _ in range(recipe.total_steps):
            torch_lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        with jax.enable_x64(True):
            schedule = optim_flax.make_schedule(recipe)
            optax_lrs = [float(schedule(k)) for k in range(recipe.total_steps)]
        np.testing.assert_allclose(torch_lrs, optax_lrs, rtol=1e-12, atol=1e-15)
        assert torch_lrs[0] == pytest.approx(recipe.lr * (recipe.warmup_start_factor if recipe.warmup_steps else 1))
