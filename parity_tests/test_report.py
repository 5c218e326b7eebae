"""`python -m parity_tests.report`: per-module comparison that names the first diverging module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import r34_flax.layers
import r34_flax.model
from parity_tests import report
from parity_tests.helpers import precision, torch_model
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
