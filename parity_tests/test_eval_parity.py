"""Eval-mode parity of the twins with the same converted weights and randomised BatchNorm state.

Every stage (stem, layer1..4, pooled features) and every head is compared, so a failure names the first stage
that diverges. Sizes: 224 and 225 (odd sizes hide 'SAME'-padding bugs, even sizes expose them), marked slow, and
a small even size for grapheme34; every torchvision builder at small odd and even sizes is in test_family_parity.py.
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from parity_tests.helpers import (
    as_torch_layout,
    assert_stages_match,
    nchw_to_nhwc,
    precision,
    stage_errors,
    torch_model,
)
from parity_tests.roundings import DEFAULT, ROUNDINGS, Rounding
from r34 import get_preset
from r34_flax import from_torch

BATCH = 2
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Full size (slow): ResNet-34, the heart, and grapheme34 (1 channel, three heads) at 224 and 225; grapheme34 also at
# 64 for quick runs. Small odd and even sizes of every torchvision builder (resnet18 and resnet34 included) are in
# test_family_parity.py.
CASES = [pytest.param(preset, size, marks=pytest.mark.slow) for preset in ("resnet34", "grapheme34")
         for size in (224, 225)] + [("grapheme34", 64)]


@pytest.fixture(scope="module")
def torch_models() -> dict:
    return {}


def run_twins(preset: str, size: int, dtype: str, cache: dict, seed: int = 0,
              rounding: Rounding = DEFAULT) -> tuple[dict, dict, dict]:
    """(torch outputs, flax outputs in torch layout, exact outputs), all as numpy, for one preset, input size and
    dtype, under `rounding` (parity_tests/roundings.py). The exact outputs are torch's in float64 from the same
    weights and input: the referee of float32 checks (see tolerances.F32_REL)."""
    config = get_preset(preset)
    if preset not in cache:
        cache[preset] = torch_model(config, seed)
    model = cache[preset].to(DTYPES[dtype])
    if rounding != DEFAULT:  # the cached model stays as it is
        model = rounding.torch_model(copy.deepcopy(model))
    x = np.random.default_rng(size).standard_normal((BATCH, config.in_channels, size, size))
    x = rounding.nudge(x.astype(np.dtype(dtype)), 0)
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model.forward_intermediates(rounding.torch_images(torch.from_numpy(x))).items()}
    with precision(dtype), rounding.applied():
        flax = from_torch(model.state_dict(), config)
        flax.eval()
        out = flax.forward_intermediates(jnp.asarray(nchw_to_nhwc(x)))
        got = {k: as_torch_layout(np.asarray(v)) for k, v in out.items()}
    for k in ref:
        assert got[k].dtype == ref[k].dtype, f"{k}: flax computed in {got[k].dtype}, torch in {ref[k].dtype}"
    exact = ref
    if dtype != "float64":
        with torch.no_grad():
            exact = {k: v.numpy() for k, v in copy.deepcopy(model).double().forward_intermediates(
                rounding.torch_images(torch.from_numpy(x.astype(np.float64)))).items()}
    return ref, got, exact


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("preset, size", CASES)
def test_eval_logits_and_stages_match(preset: str, size: int, dtype: str, torch_models: dict) -> None:
    ref, got, exact = run_twins(preset, size, dtype, torch_models)
    assert_stages_match(exact, got, dtype)
    for head in get_preset(preset).head_names:
        np.testing.assert_array_equal(exact[head].argmax(-1), got[head].argmax(-1), err_msg=f"argmax of {head}")
    # The figures the README quotes (visible with -s): float32 twin against twin, and the Flax twin against float64.
    rows = stage_errors(ref, got)
    heads = [r for r in rows if r[0] in get_preset(preset).head_names]
    logits = (max(r[1] for r in heads), max(r[2] for r in heads))
    worst = max(rows, key=lambda r: r[2])
    note = ""
    if dtype != "float64":
        exact_heads = [r[2] for r in stage_errors(exact, got) if r[0] in get_preset(preset).head_names]
        note = f"; Flax vs float64: logits rel={max(exact_heads):.3e}"
    print(
        f"\n{preset} {size} {dtype}: logits max|d|={logits[0]:.3e} rel={logits[1]:.3e}; "
        f"worst output {worst[0]} max|d|={worst[1]:.3e} rel={worst[2]:.3e}{note}"
    )


def test_same_padding_is_caught_on_even_inputs_and_hidden_on_odd(torch_models: dict) -> None:
    """The suite must be able to fail: inject Flax's 'SAME' padding into the stem conv and the check names
    "stem" at an even size, while an odd size hides it, which is why both are tested."""
    config = get_preset("resnet18")
    if "resnet18" not in torch_models:
        torch_models["resnet18"] = torch_model(config, 0)
    model = torch_models["resnet18"].to(torch.float64)
    outcome = {}
    for size in (64, 65):
        x = np.random.default_rng(size).standard_normal((BATCH, 3, size, size))
        with torch.no_grad():
            ref = {k: v.numpy() for k, v in model.forward_intermediates(torch.from_numpy(x)).items()}
        with precision("float64"):
            flax = from_torch(model.state_dict(), config)
            flax.eval()
            flax.conv1.padding = "SAME"
            out = flax.forward_intermediates(jnp.asarray(nchw_to_nhwc(x)))
            got = {k: as_torch_layout(np.asarray(v)) for k, v in out.items()}
        try:
            assert_stages_match(ref, got, "float64")
            outcome[size] = None
        except AssertionError as e:
            outcome[size] = str(e)
    assert outcome[64] is not None and outcome[64].startswith("first divergence at 'stem'"), outcome[64]
    assert outcome[65] is None, "odd input: SAME pads (3, 3) like torch, so the stem must still match"


# The Flax side's roundings: the referee is float64, so torch's rounding does not enter the check.
@pytest.mark.parametrize("rounding", [name for name, r in ROUNDINGS.items() if r.changes_flax])
@pytest.mark.parametrize("preset", ["resnet34", "grapheme34"])
def test_eval_float32_holds_under_other_roundings(preset: str, rounding: str, torch_models: dict) -> None:
    """The float32 bounds hold for other correct roundings of the same computation, not only this CPU's."""
    ref, got, exact = run_twins(preset, 64, "float32", torch_models, rounding=ROUNDINGS[rounding])
    assert_stages_match(exact, got, "float32")
    twin = max(r[2] for r in stage_errors(ref, got) if r[0] in get_preset(preset).head_names)
    heads = [r for r in stage_errors(exact, got) if r[0] in get_preset(preset).head_names]
    print(f"\n{preset} 64 float32 ({rounding}): Flax vs float64 logits rel {max(r[2] for r in heads):.2e}, twin vs "
          f"twin {twin:.2e}")


# Dilation (torchvision's replace_stride_with_dilation), eval mode, float64: a dilated ResNet-50 (strided layer2,
# dilated layer3-4: output stride 8). The undilated family, every builder in both precisions, is in
# test_family_parity.py.
BOTTLENECK_CASES = [("resnet50", 32, "float64", (False, True, True))]


@pytest.mark.parametrize("preset, size, dtype, dilation", BOTTLENECK_CASES)
def test_bottleneck_eval_logits_and_stages_match(preset: str, size: int, dtype: str, dilation: tuple) -> None:
    config = get_preset(preset).replace(replace_stride_with_dilation=dilation)
    model = torch_model(config, seed=3).to(DTYPES[dtype])
    x = np.random.default_rng(size).standard_normal((BATCH, 3, size, size)).astype(dtype)
    with torch.no_grad():
        exact = {k: v.numpy() for k, v in copy.deepcopy(model).double().forward_intermediates(
            torch.from_numpy(x.astype(np.float64))).items()}
    with precision(dtype):
        flax = from_torch(model.state_dict(), config)
        flax.eval()
        got = {k: as_torch_layout(np.asarray(v)) for k, v in flax.forward_intermediates(jnp.asarray(
            nchw_to_nhwc(x))).items()}
    assert got["fc"].dtype == np.dtype(dtype)
    assert_stages_match(exact, got, dtype)
    np.testing.assert_array_equal(exact["fc"].argmax(-1), got["fc"].argmax(-1))
    rows = stage_errors(exact, got)
    print(f"\n{preset} {size} {dtype} dilation={dilation}: logits max|d|={rows[-1][1]:.2e} rel={rows[-1][2]:.2e}; "
          f"worst stage {max(rows, key=lambda r: r[2])[0]}")
