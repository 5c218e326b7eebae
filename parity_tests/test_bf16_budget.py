"""bfloat16 compute in the Flax twin (float32 parameters and BatchNorm statistics) stays within its error budget
against float32 PyTorch at 224 (the README's bf16 table)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests.helpers import max_rel, nchw_to_nhwc, torch_model
from parity_tests.tolerances import BF16_LOGITS_REL
from r34 import get_preset
from r34_flax import flax_state, from_torch


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["resnet34", "grapheme34"])
def test_bf16_logits_within_budget(preset: str) -> None:
    config = get_preset(preset)
    reference = torch_model(config, seed=0)
    x = np.random.default_rng(100).standard_normal((8, config.in_channels, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = reference(torch.from_numpy(x))
    model = from_torch(reference.state_dict(), dtype=jnp.bfloat16)
    model.eval()
    got = jax.jit(lambda m, v: m(v))(model, jnp.asarray(nchw_to_nhwc(x)))
    ref = ref if isinstance(ref, dict) else {"fc": ref}
    got = got if isinstance(got, dict) else {"fc": got}
    state = flax_state(model)
    assert state[("conv1", "kernel")].dtype == np.float32 and state[("bn1", "var")].dtype == np.float32
    for head in ref:
        assert got[head].dtype == jnp.bfloat16
        err = max_rel(ref[head].numpy(), np.asarray(got[head], np.float32))
        agree = float(np.mean(ref[head].numpy().argmax(-1) == np.asarray(got[head], np.float32).argmax(-1)))
        print(f"\n{preset} {head}: bf16 logits rel {err:.3e}, top-1 agreement {agree:.2f}")
        assert err <= BF16_LOGITS_REL, f"{head}: bf16 logits rel error {err:.3e} > budget {BF16_LOGITS_REL}"
