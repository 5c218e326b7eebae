"""`python -m r34_flax.convert`: file formats, round trips, strictness, bad input, atomic output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.torch
import torch
import torchvision

from parity_tests.helpers import (TEST_PRESETS, max_abs, nchw_to_nhwc, precision, randomize_batchnorm,
                                  torch_model)
from parity_tests.tolerances import F64_ABS
from r34 import get_preset
from r34_flax import flax_model, torch_to_flax
from r34_flax.checkpoint import model_save_args
from r34_flax.convert import main
from r34_flax.weights_io import read_flax_weights


@pytest.fixture(scope="module")
def state_dicts() -> dict[str, dict[str, torch.Tensor]]:
    return {name: torch_model(get_preset(name), seed=20 + i).state_dict() for i, name in enumerate(TEST_PRESETS)}


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # safetensors stores keys in its own order
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def only_files(directory: Path) -> set[str]:
    """Every entry, temporary files included: a failed command must leave nothing behind."""
    return {p.name for p in directory.iterdir()}


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_round_trip_through_every_file_format(preset: str, state_dicts: dict, tmp_path: Path, capsys) -> None:
    sd = state_dicts[preset]
    torch.save(sd, tmp_path / "src.pth")
    safetensors.torch.save_file(sd, tmp_path / "src.safetensors")
    for src in ("src.pth", "src.safetensors"):
        flax_file = tmp_path / f"{src}.flax.safetensors"
        code, out, err = run(capsys, "to-flax", tmp_path / src, flax_file)
        assert code == 0, err
        assert f"architecture: {preset} " in out
        for fmt in ("pth", "safetensors"):
            back = tmp_path / f"{src}.back.{fmt}"
            assert run(capsys, "to-torch", flax_file, back)[0] == 0
            loaded = torch.load(back, weights_only=True) if fmt == "pth" else safetensors.torch.load_file(back)
            assert_bit_identical(sd, loaded)
    torchvision_like = getattr(torchvision.models, preset, None)
    if torchvision_like is not None:
        torchvision_like().load_state_dict(torch.load(tmp_path / "src.pth.back.pth", weights_only=True), strict=True)


def test_orbax_checkpoint_directory_is_accepted(state_dicts: dict, tmp_path: Path, capsys) -> None:
    sd = state_dicts["tiny"]
    config, flat = torch_to_flax(sd)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("model", "config")) as manager:
        manager.save(7, args=ocp.args.Composite(**model_save_args(config, flat)))
        manager.wait_until_finished()
    for src in (tmp_path / "ckpt", tmp_path / "ckpt" / "7"):
        dst = tmp_path / f"{src.name}.pth"
        code, out, _ = run(capsys, "to-torch", src, dst)
        assert code == 0 and "orbax checkpoint, step 7" in out
        assert_bit_identical(sd, torch.load(dst, weights_only=True))


def test_checkpoint_dicts_and_wrapper_prefixes(state_dicts: dict, tmp_path: Path, capsys) -> None:
    sd = state_dicts["tiny"]
    wrapped = {"epoch": 5, "optimizer": {"lr": 0.1}, "state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    code, out, _ = run(capsys, "to-flax", tmp_path / "ckpt.pth", tmp_path / "out.safetensors")
    assert code == 0
    assert "using the state_dict under key 'state_dict'" in out
    assert "stripped prefix 'module.' from all" in out and "stripped prefix '_orig_mod.' from all" in out
    config, flat, _ = read_flax_weights(tmp_path / "out.safetensors")
    assert_bit_identical(sd, __import__("r34_flax").flax_to_torch(flat, config))


def test_dtypes_kept_cast_and_reported(state_dicts: dict, tmp_path: Path, capsys) -> None:
    sd = state_dicts["tiny"]
    floats = sum(v.is_floating_point() for v in sd.values())
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "half.pth")
    torch.save({k: v.double() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "double.pth")
    code, out, _ = run(capsys, "to-flax", tmp_path / "half.pth", tmp_path / "half.safetensors")
    assert code == 0 and not any(line.startswith("cast") for line in out.splitlines())
    assert read_flax_weights(tmp_path / "half.safetensors")[1][("conv1", "kernel")].dtype == np.float16
    code, out, _ = run(capsys, "to-flax", tmp_path / "double.pth", tmp_path / "double.safetensors")
    assert code == 0 and f"cast {floats} tensor(s) float64 -> float32" in out
    code, out, _ = run(capsys, "to-torch", tmp_path / "half.safetensors", tmp_path / "bf16.pth", "--dtype", "bfloat16")
    assert code == 0 and f"cast {floats} tensor(s) float16 -> bfloat16" in out
    back = torch.load(tmp_path / "bf16.pth", weights_only=True)
    assert back["conv1.weight"].dtype == torch.bfloat16 and back["bn1.num_batches_tracked"].dtype == torch.int64


def test_cast_that_overflows_is_refused(state_dicts: dict, tmp_path: Path, capsys) -> None:
    sd = dict(state_dicts["tiny"])
    sd["fc.bias"] = torch.full_like(sd["fc.bias"], 1e6)
    torch.save(sd, tmp_path / "big.pth")
    code, _, err = run(capsys, "to-flax", tmp_path / "big.pth", tmp_path / "out.safetensors", "--dtype", "float16")
    assert code == 2 and "fc/bias: casting float32 to float16 overflows to Inf" in err
    assert only_files(tmp_path) == {"big.pth"}


def _bad(sd: dict, change: str) -> dict:
    sd = dict(sd)
    if change == "missing":
        del sd["layer3.0.downsample.0.weight"]
    elif change == "unexpected":
        sd["layer4.0.se.fc.weight"] = torch.zeros(4, 4)
    elif change == "shape":
        sd["layer2.0.conv1.weight"] = torch.zeros(16, 8, 5, 5)
    elif change == "nan":
        sd["layer4.0.bn2.running_var"] = sd["layer4.0.bn2.running_var"].clone()
        sd["layer4.0.bn2.running_var"][3] = float("nan")
    elif change == "inf":
        sd["fc.weight"] = sd["fc.weight"].clone()
        sd["fc.weight"][0, 0] = float("inf")
    return sd


BAD_INPUTS = {
    "missing": "missing key 'layer3.0.downsample.0.weight' (shape (32, 16, 1, 1))",
    "unexpected": "unexpected key 'layer4.0.se.fc.weight' (shape (4, 4))",
    "shape": "layer2.0.conv1.weight: shape (16, 8, 5, 5), expected (16, 8, 3, 3)",
    "nan": "layer4.0.bn2.running_var: holds 1 NaN/Inf value(s)",
    "inf": "fc.weight: holds 1 NaN/Inf value(s)",
}


@pytest.mark.parametrize("change", list(BAD_INPUTS))
def test_bad_weights_exit_2_with_message_and_no_file(change: str, state_dicts: dict, tmp_path: Path, capsys) -> None:
    torch.save(_bad(state_dicts["tiny"], change), tmp_path / "bad.pth")
    code, out, err = run(capsys, "to-flax", tmp_path / "bad.pth", tmp_path / "out.safetensors")
    assert code == 2 and out == ""
    assert f"  - {BAD_INPUTS[change]}" in err
    assert only_files(tmp_path) == {"bad.pth"}
    code, out, _ = run(capsys, "inspect", tmp_path / "bad.pth")
    assert code == 2 and BAD_INPUTS[change] in out


def test_all_problems_in_one_error(state_dicts: dict, tmp_path: Path, capsys) -> None:
    sd = state_dicts["tiny"]
    for change in BAD_INPUTS:
        sd = _bad(sd, change)
    torch.save(sd, tmp_path / "bad.pth")
    code, _, err = run(capsys, "to-flax", tmp_path / "bad.pth", tmp_path / "out.safetensors")
    assert code == 2 and err.startswith("error: cannot convert weights: 5 problem(s):")
    assert all(message in err for message in BAD_INPUTS.values())


def test_other_architectures_are_refused(state_dicts: dict, tmp_path: Path, capsys) -> None:
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "mobilenet.pth")
    code, _, err = run(capsys, "to-flax", tmp_path / "mobilenet.pth", tmp_path / "out.safetensors")
    assert code == 2 and "no 4-D 'conv1.weight'" in err and "not a ResNet" in err
    assert only_files(tmp_path) == {"mobilenet.pth"}


def test_inspect_names_the_torchvision_builder(tmp_path: Path, capsys) -> None:
    torch.save(torchvision.models.resnext50_32x4d(num_classes=7).state_dict(), tmp_path / "x50.pth")
    code, out, _ = run(capsys, "inspect", tmp_path / "x50.pth")
    assert code == 0 and "resnext50_32x4d body (block=bottleneck, stages=(3, 4, 6, 3)" in out
    assert "groups=32, width_per_group=4" in out and "heads: fc=7" in out


def test_heads_contradicting_preset(state_dicts: dict, tmp_path: Path, capsys) -> None:
    torch.save(state_dicts["resnet18"], tmp_path / "r18.pth")
    code, _, err = run(capsys, "to-flax", tmp_path / "r18.pth", tmp_path / "out.safetensors", "--preset", "resnet34")
    assert code == 2 and "weights have stage_sizes=(2, 2, 2, 2) but the requested architecture has (3, 4, 6, 3)" in err
    sd = dict(state_dicts["resnet34"])
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:10], sd["fc.bias"][:10]
    torch.save(sd, tmp_path / "r34_10.pth")
    code, _, err = run(capsys, "to-flax", tmp_path / "r34_10.pth", tmp_path / "out.safetensors", "--preset", "resnet34")
    assert code == 2 and "weights have heads=(('fc', 10),) but the requested architecture has (('fc', 1000),)" in err
    assert only_files(tmp_path) == {"r18.pth", "r34_10.pth"}


def test_truncated_files(state_dicts: dict, tmp_path: Path, capsys) -> None:
    torch.save(state_dicts["tiny"], tmp_path / "t.pth")
    safetensors.torch.save_file(state_dicts["tiny"], tmp_path / "t.safetensors")
    for name in ("t.pth", "t.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        code, _, err = run(capsys, "to-flax", tmp_path / name, tmp_path / "out.safetensors")
        assert code == 2, name
        assert "truncated or not a torch file" in err or "not a readable safetensors file" in err, err
    assert not (tmp_path / "out.safetensors").exists()


class _Payload:
    """Pickles as a call to os.system: loading it without weights_only would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_and_not_run(state_dicts: dict, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": state_dicts["tiny"], "hook": _Payload(marker)}, tmp_path / "evil.pth")
    code, _, err = run(capsys, "to-flax", tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert code == 2 and "refused: unpickling it needs code" in err and "weights_only=True" in err
    assert not marker.exists()
    assert run(capsys, "inspect", tmp_path / "evil.pth")[0] == 2
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_existing_output_needs_force(state_dicts: dict, tmp_path: Path, capsys) -> None:
    torch.save(state_dicts["tiny"], tmp_path / "a.pth")
    (tmp_path / "out.safetensors").write_bytes(b"keep me")
    code, _, err = run(capsys, "to-flax", tmp_path / "a.pth", tmp_path / "out.safetensors")
    assert code == 2 and "already exists; pass --force" in err
    assert (tmp_path / "out.safetensors").read_bytes() == b"keep me"
    assert run(capsys, "to-flax", tmp_path / "a.pth", tmp_path / "out.safetensors", "--force")[0] == 0
    assert read_flax_weights(tmp_path / "out.safetensors")[0] == get_preset("tiny")
    assert only_files(tmp_path) == {"a.pth", "out.safetensors"}


def test_wrong_kinds_of_files(state_dicts: dict, tmp_path: Path, capsys) -> None:
    torch.save(state_dicts["tiny"], tmp_path / "a.pth")
    code, _, err = run(capsys, "to-flax", tmp_path / "a.pth", tmp_path / "out.npz")
    assert code == 2 and "Flax weights are written as .safetensors, got '.npz'" in err
    code, _, err = run(capsys, "to-flax", tmp_path / "missing.pth", tmp_path / "out.safetensors")
    assert code == 2 and "missing.pth: no such file" in err
    code, _, err = run(capsys, "to-torch", tmp_path / "a.pth", tmp_path / "out.pth")
    assert code == 2 and "unknown suffix '.pth'; Flax weights are .safetensors or an orbax directory" in err
    safetensors.torch.save_file(state_dicts["tiny"], tmp_path / "torch.safetensors")
    code, _, err = run(capsys, "to-torch", tmp_path / "torch.safetensors", tmp_path / "out.pth")
    assert code == 2 and "not a Flax weights file of this project" in err
    code, _, err = run(capsys, "to-flax", tmp_path / "a.pth", tmp_path / "no_dir" / "out.safetensors")
    assert code == 2 and "does not exist" in err


def test_inspect_reports_architecture(state_dicts: dict, tmp_path: Path, capsys) -> None:
    torch.save(state_dicts["grapheme34"], tmp_path / "g.pth")
    code, out, _ = run(capsys, "inspect", tmp_path / "g.pth")
    assert code == 0
    assert "architecture: grapheme34 (block=basic, stages=(3, 4, 6, 3)" in out
    assert "heads: grapheme_root=168, vowel_diacritic=11, consonant_diacritic=7" in out
    assert "dtypes: float32 x186, int64 x36" in out and "problems: none" in out
    assert run(capsys, "to-flax", tmp_path / "g.pth", tmp_path / "g.safetensors")[0] == 0
    code, out, _ = run(capsys, "inspect", tmp_path / "g.safetensors")
    assert code == 0 and "side: Flax" in out and "dtypes: float32 x186, int32 x36" in out


def test_help_of_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    for sub in ([], ["to-flax"], ["to-torch"], ["inspect"]):
        with pytest.raises(SystemExit) as e:
            main([*sub, "--help"])
        assert e.value.code == 0 and "usage: python -m r34_flax.convert" in capsys.readouterr().out


def test_exit_code_of_the_real_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "r34_flax.convert", "inspect", str(tmp_path / "nope.pth")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "nope.pth: no such file" in done.stderr


@pytest.mark.slow
def test_torchvision_checkpoint_to_flax_logits_float64_at_224(tmp_path: Path, capsys) -> None:
    """A checkpoint made by torchvision.models.resnet34 itself: the Flax twin from the file reproduces its logits."""
    torch.manual_seed(30)
    tv = randomize_batchnorm(torchvision.models.resnet34(), seed=30).double()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    assert run(capsys, "to-flax", tmp_path / "tv.pth", tmp_path / "tv.safetensors", "--dtype", "float64")[0] == 0
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224))
    with torch.no_grad():
        ref = tv(torch.from_numpy(x)).numpy()
    with precision("float64"):
        config, flat, _ = read_flax_weights(tmp_path / "tv.safetensors")
        model = flax_model(config, flat)
        model.eval()
        got = np.asarray(model(jnp.asarray(nchw_to_nhwc(x))))
    assert max_abs(ref, got) <= F64_ABS
    np.testing.assert_array_equal(ref.argmax(-1), got.argmax(-1))
