"""The Flax BatchNorm reproduces torch.nn.BatchNorm2d exactly, in train and eval mode, alone and in the model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests.helpers import as_torch_layout, max_abs, max_rel, nchw_to_nhwc, precision, torch_model
from parity_tests.tolerances import F32_REL, F64_ABS
from r34 import get_preset
from r34_flax import BatchNorm, flax_state, from_torch, to_torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def assert_close(ref: np.ndarray, got: np.ndarray, dtype: str, what: str) -> None:
    if dtype == "float64":
        assert max_abs(ref, got) <= F64_ABS, f"{what}: max|d|={max_abs(ref, got):.3e}"
    else:
        assert max_rel(ref, got) <= F32_REL, f"{what}: rel={max_rel(ref, got):.3e}"


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_batchnorm_layer_matches_torch_in_train_and_eval(dtype: str) -> None:
    rng = np.random.default_rng(0)
    c = 6
    ref = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=0.1).to(DTYPES[dtype])
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
        ref.running_mean.normal_()
        ref.running_var.uniform_(0.5, 2.0)
    with precision(dtype):
        bn = BatchNorm(c, eps=1e-5, momentum=0.1, param_dtype=jnp.dtype(dtype))
        for name, t in (("scale", ref.weight), ("bias", ref.bias), ("mean", ref.running_mean), ("var", ref.running_var)):
            getattr(bn, name)[...] = jnp.asarray(t.detach().numpy())
        for step in range(3):
            x = (rng.standard_normal((4, c, 5, 7)) * 3 + 2).astype(dtype)
            ref.train()
            y_ref = ref(torch.from_numpy(x)).detach().numpy()
            y = as_torch_layout(np.asarray(bn(jnp.asarray(nchw_to_nhwc(x)))))
            assert_close(y_ref, y, dtype, f"train output, step {step}")
            assert_close(ref.running_mean.numpy(), np.asarray(bn.mean[...]), dtype, f"running_mean, step {step}")
            assert_close(ref.running_var.numpy(), np.asarray(bn.var[...]), dtype, f"running_var, step {step}")
            assert int(bn.num_batches_tracked[...]) == int(ref.num_batches_tracked) == step + 1
        bn.use_running_average = True
        ref.eval()
        x = rng.standard_normal((2, c, 3, 3)).astype(dtype)
        y = as_torch_layout(np.asarray(bn(jnp.asarray(nchw_to_nhwc(x)))))
        assert_close(ref(torch.from_numpy(x)).detach().numpy(), y, dtype, "eval output")


def test_running_var_uses_unbiased_batch_variance_and_torch_momentum() -> None:
    """Independent of torch: new = 0.9 * old + 0.1 * var(ddof=1); normalisation uses var(ddof=0)."""
    x = np.random.default_rng(1).standard_normal((3, 4, 5, 2)) * 2 + 1
    with precision("float64"):
        bn = BatchNorm(2, eps=1e-5, momentum=0.1, param_dtype=jnp.float64)
        y = np.asarray(bn(jnp.asarray(x)))
        flat = x.reshape(-1, 2)
        np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 * 1.0 + 0.1 * flat.var(axis=0, ddof=1), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * flat.mean(axis=0), rtol=1e-14)
        expected = (x - flat.mean(axis=0)) / np.sqrt(flat.var(axis=0, ddof=0) + 1e-5)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_train_mode_needs_more_than_one_value_per_channel() -> None:
    bn = BatchNorm(3, eps=1e-5, momentum=0.1)
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got input \(1, 1, 1, 3\)"):
        bn(jnp.ones((1, 1, 1, 3)))


def test_model_train_mode_forward_updates_statistics_like_torch() -> None:
    """Two train-mode forwards of the whole model: logits and every running statistic and counter match."""
    config = get_preset("tiny")
    ref = torch_model(config, seed=5).double()
    rng = np.random.default_rng(2)
    with precision("float64"):
        model = from_torch(ref.state_dict())
        model.train()
        ref.train()
        for step in range(2):
            x = rng.standard_normal((3, 3, 32, 32))
            with torch.no_grad():
                out_ref = ref(torch.from_numpy(x)).numpy()
            out = np.asarray(model(jnp.asarray(nchw_to_nhwc(x))))
            assert_close(out_ref, out, "float64", f"train-mode logits, step {step}")
        exported = to_torch(model)
        for key, value in ref.state_dict().items():
            if key.endswith("num_batches_tracked"):
                assert int(exported[key]) == int(value), key
            else:
                assert_close(value.numpy(), exported[key].numpy(), "float64", key)
        assert int(flax_state(model)[("bn1", "num_batches_tracked")]) == int(ref.bn1.num_batches_tracked)
