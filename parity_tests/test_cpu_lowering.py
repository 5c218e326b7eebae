"""The CPU-specific pieces behind the Flax twin's speed: small-map convolutions as patches + matmul (forward) and as
per-tap matmuls over real pixels (differentiated), the tap max pool with torch's gradient routing, and the XLA:CPU
flags. Each must compute what it replaces."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax

from parity_tests.tolerances import F64_ABS
from r34_flax import conv_lowering, xla_cpu
from r34_flax.conv_lowering import conv_general_dilated, patches_conv, tapwise_conv, uses_patches, uses_tapwise
from r34_flax.pooling import max_pool

NHWC = ("NHWC", "HWIO", "NHWC")

# (batch, height, width, c_in, c_out, kernel, stride): every small-map case ResNet inputs of 32-64 px produce
# (1x1 maps where eight of nine taps read only padding, 2x2 and 4x4, stride 2), the 7x7 stem, a non-square map,
# odd maps at stride 2 (the last window reads padding on one side only), 224 px's 7x7 layer4 map.
CONV_CASES = [
    (2, 1, 1, 8, 4, 3, 1),
    (2, 2, 2, 8, 4, 3, 1),
    (2, 4, 4, 8, 4, 3, 2),
    (2, 3, 5, 8, 4, 3, 1),
    (2, 4, 4, 8, 4, 1, 2),
    (2, 8, 8, 3, 4, 7, 2),
    (2, 5, 7, 3, 4, 3, 2),
    (2, 7, 7, 3, 4, 3, 1),
    (2, 9, 9, 8, 4, 1, 1),  # 1x1 kernels take tapwise_conv at any map (TAPWISE_POINTWISE): stride 1, and 2 on
    (2, 9, 9, 8, 4, 1, 2),  # an odd map
]


def xla_conv(x: jax.Array, w: jax.Array, stride: int = 1, pad: int = 1) -> jax.Array:
    return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                    dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, NHWC))


def our_conv(x: jax.Array, w: jax.Array, stride: int = 1, pad: int = 1) -> jax.Array:
    """The Flax twin's convolution (r34_flax.conv_lowering) called exactly as xla_conv calls XLA's."""
    return conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, NHWC))


@pytest.mark.parametrize("lowering", [patches_conv, tapwise_conv], ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "b{}_{}x{}_{}to{}_k{}s{}".format(*c))
def test_cpu_lowerings_equal_xla_convolution_with_gradients(case: tuple, lowering) -> None:
    n, h, w, c_in, c_out, k, s = case
    pad = k // 2

    def value_and_vjp(conv, a: jax.Array, b: jax.Array, g: jax.Array) -> tuple[jax.Array, ...]:
        out, vjp = jax.vjp(conv, a, b)
        return out, *vjp(g)

    # Jitted, as in the model's train step: one program per case (op by op, the 7x7 stem's 49 taps compiled ~240
    # small programs, 13 s of this file's time on a 2-core Xeon).
    @jax.jit
    def both(a: jax.Array, b: jax.Array, g: jax.Array) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        ours = value_and_vjp(lambda a, b: lowering(a, b, (s, s), ((pad, pad), (pad, pad))), a, b, g)
        return value_and_vjp(lambda a, b: xla_conv(a, b, s, pad), a, b, g), ours

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((n, h, w, c_in)))
        kernel = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)))
        g = jnp.asarray(rng.standard_normal((n, (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1, c_out)))
        ref, ours = both(x, kernel, g)
        for got, want in zip(ours, ref):
            assert got.shape == want.shape
            assert float(jnp.max(jnp.abs(got - want))) <= F64_ABS


def test_conv_takes_patches_forward_and_tapwise_when_differentiated() -> None:
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 2, 2, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 8)), jnp.float32)
    pad = ((1, 1), (1, 1))

    # Bit-for-bit: which lowering ran, not only that the numbers are close.
    forward = jax.jit(our_conv)(x, w)
    differentiated, vjp = jax.vjp(jax.jit(our_conv), x, w)
    np.testing.assert_array_equal(forward, jax.jit(lambda a, b: patches_conv(a, b, (1, 1), pad))(x, w))
    np.testing.assert_array_equal(differentiated, jax.jit(lambda a, b: tapwise_conv(a, b, (1, 1), pad))(x, w))
    want = jax.vjp(lambda a, b: tapwise_conv(a, b, (1, 1), pad), x, w)[1](jnp.ones_like(forward))
    for got, ref in zip(vjp(jnp.ones_like(forward)), want):
        np.testing.assert_array_equal(got, ref)


def test_small_map_conv_supports_forward_mode_autodiff() -> None:
    # Its custom rule is a JVP, which JAX transposes for reverse mode: jax.jvp (and forward-over-reverse
    # Hessian-vector products) work too.
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x, dx = (jnp.asarray(rng.standard_normal((2, 2, 2, 3))) for _ in range(2))
        w, dw = (jnp.asarray(rng.standard_normal((3, 3, 3, 4))) for _ in range(2))
        got, want = jax.jvp(our_conv, (x, w), (dx, dw)), jax.jvp(xla_conv, (x, w), (dx, dw))
        for a, b in zip(got, want):
            assert float(jnp.max(jnp.abs(a - b))) <= F64_ABS
        hvp = [jax.jvp(jax.grad(lambda a, f=f: jnp.sum(jnp.sin(f(a, w)))), (x,), (dx,))[1]
               for f in (our_conv, xla_conv)]
        assert float(jnp.max(jnp.abs(hvp[0] - hvp[1]))) <= F64_ABS


def test_tapwise_covers_maps_up_to_7x7() -> None:
    dn = lax.conv_dimension_numbers((8, 7, 7, 64), (3, 3, 64, 64), NHWC)
    pad = ((1, 1), (1, 1))
    assert uses_tapwise((8, 7, 7, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)
    assert uses_tapwise((512, 7, 7, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)  # any batch
    assert uses_tapwise((8, 14, 14, 64), (3, 3, 64, 64), (2, 2), pad, dimension_numbers=dn)  # 7x7 output
    assert not uses_tapwise((8, 8, 8, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)
    assert not uses_tapwise((8, 7, 7, 64), (3, 3, 64, 64), (1, 1), "SAME", dimension_numbers=dn)
    assert not uses_tapwise((8, 7, 7, 64), (3, 3, 32, 64), (1, 1), pad, dimension_numbers=dn, feature_group_count=2)


def test_every_1x1_convolution_takes_tapwise_when_differentiated() -> None:
    """A Bottleneck's 1x1 convolutions at any map (TAPWISE_POINTWISE), and only those: as XLA's convolution
    forward, as one matmul when differentiated."""
    dn = lax.conv_dimension_numbers((8, 56, 56, 64), (1, 1, 64, 256), NHWC)
    none = ((0, 0), (0, 0))
    assert uses_tapwise((8, 56, 56, 64), (1, 1, 64, 256), (1, 1), none, dimension_numbers=dn)
    assert uses_tapwise((8, 56, 56, 256), (1, 1, 256, 512), (2, 2), none, dimension_numbers=dn)
    assert not uses_patches((8, 56, 56, 64), (1, 1, 64, 256), (1, 1), none, dimension_numbers=dn)
    assert not uses_tapwise((8, 56, 56, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    assert not uses_tapwise((8, 56, 56, 64), (1, 1, 64, 256), (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    assert not uses_tapwise((8, 56, 56, 64), (1, 1, 32, 256), (1, 1), none, dimension_numbers=dn,
                            feature_group_count=2)

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 10, 10, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((1, 1, 16, 8)), jnp.float32)
    for stride in (1, 2):
        ours = jax.jit(lambda a, b, s=stride: our_conv(a, b, s, 0))
        forward = ours(x, w)
        differentiated, vjp = jax.vjp(ours, x, w)
        # Bit-for-bit: which lowering ran, not only that the numbers are close.
        np.testing.assert_array_equal(forward, jax.jit(lambda a, b, s=stride: xla_conv(a, b, s, 0))(x, w))
        tapwise = jax.jit(lambda a, b, s=stride: tapwise_conv(a, b, (s, s), none))
        np.testing.assert_array_equal(differentiated, tapwise(x, w))
        want = jax.vjp(tapwise, x, w)[1](jnp.ones_like(forward))
        for got, ref in zip(vjp(jnp.ones_like(forward)), want):
            np.testing.assert_array_equal(got, ref)


def test_only_small_plain_2d_maps_take_patches() -> None:
    dn = lax.conv_dimension_numbers((8, 2, 2, 64), (3, 3, 64, 64), NHWC)
    pad = ((1, 1), (1, 1))
    assert uses_patches((8, 2, 2, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)
    assert uses_patches((8, 8, 8, 64), (3, 3, 64, 64), (2, 2), pad, dimension_numbers=dn)  # 4x4 output
    assert not uses_patches((8, 8, 8, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)  # 8x8 output
    # 3x3 and 4x4 maps depend on the patch rows (batch x pixels); 1x1 and 2x2 maps take patches at any batch.
    assert uses_patches((32, 4, 4, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)  # 512 rows
    assert not uses_patches((33, 4, 4, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)  # 528 rows
    assert uses_patches((56, 3, 3, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)  # 504 rows
    assert not uses_patches((128, 8, 8, 64), (3, 3, 64, 64), (2, 2), pad, dimension_numbers=dn)  # 4x4, 2048 rows
    assert uses_patches((4096, 2, 2, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)
    assert uses_patches((4096, 1, 4, 64), (3, 3, 64, 64), (1, 1), pad, dimension_numbers=dn)
    assert not uses_patches((8, 2, 2, 64), (3, 3, 64, 64), (1, 1), "SAME", dimension_numbers=dn)
    assert not uses_patches((8, 2, 2, 64), (3, 3, 64, 64), (1, 1), pad, rhs_dilation=(2, 2), dimension_numbers=dn)
    assert not uses_patches((8, 2, 2, 64), (3, 3, 32, 64), (1, 1), pad, dimension_numbers=dn, feature_group_count=2)
    nchw = lax.conv_dimension_numbers((8, 64, 2, 2), (64, 64, 3, 3), ("NCHW", "OIHW", "NCHW"))
    assert not uses_patches((8, 64, 2, 2), (64, 64, 3, 3), (1, 1), pad, dimension_numbers=nchw)


def _lowered_text(x_shape: tuple, platforms: tuple[str, ...]) -> str:
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, x_shape[-1], 16), jnp.float32)

    return jax.export.export(jax.jit(our_conv), platforms=platforms)(x, w).mlir_module()


def test_small_maps_lower_to_matmul_on_cpu_and_stay_convolutions_on_gpu_and_tpu() -> None:
    assert "stablehlo.convolution" not in _lowered_text((4, 2, 2, 16), ("cpu",))
    assert "stablehlo.dot_general" in _lowered_text((4, 2, 2, 16), ("cpu",))
    for platform in ("cuda", "tpu"):
        text = _lowered_text((4, 2, 2, 16), (platform,))
        assert "stablehlo.convolution" in text and "stablehlo.dot_general" not in text, platform
    assert "stablehlo.convolution" in _lowered_text((4, 16, 16, 16), ("cpu",))  # large maps keep XLA's convolution


def test_small_map_thresholds_are_the_documented_ones() -> None:
    # A guard against a silent change of the documented thresholds (README, conv_lowering's measurements).
    thresholds = (conv_lowering.TINY_MAP_PIXELS, conv_lowering.SMALL_MAP_PIXELS, conv_lowering.SMALL_MAP_ROWS,
                  conv_lowering.TAPWISE_MAP_PIXELS)
    assert thresholds == (4, 16, 512, 49)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (2, 8, 8, 4), (1, 7, 10, 2)])
def test_max_pool_and_its_gradient_equal_torch(shape: tuple, ties: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    if ties:  # ReLU zeros and repeated integers: torch gives each window's gradient to its first maximum
        x = np.maximum(np.round(x), 0.0)
    out_shape = (shape[0], (shape[1] - 1) // 2 + 1, (shape[2] - 1) // 2 + 1, shape[3])
    g = rng.standard_normal(out_shape)
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
    with jax.enable_x64(True):
        y, vjp = jax.vjp(lambda a: max_pool(a, 3, 2, 1), jnp.asarray(x))
        (dx,) = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().permute(0, 2, 3, 1).numpy())
    # Overlapping windows add their gradients in another order: float64 rounding only.
    assert np.max(np.abs(np.asarray(dx) - xt.grad.permute(0, 2, 3, 1).numpy())) <= F64_ABS


def test_cpu_flags_respect_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    jax.devices()  # JAX's backends are up, as in any process that has computed something
    flag = xla_cpu.CPU_FLAGS[0]
    name = flag.split("=", 1)[0]
    monkeypatch.setenv("XLA_FLAGS", f"{name}=invalid")
    assert not xla_cpu.apply_cpu_flags()  # the user's own value of the flag wins
    assert os.environ["XLA_FLAGS"] == f"{name}=invalid"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert not xla_cpu.apply_cpu_flags()  # JAX's backend already started in this process: too late, left alone
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    monkeypatch.setenv(xla_cpu.OPT_OUT, "0")
    monkeypatch.setenv("XLA_FLAGS", flag)
    assert not xla_cpu.apply_cpu_flags()


def test_cpu_flags_are_set_before_jax_starts_and_only_when_asked() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT)}
    code = ("import os, r34_flax, jax; assert 'XLA_FLAGS' not in os.environ, 'set on import'; "
            "from r34_flax.xla_cpu import apply_cpu_flags; assert apply_cpu_flags(); jax.devices(); "
            "print(os.environ['XLA_FLAGS'])")
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == list(xla_cpu.CPU_FLAGS)


def test_grouped_and_dilated_convolutions_go_to_xla() -> None:
    """The CPU lowerings cover plain convolutions only: Bottleneck's grouped and dilated 3x3s take XLA's own
    convolution, forward and differentiated, explicitly (their parity is checked in test_eval_parity.py)."""
    from r34_flax.conv_lowering import uses_patches, uses_tapwise

    dims = lax.conv_dimension_numbers((2, 4, 4, 8), (3, 3, 8, 8), NHWC)
    plain = ((2, 4, 4, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1)), None, None, dims, 1)
    assert uses_patches(*plain) and uses_tapwise(*plain)  # a 4x4 map: the lowerings' territory
    grouped = plain[:1] + ((3, 3, 4, 8),) + plain[2:7] + (2,)
    dilated = plain[:3] + (((2, 2), (2, 2)), None, (2, 2)) + plain[6:]
    for conv in (grouped, dilated):
        assert not uses_patches(*conv) and not uses_tapwise(*conv)
