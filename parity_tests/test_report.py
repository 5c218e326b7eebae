"""`python -m parity_tests.report`: per-module comparison that names the first diverging module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import r34_flax.conversion
import r34_flax.layers
import r34_flax.model
from parity_tests import report
from parity_tests.helpers import FAMILY, precision, torch_model
from r34 import get_preset
from r34.machine import cpu_description
from r34_flax import from_torch


def test_healthy_twins_pass_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plot = tmp_path / "errors.png"
    assert report.main(["--preset", "tiny", "--size", "32", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "all 41 modules within tolerance" in out
    assert out.index(" conv1 ") < out.index(" layer1.0.conv1 ") < out.index(" layer2.0.downsample.0 ") < out.index(" fc ")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_injected_same_padding_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A Flax twin built with 'SAME' padding on its strided 3x3 convs: the report names the first one."""
    original = r34_flax.layers.conv

    def same_padding_conv(in_features, out_features, kernel_size, stride, **kwargs):
        layer = original(in_features, out_features, kernel_size, stride, **kwargs)
        if kernel_size == 3 and stride == 2:
            layer.padding = "SAME"
        return layer

    monkeypatch.setattr(r34_flax.model, "conv", same_padding_conv)
    code = report.main(["--preset", "tiny", "--size", "32", "--dtype", "float64"])
    out = capsys.readouterr().out
    assert code == report.EXIT_DIVERGES
    assert "FIRST DIVERGENCE: layer2.0.conv1 " in out
    assert "layer1.0.conv1 " in out.split("FIRST DIVERGENCE")[0]


def test_wrong_batchnorm_eps_is_named_in_eval_mode() -> None:
    config = get_preset("tiny")
    reference = torch_model(config, seed=1).double()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    with precision("float64"):
        candidate = from_torch(reference.state_dict(), config)
        candidate.layer3[1].bn2.eps = 1e-3
        rows = report.compare(reference, candidate, x, "float64", "eval")
    first_bad = next(r for r in rows if not r.ok)
    assert first_bad.module == "layer3.1.bn2"
    assert all(r.ok for r in rows[: rows.index(first_bad)])


def test_weights_file_and_train_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save(torch_model(get_preset("tiny"), seed=2).state_dict(), tmp_path / "w.pth")
    # 64 px: at 32 px layer4 is 1x1 and its train-mode BatchNorm normalises 3 values, where float32 twin against twin
    # reached 1.8e-5 to 4.9e-5 of the 5e-5 tolerance (layer4 BN outputs, depending on the weights); at 64 px 2.8e-6.
    assert report.main(["--weights", str(tmp_path / "w.pth"), "--mode", "train", "--size", "64", "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "train mode, float32, input 3x3x64x64" in out
    assert f"CPU: {cpu_description()}" in out


def test_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "mobilenet.pth")
    assert report.main(["--weights", str(tmp_path / "mobilenet.pth")]) == report.EXIT_BAD_INPUT
    assert "not a ResNet" in capsys.readouterr().err
    assert report.main(["--preset", "tiny", "--size", "0"]) == report.EXIT_BAD_INPUT
    assert report.main(["--preset", "tiny", "--plot", str(tmp_path / "x.jpg")]) == report.EXIT_BAD_INPUT
    assert "expected a .png" in capsys.readouterr().err


@pytest.mark.parametrize("preset", FAMILY)
def test_every_body_of_the_family_is_reported_clean(preset: str) -> None:
    """Every module of each of torchvision's ten builders within the suite's bounds, at the family checks' size (32
    px, layer4 1x1), float64 and float32 (against float64: the report's and the suite's referee)."""
    config = get_preset(preset)
    reference = torch_model(config, seed=3).double()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    for dtype in ("float64", "float32"):
        with precision(dtype):
            candidate = from_torch({k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v
                                    for k, v in reference.state_dict().items()}, config)
            rows = report.compare(reference, candidate, x.astype(dtype), dtype, "eval")
        bad = [r for r in rows if not r.ok]
        assert not bad, f"{preset} {dtype}: {report.render(bad)}"
        assert len(rows) == len([n for n, m in reference.named_modules() if n and not isinstance(
            m, (torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d))])


def stride_on_conv1(model) -> None:
    """ResNet V1's Bottleneck (Caffe's, the original paper's): the stride on the first 1x1, not on the 3x3."""
    for stage in ("layer2", "layer3", "layer4"):
        block = getattr(model, stage)[0]
        block.conv1.strides, block.conv2.strides = block.conv2.strides, block.conv1.strides


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bottleneck_v1_stride_is_flagged_and_named(dtype: str) -> None:
    """A Flax Bottleneck with the stride on conv1 (ResNet V1) instead of conv2 (torchvision's V1.5): flagged, and the
    first module named is layer2.0.conv1; everything before it is clean."""
    config = get_preset("tiny_bottleneck")
    reference = torch_model(config, seed=1).double()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(dtype)
    with precision(dtype):
        candidate = from_torch({k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v
                                for k, v in reference.state_dict().items()}, config)
        stride_on_conv1(candidate)
        rows = report.compare(reference, candidate, x, dtype, "eval")
    first = next(r for r in rows if not r.ok)
    assert first.module == "layer2.0.conv1", report.render(rows)
    assert all(r.ok for r in rows[: rows.index(first)])


def test_user_weights_and_config_divergence_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """A user's own weights file and own architecture (a ResNetConfig JSON): clean exit 0; with a Flax bug (V1
    stride) exit 1 naming the module, as a CI job would see it."""
    config = get_preset("tiny_bottleneck").replace(heads=(("fc", 5),))
    torch.save(torch_model(config, seed=4).state_dict(), tmp_path / "mine.pth")
    (tmp_path / "mine.json").write_text(json.dumps(config.to_dict()))
    for source in (["--weights", str(tmp_path / "mine.pth")], ["--config", str(tmp_path / "mine.json")]):
        assert report.main([*source, "--size", "32"]) == 0
        assert "within tolerance" in capsys.readouterr().out
    original = r34_flax.conversion.flax_model

    def buggy(*args, **kwargs):
        model = original(*args, **kwargs)
        stride_on_conv1(model)
        return model

    monkeypatch.setattr(r34_flax.conversion, "flax_model", buggy)
    assert report.main(["--weights", str(tmp_path / "mine.pth"), "--size", "32"]) == report.EXIT_DIVERGES
    assert "FIRST DIVERGENCE: layer2.0.conv1 " in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{\"block\": \"hexagonal\"}")
    assert report.main(["--config", str(tmp_path / "bad.json")]) == report.EXIT_BAD_INPUT
