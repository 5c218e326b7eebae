"""The same files give the same logits: torchvision's ImageFolder + IMAGENET1K_V1.transforms() + a torchvision
ResNet against this project's image-folder pipeline + the Flax twin with the same weights, per image, in float32
and float64; and `--eval-only` of both trainers scores a folder as torchvision does."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision import datasets
from torchvision import transforms as T
from torchvision.models import ResNet34_Weights

from parity_tests.helpers import max_abs, precision, randomize_batchnorm
from parity_tests.image_files import parity_folder, simple_folder
from parity_tests.tolerances import F32_REL, F64_ABS
from r34_flax import from_torch
from r34_flax.weights_io import write_torch_weights
from train import loop_flax, loop_torch
from train.data import pipeline
from train.data.transforms import normalization_table
from train.step_flax import normalize_images

# Argmax equality is a fair check only where the top two logits are further apart than float32 can blur them:
# each image's gap must exceed this many times the float32 bound (else the test's weights are a bad choice).
ARGMAX_GAP_MARGIN = 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("jpeg_parity")
    return parity_folder(tmp / "folder"), tmp / "prepared"


def torchvision_inputs(root: Path) -> tuple[torch.Tensor, list[str]]:
    reference = datasets.ImageFolder(str(root / "val"), transform=ResNet34_Weights.IMAGENET1K_V1.transforms())
    x, _ = next(iter(torch.utils.data.DataLoader(reference, batch_size=len(reference), shuffle=False)))
    return x, [str(Path(p).relative_to(root)) for p, _ in reference.samples]


def project_inputs(root: Path, prepared: Path) -> tuple[np.ndarray, list[str]]:
    spec, sources = pipeline.load("imagefolder", root, prepared_dir=prepared)
    names = [sources["eval"][i]["file_name"].decode() for i in range(spec.num_eval)]
    batch = next(pipeline.eval_batches(sources["eval"], spec, spec.num_eval))
    # uint8 as shipped, normalised on the device as the trainer's steps do
    return np.asarray(normalize_images(jnp.asarray(batch["image"]), normalization_table(spec))), names


def test_same_files_same_logits(folder: tuple[Path, Path]) -> None:
    root, prepared = folder
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=3), seed=0)
    x, names = torchvision_inputs(root)
    images, our_names = project_inputs(root, prepared)
    order = [our_names.index(n) for n in names]
    images = images[order]
    np.testing.assert_array_equal(images, x.permute(0, 2, 3, 1).numpy())  # same files -> same input, bit for bit
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double()).numpy()
        theirs32 = model(x).numpy()
    logits = {}
    for dtype in ("float64", "float32"):
        with precision(dtype):
            flax = from_torch(model.state_dict())
            flax.eval()
            logits[dtype] = np.asarray(flax(jnp.asarray(images.astype(dtype))))
    assert logits["float64"].dtype == np.float64 and logits["float32"].dtype == np.float32
    assert max_abs(exact, logits["float64"]) <= F64_ABS
    scale = np.max(np.abs(exact), axis=1)
    per_image = np.max(np.abs(logits["float32"] - exact), axis=1) / scale
    assert np.all(per_image <= F32_REL), dict(zip(names, per_image))
    top2 = np.sort(exact, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > ARGMAX_GAP_MARGIN * F32_REL * scale), "near-tie: choose other weights"
    for got in (logits["float64"], logits["float32"], theirs32):
        np.testing.assert_array_equal(got.argmax(1), exact.argmax(1))
    print(f"\nJPEG to logits, {len(names)} files: float64 max|d| {max_abs(exact, logits['float64']):.2e}; "
          f"float32 worst per-image rel {per_image.max():.2e} (bound {F32_REL})")


def test_eval_only_scores_a_folder_as_torchvision_does(tmp_path: Path, capsys) -> None:
    """Both trainers' --eval-only on a torch .pth of a model of this project's `tiny` preset at 64 px (crop 64 of
    a resize to 73): top-1 equals what torchvision's ImageFolder with Resize(73) + CenterCrop(64) gives."""
    from r34 import get_preset
    from r34_torch import resnet as torch_resnet

    root = simple_folder(tmp_path / "folder", per_class=4, size=(120, 90))
    torch.manual_seed(3)
    model = randomize_batchnorm(torch_resnet(get_preset("tiny").replace(heads=(("fc", 3),))), seed=3)
    weights = tmp_path / "tiny.pth"
    write_torch_weights(weights, model.state_dict())
    tf = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    reference = datasets.ImageFolder(str(root / "val"), transform=tf)
    x, y = next(iter(torch.utils.data.DataLoader(reference, batch_size=len(reference))))
    with torch.no_grad():
        expected = float((model(x).argmax(1) == y).double().mean())
    for framework, main in (("flax", loop_flax.main), ("torch", loop_torch.main)):
        workdir = tmp_path / framework
        args = ["--eval-only", "--init-from", str(weights), "--dataset", "imagefolder", "--data-dir", str(root),
                "--prepared-dir", str(tmp_path / "prepared"), "--preset", "tiny", "--crop-size", "64",
                "--batch-size", "5", "--workdir", str(workdir)]
        assert main(args) == 0
        result = json.loads((workdir / "eval.json").read_text())
        assert result["metrics"] == {"top1/fc": pytest.approx(expected, abs=1e-12)}, framework
        assert (result["images"], result["eval_resize"], result["framework"]) == (12, 73, framework)
        assert "top1/fc:" in capsys.readouterr().out
        assert not (workdir / "checkpoints").exists() and not (workdir / "checkpoint.pth").exists()


def test_eval_only_refuses_weights_without_the_data_sets_head(tmp_path: Path, capsys) -> None:
    root = simple_folder(tmp_path / "folder")
    weights = tmp_path / "r18.pth"
    write_torch_weights(weights, torchvision.models.resnet18(num_classes=10).state_dict())
    args = ["--eval-only", "--init-from", str(weights), "--dataset", "imagefolder", "--data-dir", str(root),
            "--prepared-dir", str(tmp_path / "prepared"), "--preset", "resnet18", "--workdir", str(tmp_path / "r")]
    for main in (loop_flax.main, loop_torch.main):
        assert main(args) == 2
        assert "has 10 classes in head 'fc' but the data set has 3" in capsys.readouterr().err
