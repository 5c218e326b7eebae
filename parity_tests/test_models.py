"""Structure, names, parameter counts and init of both twins, checked against torchvision and the table."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

from parity_tests.helpers import FAMILY, TEST_PRESETS
from r34 import get_preset
from r34_flax import conversion_table, flax_state, layers
from r34_flax.conversion import parameter_count
from r34_flax import resnet as flax_resnet
from r34_torch import resnet as torch_resnet

RESNET34_PARAMS = 21_797_672  # torchvision.models.resnet34(): sum of p.numel() over parameters()
# torchvision's builders: sum(p.numel() for p in model.parameters()) (its model cards and docs).
FAMILY_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}

# Sampling error of a standard deviation estimated from n >= 8192 draws is ~1/sqrt(2n) < 0.8%; 5% is > 6 sigma,
# yet far below the 2x-20x that a wrong fan mode or gain produces.
INIT_STD_RTOL = 0.05


def abstract_flax(preset: str) -> nnx.Module:
    """The Flax twin's structure without running its initialisers (shapes and dtypes only)."""
    return nnx.eval_shape(lambda: flax_resnet(get_preset(preset)))


def test_resnet34_parameter_count_in_both_twins() -> None:
    torch_model = torch_resnet(get_preset("resnet34"))
    assert sum(p.numel() for p in torch_model.parameters()) == RESNET34_PARAMS
    params = nnx.state(abstract_flax("resnet34"), nnx.Param)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == RESNET34_PARAMS


@pytest.mark.parametrize("preset, reference", [("resnet34", "resnet34"), ("resnet18", "resnet18")])
def test_torch_state_dict_equals_torchvision(preset: str, reference: str) -> None:
    ours = torch_resnet(get_preset(preset)).state_dict()
    theirs = getattr(torchvision.models, reference)().state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert {k: v.dtype for k, v in ours.items()} == {k: v.dtype for k, v in theirs.items()}
    if preset == "resnet34":
        assert len(ours) == 218
        assert sum(k.endswith("num_batches_tracked") for k in ours) == 36


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_conversion_table_describes_both_trees(preset: str) -> None:
    config = get_preset(preset)
    table = conversion_table(config)
    torch_sd = torch_resnet(config).state_dict()
    assert [e.torch_key for e in table] == list(torch_sd)
    assert all(tuple(torch_sd[e.torch_key].shape) == e.torch_shape for e in table)
    flat = {path: v for path, v in nnx.to_flat_state(nnx.state(abstract_flax(preset)))}
    assert {e.flax_path for e in table} == set(flat)
    for e in table:
        assert flat[e.flax_path].shape == e.flax_shape, e.flax_path
        want = nnx.BatchStat if e.flax_path[-1] in ("mean", "var", "num_batches_tracked") else nnx.Param
        assert flat[e.flax_path].type is want, (e.flax_path, flat[e.flax_path].type)


def test_flax_tree_uses_torchvision_names() -> None:
    paths = {"/".join(map(str, p)) for p in flax_state(flax_resnet(get_preset("tiny")))}
    for path in ("conv1/kernel", "bn1/scale", "bn1/mean", "bn1/var", "layer1/0/conv1/kernel", "layer1/0/bn2/bias",
                 "layer2/0/downsample/0/kernel", "layer2/0/downsample/1/var", "layer3/1/conv2/kernel",
                 "fc/kernel", "fc/bias"):
        assert path in paths, path


def _check_kaiming_fan_out(w: np.ndarray, fan_out: int, where: str) -> None:
    std = math.sqrt(2.0 / fan_out)
    assert abs(w.std() / std - 1) < INIT_STD_RTOL, f"{where}: std {w.std():.4g}, expected {std:.4g}"
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size), f"{where}: mean {w.mean():.3g}"
    # Not truncated: a normal of this size has samples beyond 3 sigma (a 2-sigma truncation has none).
    assert np.abs(w).max() > 3 * std, f"{where}: looks truncated"


def _check_linear(w: np.ndarray, b: np.ndarray, fan_in: int, where: str) -> None:
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound, where
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < INIT_STD_RTOL, f"{where}: not U(-1/sqrt(fan_in), ..)"


def test_torch_init_scheme() -> None:
    torch.manual_seed(0)
    model = torch_resnet(get_preset("resnet18"))
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach().numpy()
            _check_kaiming_fan_out(w, w.shape[0] * w.shape[2] * w.shape[3], name)
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
    _check_linear(model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy(), 512, "fc")


def test_flax_init_scheme() -> None:
    flat = {"/".join(map(str, p)): v for p, v in flax_state(flax_resnet(get_preset("resnet18"), seed=0)).items()}
    for path, w in flat.items():
        if path.endswith("kernel") and w.ndim == 4:  # HWIO
            _check_kaiming_fan_out(w, w.shape[0] * w.shape[1] * w.shape[3], path)
        elif path.endswith("scale"):
            assert np.all(w == 1), path
        elif path.endswith(("mean", "num_batches_tracked")) or ("bn" in path and path.endswith("bias")):
            assert np.all(w == 0), path
        elif path.endswith("var"):
            assert np.all(w == 1), path
    _check_linear(flat["fc/kernel"], flat["fc/bias"], 512, "fc")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_flax_initializers_draw_jaxs_values(dtype: str) -> None:
    """The twin's kernel initializers (drawn flat, for compile time) give nnx's variance_scaling values bit for bit:
    conv kernels (HWIO: a grouped 3x3, a 1x1) and a linear kernel (in, out). (Few shapes: nnx's own draws are the
    slow compilations the flat draw avoids.)"""
    key = jax.random.key(3)
    cases = ((layers.conv_kernel_init, (2.0, "fan_out", "normal"), ((3, 3, 2, 6), (1, 1, 6, 8))),
             (layers.linear_kernel_init, (1.0 / 3.0, "fan_in", "uniform"), ((12, 10),)))
    with jax.enable_x64(dtype == "float64"):
        for ours, (scale, mode, distribution), shapes in cases:
            reference = nnx.initializers.variance_scaling(scale, mode, distribution)
            for shape in shapes:
                got, want = ours(key, shape, dtype), reference(key, shape, dtype)
                assert got.shape == want.shape and got.dtype == want.dtype, shape
                np.testing.assert_array_equal(got, want, err_msg=f"{distribution} {shape}")


@pytest.mark.parametrize("preset, last", [("tiny", "bn2"), ("tiny_bottleneck", "bn3")])
def test_zero_init_residual_in_both_twins(preset: str, last: str) -> None:
    """torchvision zeroes the last BatchNorm of each block: bn2 in BasicBlock, bn3 in Bottleneck."""
    config = get_preset(preset).replace(zero_init_residual=True)
    torch_model = torch_resnet(config)
    flat = flax_state(flax_resnet(config))
    for b in config.blocks():
        assert torch.all(torch_model.get_submodule(f"{b.stage}.{b.index}.{last}").weight == 0)
        assert np.all(flat[(b.stage, b.index, last, "scale")] == 0)
        assert np.all(flat[(b.stage, b.index, "bn1", "scale")] == 1)


def test_single_head_returns_array_and_several_heads_a_dict() -> None:
    single = get_preset("tiny")
    multi = single.replace(heads=(("root", 5), ("vowel", 3)))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for config in (single, multi):
        t = torch_resnet(config).eval()
        f = flax_resnet(config)
        f.eval()
        with torch.no_grad():
            out_t = t(torch.from_numpy(x))
        out_f = f(jnp.asarray(x.transpose(0, 2, 3, 1)))
        if config.single_head:
            assert isinstance(out_t, torch.Tensor) and out_t.shape == (2, 10)
            assert isinstance(out_f, jax.Array) and out_f.shape == (2, 10)
        else:
            assert {k: tuple(v.shape) for k, v in out_t.items()} == {"root": (2, 5), "vowel": (2, 3)}
            assert {k: v.shape for k, v in out_f.items()} == {"root": (2, 5), "vowel": (2, 3)}
            assert list(out_t) == list(out_f) == ["root", "vowel"]


def test_flax_compute_and_param_dtypes() -> None:
    model = flax_resnet(get_preset("tiny"), dtype=jnp.bfloat16)
    x = jnp.ones((2, 32, 32, 3), jnp.float32)
    assert jax.jit(lambda m, v: m(v))(model, x).dtype == jnp.bfloat16  # jitted: eager bf16 dispatch is slow here
    flat = flax_state(model)
    assert flat[("conv1", "kernel")].dtype == np.float32
    assert flat[("bn1", "mean")].dtype == np.float32 and flat[("bn1", "num_batches_tracked")].dtype == np.int32
    half = flax_state(flax_resnet(get_preset("tiny"), param_dtype=jnp.bfloat16))
    assert half[("conv1", "kernel")].dtype == jnp.bfloat16
    # Statistics stay float32 under low-precision params: a bf16 running variance would lose the update.
    assert half[("bn1", "var")].dtype == np.float32


@pytest.mark.parametrize("name", FAMILY)
def test_every_torchvision_builder_has_its_parameter_count_and_module_tree(name: str) -> None:
    """On torch's meta device (shapes only, no memory, no init work): the torch twin of the preset has
    torchvision's state_dict keys, order and shapes and torchvision's parameter count; so has the table."""
    config = get_preset(name)
    with torch.device("meta"):
        ours, theirs = torch_resnet(config), getattr(torchvision.models, name)()
    shapes = lambda model: [(k, v.shape) for k, v in model.state_dict().items()]  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    assert sum(p.numel() for p in ours.parameters()) == FAMILY_PARAMS[name]
    assert parameter_count(config) == FAMILY_PARAMS[name]


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_flax_twin_of_bottleneck_bodies_has_torchvisions_parameter_count(name: str) -> None:
    params = nnx.state(abstract_flax(name), nnx.Param)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == FAMILY_PARAMS[name]
    conv2 = nnx.state(abstract_flax(name), nnx.Param)["layer1"][0]["conv2"]["kernel"]
    config = get_preset(name)
    width = config.blocks()[0].width
    assert conv2.shape == (3, 3, width // config.groups, width)  # grouped: HWIO with I = in / groups
