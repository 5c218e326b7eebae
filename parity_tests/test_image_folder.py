"""Image folders (`--dataset imagefolder`): torchvision's classes and files, the original bytes stored, prepared once
and atomically, the eval images pixel-identical to torchvision's from the same files, and every bad file named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets
from torchvision.models import ResNet34_Weights

from parity_tests import image_files
from parity_tests.image_files import BAD, GOOD, parity_folder, simple_folder, write
from train.data import image_folder, pipeline, transforms


@pytest.fixture(scope="session")
def parity_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return parity_folder(tmp_path_factory.mktemp("images") / "folder")


@pytest.fixture(scope="session")
def parity_data(parity_root: Path, tmp_path_factory: pytest.TempPathFactory):
    return pipeline.load("imagefolder", parity_root, prepared_dir=tmp_path_factory.mktemp("prepared"))


def records(source) -> dict[str, dict]:
    return {source[i]["file_name"].decode(): source[i] for i in range(len(source))}


def test_classes_files_and_bytes_are_torchvisions(parity_root: Path, parity_data) -> None:
    spec, sources = parity_data
    for split, folder in (("train", "train"), ("eval", "val")):
        reference = datasets.ImageFolder(str(parity_root / folder))
        assert spec.heads == (("fc", len(reference.classes)),)
        got = records(sources[split])
        expected = {str(Path(path).relative_to(parity_root)): label for path, label in reference.samples}
        assert {name: int(r["label"]) for name, r in got.items()} == expected
        for name, record in got.items():
            assert record["image"] == (parity_root / name).read_bytes()  # the file's own bytes, not re-encoded
    assert reference.class_to_idx == {"Bird": 0, "ant": 1, "cat": 2}  # capitals sort first, as sorted() does
    assert (spec.augment, spec.image_size, spec.eval_resize, spec.flip) == ("imagenet", 224, 256, True)
    assert spec.eval_split == "validation" and spec.name.startswith("imagefolder/folder_")


def test_eval_images_are_torchvisions_pixel_for_pixel(parity_root: Path, parity_data) -> None:
    """Every kind of file (CMYK and grayscale JPEG, PNG behind .JPEG, RGBA, palette, BMP, WebP) and shape
    (landscape, portrait, square, smaller than the crop, odd): the normalised eval tensor through this pipeline
    equals torchvision's ImageFolder + ResNet34_Weights.IMAGENET1K_V1.transforms() bit for bit, so the uint8 image
    the pipeline ships is identical too (max |d| 0)."""
    spec, sources = parity_data
    reference = datasets.ImageFolder(str(parity_root / "val"), transform=ResNet34_Weights.IMAGENET1K_V1.transforms())
    got = records(sources["eval"])
    assert len(got) == len(reference) == sum(len(v) for v in image_files.PARITY_VAL.values())
    for index, (path, _) in enumerate(reference.samples):
        image = transforms.eval_transform(got[str(Path(path).relative_to(parity_root))], spec)["image"]
        ours = transforms.normalize(image, transforms.normalization_table(spec))  # what the steps compute
        theirs = reference[index][0].permute(1, 2, 0).numpy()
        assert ours.shape == theirs.shape == (224, 224, 3) and ours.dtype == theirs.dtype == np.float32
        assert np.array_equal(ours, theirs), f"{path}: max |d| {np.max(np.abs(ours - theirs))}"


def test_a_second_run_reuses_the_prepared_data(parity_root: Path, parity_data, monkeypatch) -> None:
    spec, _ = parity_data
    monkeypatch.setattr(image_folder, "check_files", lambda *a: pytest.fail("prepared again"))
    prepared = Path(pipeline.load("imagefolder", parity_root, prepared_dir=_prepared_dir(parity_data))[0].name)
    assert str(prepared) == spec.name


def _prepared_dir(data) -> Path:
    return Path(data[1]["train"].dataset_info.data_dir).parents[2]


def test_an_interrupted_preparation_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch) -> None:
    root = simple_folder(tmp_path / "folder")

    def crash(self, split):
        yield from list(original(self, split))[:1]
        raise KeyboardInterrupt  # the user pressing ^C half-way

    original = image_folder.ImageFolderRecords._generate_examples
    monkeypatch.setattr(image_folder.ImageFolderRecords, "_generate_examples", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared")
    assert not list((tmp_path / "prepared").rglob("dataset_info.json"))
    monkeypatch.setattr(image_folder.ImageFolderRecords, "_generate_examples", original)
    spec, _ = pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared")
    assert (spec.num_train, spec.num_eval) == (6, 6)


def test_a_changed_folder_is_prepared_again(tmp_path: Path) -> None:
    root = simple_folder(tmp_path / "folder")
    first = pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared")[0]
    write(root / "train" / "cat" / "new.jpg", image_files.jpeg(99, (90, 90)))
    second = pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared")[0]
    assert second.name != first.name and second.num_train == first.num_train + 1


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_file_is_named_and_nothing_is_written(kind: str, tmp_path: Path) -> None:
    root = simple_folder(tmp_path / "folder")
    file_name, make, reason = BAD[kind]
    bad = write(root / "train" / "ant" / file_name, make(7, (120, 100)))
    with pytest.raises(pipeline.DataError, match="1 bad file") as error:
        pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared")
    assert f"{bad}: " in str(error.value) and reason in str(error.value) and "--skip-bad-images" in str(error.value)
    assert not (tmp_path / "prepared").exists() or not list((tmp_path / "prepared").rglob("*.array_record*"))
    spec, sources = pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared", skip_bad_images=True)
    assert spec.num_train == 6 and file_name not in {r for r in records(sources["train"])}
    skipped = sources["train"].dataset_info.metadata["skipped"]
    assert [Path(p).name for p, _ in skipped] == [file_name]


def test_all_bad_files_are_named_at_once(tmp_path: Path, capsys) -> None:
    root = simple_folder(tmp_path / "folder")
    for k, (file_name, make, _) in enumerate(BAD.values()):
        write(root / ("val" if k % 2 else "train") / "cat" / file_name, make(k, (64, 64)))
    with pytest.raises(pipeline.DataError, match=f"{len(BAD)} bad file") as error:
        pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared")
    assert all(file_name in str(error.value) for file_name, _, _ in BAD.values())
    spec, _ = pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared", skip_bad_images=True)
    assert f"skipping {len(BAD)} bad file(s)" in capsys.readouterr().out and spec.num_train == 6


def test_good_files_of_every_kind_decode_as_torchvisions_loader(tmp_path: Path) -> None:
    files = {kind: make(3, (70, 50)) for kind, make in GOOD.items()}  # every kind behind a .JPEG name
    picture = image_files.photo(5, 97, 61)  # odd sizes: the edges of chroma subsampling
    for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0, the simplejpeg path
        for quality in (75, 95):
            files[f"jpeg_{subsampling}_{quality}"] = image_files.encoded(picture, "JPEG", quality=quality,
                                                                         subsampling=subsampling)
    files["progressive"] = image_files.encoded(picture, "JPEG", quality=90, progressive=True)
    for kind, data in files.items():
        path = write(tmp_path / f"{kind}.JPEG", data)
        ours = np.asarray(image_folder.decode(path.read_bytes()))
        assert np.array_equal(ours, np.asarray(datasets.folder.pil_loader(str(path)))), kind
        assert image_folder.check_file(path) is None


@pytest.mark.parametrize("layout, message", [
    ("empty_class", "class folder .*/train/cat holds no image file"),
    ("no_val", "has train/ but no val/ or test/ folder"),
    ("val_classes_differ", r"/val: its class folders are not those of .*/train: missing \['cat'\], extra \['dog'\]"),
    ("no_train", "has no train/ folder"),
    ("not_a_folder", "does not exist or is not a directory"),
])
def test_layout_errors_name_the_folder(layout: str, message: str, tmp_path: Path) -> None:
    root = tmp_path / "folder"
    if layout != "not_a_folder":
        simple_folder(root, splits=() if layout == "no_train" else ("train",) if layout == "no_val" else
                      ("train", "val"))
    if layout == "empty_class":
        for f in (root / "train" / "cat").iterdir():
            f.unlink()
    if layout == "val_classes_differ":
        (root / "val" / "cat").rename(root / "val" / "dog")
    if layout == "no_train":
        (root / "val").mkdir(parents=True)
    with pytest.raises(pipeline.DataError, match=message):
        pipeline.load("imagefolder", root, prepared_dir=tmp_path / "prepared")


def test_the_trainers_exit_2_on_a_bad_folder(tmp_path: Path, capsys) -> None:
    from train import loop_flax, loop_torch

    root = simple_folder(tmp_path / "folder")
    write(root / "val" / "Bird" / "cut.JPEG", BAD["truncated_jpeg"][1](1, (90, 90)))
    for main in (loop_flax.main, loop_torch.main):
        args = ["--dataset", "imagefolder", "--data-dir", str(root), "--prepared-dir", str(tmp_path / "prepared"),
                "--workdir", str(tmp_path / "run"), "--preset", "tiny"]
        assert main(args) == 2
        assert f"{root / 'val' / 'Bird' / 'cut.JPEG'}: " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_batches_of_a_folder_are_torchvisions_recipe(parity_data) -> None:
    """The imagenet preset through grain: crops of `image_size`, deterministic per (seed, epoch, batch)."""
    spec, sources = parity_data
    small = pipeline.DatasetSpec(**{**spec.__dict__, "image_size": 32})
    first = next(pipeline.train_batches(sources["train"], small, 3, seed=1, epoch=0))
    again = next(pipeline.train_batches(sources["train"], small, 3, seed=1, epoch=0))
    other = next(pipeline.train_batches(sources["train"], small, 3, seed=1, epoch=1))
    assert first["image"].shape == (3, 32, 32, 3) and np.array_equal(first["image"], again["image"])
    assert not np.array_equal(first["image"], other["image"])  # the draws (test_imagenet_transforms.py) move


class RacingBuilder:
    """A TFDS builder whose final rename fails because another process renamed its complete copy first."""

    def __init__(self, other_finished: bool) -> None:
        self.other_finished = other_finished

    def download_and_prepare(self, **kwargs: object) -> None:
        raise FileExistsError("dataset_info.json")

    def is_prepared(self) -> bool:
        return self.other_finished


def test_a_data_set_prepared_by_another_process_at_the_same_time_is_read() -> None:
    assert image_folder.prepare_once(RacingBuilder(other_finished=True), file_format="array_record") is False
    with pytest.raises(FileExistsError):  # nothing complete in place: not a race, a real error
        image_folder.prepare_once(RacingBuilder(other_finished=False), file_format="array_record")
