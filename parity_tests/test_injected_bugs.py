"""The float32 checks can still fail: each structural bug in its reach, injected into the Flax side, is caught.

The float32 checks of test_train_parity are held only where float32 is well defined (small models, the steps before
any near-tie); this proves that what is left still sees every bug a port typically has (parity_tests/injections.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests.helpers import as_torch_layout, assert_stages_match, nchw_to_nhwc, torch_model
from parity_tests.injections import BUGS
from parity_tests.test_train_parity import RECIPES, check_gradients, check_train_mode, check_trajectory, \
    run_trajectories
from r34 import get_preset
from r34_flax import from_torch

# Which check must catch which bug. BatchNorm's statistics conventions do not touch a single gradient; the optimizer
# bugs only show in a trajectory; the trajectory check must catch them all.
TRAIN_MODE_BUGS = ["same_padding", "bn_momentum_convention", "biased_running_var"]
GRADIENT_BUGS = ["same_padding"]
TRAJECTORY_BUGS = [("same_padding", "sgd"), ("bn_momentum_convention", "sgd"), ("biased_running_var", "adamw"),
                   ("weight_decay_placement", "sgd"), ("weight_decay_placement", "adamw"), ("nesterov_flipped", "sgd")]


def test_eval_check_catches_same_padding() -> None:
    """The float32 eval check (Flax float32 against float64, test_eval_parity) names the stem under 'SAME'."""
    config = get_preset("resnet18")
    model = torch_model(config, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        exact = {k: v.numpy() for k, v in model.double().forward_intermediates(torch.from_numpy(x).double()).items()}
    flax = BUGS["same_padding"].edit(from_torch(model.float().state_dict(), config))
    flax.eval()
    out = flax.forward_intermediates(jnp.asarray(nchw_to_nhwc(x)))
    got = {k: as_torch_layout(np.asarray(v)) for k, v in out.items()}
    with pytest.raises(AssertionError, match=r"first divergence at 'stem'") as caught:
        assert_stages_match(exact, got, "float32")
    print(f"\nsame_padding: {str(caught.value).splitlines()[0]}")


@pytest.mark.parametrize("bug", TRAIN_MODE_BUGS)
def test_train_mode_check_catches(bug: str) -> None:
    with pytest.raises(AssertionError, match=r"rel=") as caught:
        check_train_mode("tiny", "float32", bug=BUGS[bug])
    print(f"\n{bug}: {caught.value}")


@pytest.mark.parametrize("bug", GRADIENT_BUGS)
def test_gradient_check_catches(bug: str) -> None:
    with pytest.raises(AssertionError, match=r"gradient rel error") as caught:
        check_gradients("tiny@64", "float32", bug=BUGS[bug])
    print(f"\n{bug}: {caught.value}")


@pytest.mark.parametrize("bug, optimizer", TRAJECTORY_BUGS)
def test_trajectory_check_catches(bug: str, optimizer: str) -> None:
    trajectory = run_trajectories("tiny", RECIPES[optimizer], "float32", bug=BUGS[bug])
    with pytest.raises(AssertionError, match=r"float32 (loss curve differs|rel)") as caught:
        check_trajectory("tiny", optimizer, trajectory, "float32")
    print(f"\n{bug} ({optimizer}): {str(caught.value).splitlines()[0]}")
