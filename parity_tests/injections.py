"""Structural bugs a port typically has, injected into the Flax side, to show every float32 check can still fail.

Each `Bug` is one mistake from shared/PARITY_FACTS.md's "where ports silently disagree", applied to the Flax twin
or its optimizer while everything else stays correct. A float32 check that does not catch the bugs in its reach
proves nothing, however green it is (`test_float32_checks_catch_injected_bugs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from unittest import mock

import optax
from flax import nnx

import r34_flax.layers as layers
from r34.config import ResNetConfig
from r34_flax.model import ResNet
from train import optim_flax
from train.recipe import ADAM_BETAS, ADAM_EPS, Recipe


@dataclasses.dataclass(frozen=True)
class Bug:
    name: str
    flax_model: Callable[[ResNet], None] | None = None  # edits the converted Flax twin in place
    # replaces optim_flax.make_optimizer(recipe, config)
    optimizer: Callable[[Recipe, ResNetConfig], optax.GradientTransformation] | None = None
    biased_running_var: bool = False

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.biased_running_var:
                # BatchNorm's Bessel factor n / (n - 1) becomes 1: running_var takes the biased batch variance, as
                # Flax's own BatchNorm does.
                stack.enter_context(mock.patch.object(layers, "bessel_correction", lambda n: 1.0))
            if self.optimizer is not None:
                stack.enter_context(mock.patch.object(optim_flax, "make_optimizer", self.optimizer))
            yield

    def edit(self, model: ResNet) -> ResNet:
        if self.flax_model is not None:
            self.flax_model(model)
        return model


def _same_padding(model: ResNet) -> None:
    """Flax's 'SAME' on every convolution: pads (2, 3) / (0, 1) where torch pads (3, 3) / (1, 1) at stride 2."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Conv):
            module.padding = "SAME"


def _flax_momentum(model: ResNet) -> None:
    """Flax's momentum convention (new = m * old + (1 - m) * batch) fed torch's 0.1."""
    for _, module in nnx.iter_graph(model):
        if isinstance(module, layers.BatchNorm):
            module.momentum = 1 - module.momentum


def _decay_after_momentum(recipe: Recipe, config: ResNetConfig) -> optax.GradientTransformation:
    """Weight decay outside the momentum buffer (SGD) or inside Adam's moments (AdamW): torch does the opposite."""
    schedule = optim_flax.make_schedule(recipe)
    if recipe.opt == "adamw":
        b1, b2 = ADAM_BETAS
        return optax.chain(optax.add_decayed_weights(recipe.weight_decay), optax.scale_by_adam(b1, b2, ADAM_EPS),
                           optax.scale_by_learning_rate(schedule))
    return optax.chain(optax.trace(recipe.momentum, recipe.nesterov), optax.add_decayed_weights(recipe.weight_decay),
                       optax.scale_by_learning_rate(schedule))


# The real one, kept here: while a Bug is applied, optim_flax.make_optimizer is the bug's.
_make_optimizer = optim_flax.make_optimizer


def _nesterov_flipped(recipe: Recipe, config: ResNetConfig) -> optax.GradientTransformation:
    """Nesterov off where the recipe has it (the Flax ImageNet recipe's), on where it has plain momentum
    (torchvision's `--opt sgd`)."""
    return _make_optimizer(dataclasses.replace(recipe, opt="sgd" if recipe.nesterov else "sgd_nesterov"), config)


NO_BUG = Bug("none")
BUGS: dict[str, Bug] = {b.name: b for b in (
    Bug("same_padding", flax_model=_same_padding),
    Bug("bn_momentum_convention", flax_model=_flax_momentum),
    Bug("biased_running_var", biased_running_var=True),
    Bug("weight_decay_placement", optimizer=_decay_after_momentum),
    Bug("nesterov_flipped", optimizer=_nesterov_flipped),
)}
