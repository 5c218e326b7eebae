"""Data sets and the input pipeline: builders, TFDS by name (mocked), determinism, sharding, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from parity_tests import image_files
from train.data import bengali_graphemes, image_folder, pipeline, transforms
from train.metrics import summarise


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):
    return pipeline.load("sklearn_digits", tmp_path_factory.mktemp("tfds"))


def test_sklearn_digits_builder(digits) -> None:
    spec, sources = digits
    assert (spec.num_train, spec.num_eval, spec.channels, spec.image_size) == (1437, 360, 1, 32)
    assert spec.heads == (("fc", 10),) and not spec.flip
    example = sources["train"][0]
    assert example["image"].shape == (32, 32, 1) and example["image"].dtype == np.uint8
    assert example["image"].max() > 200  # scaled from sklearn's 0-16 to 0-255
    labels = [sources["eval"][i]["label"] for i in range(len(sources["eval"]))]
    assert sorted(set(labels)) == list(range(10))


def test_train_batches_are_deterministic_resumable_and_sharded(digits) -> None:
    spec, sources = digits
    epoch = list(pipeline.train_batches(sources["train"], spec, 64, seed=3, epoch=1))
    assert len(epoch) == 1437 // 64 and epoch[0]["image"].shape == (64, 32, 32, 1)
    again = list(pipeline.train_batches(sources["train"], spec, 64, seed=3, epoch=1, start_batch=5))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(epoch[5:], again))
    other_epoch = next(pipeline.train_batches(sources["train"], spec, 64, seed=3, epoch=2))
    assert not np.array_equal(other_epoch["labels"]["fc"], epoch[0]["labels"]["fc"])
    halves = [next(pipeline.train_batches(sources["train"], spec, 64, 3, 1, 0, pipeline.Sharding(i, 2)))
              for i in range(2)]
    assert np.array_equal(np.concatenate([h["image"] for h in halves]), epoch[0]["image"])
    with pytest.raises(pipeline.DataError, match="global batch 63 is not divisible by the 2 processes"):
        pipeline.train_batches(sources["train"], spec, 63, 3, 1, 0, pipeline.Sharding(0, 2))


def test_augmentation_crops_and_flips_only_where_it_suits(digits) -> None:
    spec, _ = digits
    image = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32, 1)
    outs = [pipeline.train_transform({"image": image, "label": 1}, np.random.default_rng(s), spec)["image"]
            for s in range(20)]
    plain = pipeline.eval_transform({"image": image, "label": 1}, spec)["image"]
    assert any(not np.array_equal(o, plain) for o in outs)  # random crops move the image
    natural = pipeline.DatasetSpec(**{**spec.__dict__, "flip": True})
    flipped = [pipeline.train_transform({"image": image, "label": 1}, np.random.default_rng(s), natural)["image"]
               for s in range(20)]
    # A flipped crop has columns in decreasing order; digits never get one.
    decreasing = lambda x: np.all(np.diff(x[16, 8:24, 0].astype(int)) <= 0)  # noqa: E731
    assert any(decreasing(f) for f in flipped) and not any(decreasing(o) for o in outs)


def test_eval_batches_cover_the_split_once_with_a_mask(digits) -> None:
    spec, sources = digits
    batches = list(pipeline.eval_batches(sources["eval"], spec, 64))
    assert len(batches) == 6 and all(b["image"].shape[0] == 64 for b in batches)
    assert sum(int(b["mask"].sum()) for b in batches) == 360


def test_any_tfds_dataset_by_name_mocked() -> None:
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        spec, sources = pipeline.load("cifar10", Path("/nonexistent/tfds"))
        assert spec.heads == (("fc", 10),) and spec.channels == 3 and spec.flip and spec.eval_split == "test"
        batch = next(pipeline.train_batches(sources["train"], spec, 8, seed=0, epoch=0))
        assert batch["image"].shape == (8, 32, 32, 3) and batch["labels"]["fc"].dtype == np.int32


def test_unknown_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(pipeline.DataError, match="unknown data set 'no_such_set'"):
        pipeline.load("no_such_set", tmp_path)


def test_bengali_builder_reads_the_competition_format(bengali_files: tuple[Path, dict],
                                                      bengali_data_dir: Path) -> None:
    manual, labels = bengali_files
    spec, sources = pipeline.load("bengali_graphemes", bengali_data_dir, image_size=32, manual_dir=manual)
    assert spec.heads == bengali_graphemes.HEADS and spec.channels == 1 and spec.eval_split == "validation"
    assert spec.num_train + spec.num_eval == 20 == len(labels)
    seen = {}
    for split in ("train", "eval"):
        for i in range(len(sources[split])):
            ex = sources[split][i]
            image_id = ex["image_id"].decode() if isinstance(ex["image_id"], bytes) else ex["image_id"]
            seen[image_id] = ex
            assert bengali_graphemes.is_validation(image_id) == (split == "eval")
    assert set(seen) == set(labels)
    for image_id, ex in seen.items():
        assert np.array_equal(ex["image"][..., 0], labels[image_id]["image"])  # row by row, 137x236
        assert all(int(ex[h]) == labels[image_id][h] for h, _ in bengali_graphemes.HEADS)
    batch = next(pipeline.eval_batches(sources["eval"], spec, 4))
    assert set(batch["labels"]) == {"grapheme_root", "vowel_diacritic", "consonant_diacritic"}


def test_bengali_missing_files_name_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "train.csv").write_text("image_id\n")
    with pytest.raises(pipeline.DataError, match=r"missing in manual dir .*train_image_data_0.parquet"):
        pipeline.load("bengali_graphemes", tmp_path / "tfds", manual_dir=tmp_path / "manual")


def test_grapheme_metric() -> None:
    y = {"grapheme_root": np.array([0, 0, 1, 1]), "vowel_diacritic": np.array([0, 1, 0, 1]),
         "consonant_diacritic": np.array([0, 0, 0, 0])}
    p = {"grapheme_root": np.array([0, 1, 1, 1]), "vowel_diacritic": np.array([0, 1, 0, 1]),
         "consonant_diacritic": np.array([0, 0, 0, 1])}
    out = summarise(p, {k: np.ones(4, bool) for k in y}, y, {"grapheme_root": 168, "vowel_diacritic": 11,
                                                               "consonant_diacritic": 7})
    # As the competition computes it (sklearn recall_score, average="macro"): root: class 0 1/2, class 1 2/2 ->
    # 0.75; vowel 1.0; consonant: class 0 3/4 and class 1, predicted but never true, 0 -> 0.375.
    assert out["grapheme_score"] == pytest.approx((2 * 0.75 + 1.0 + 0.375) / 4)
    assert out["top1/grapheme_root"] == 0.75 and "top5/consonant_diacritic" in out


class ImagenetteLike(tfds.core.GeneratorBasedBuilder):
    """What imagenette and imagenet2012 are to the pipeline: an `Image` feature of variable size holding JPEGs
    (prepared here from bytes, which needs no TensorFlow), a ClassLabel, train and validation splits."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0), "validation": self._generate_examples(1)}

    def _generate_examples(self, offset: int):
        for k in range(6):
            yield k, {"image": image_files.jpeg(10 * offset + k, (150 + 7 * k, 120)), "label": k % 3}


def test_tfds_image_data_sets_get_the_imagenet_preset_decoded_as_torchvision_decodes(tmp_path: Path) -> None:
    from torchvision.models import ResNet34_Weights

    spec, sources = pipeline.load("imagenette_like", tmp_path)
    assert (spec.augment, spec.image_size, spec.eval_resize, spec.eval_split) == ("imagenet", 224, 256, "validation")
    example = sources["eval"][2]
    assert isinstance(example["image"], bytes)  # read undecoded: PIL decodes it below, not TFDS (OpenCV or PIL)
    files = [image_files.jpeg(10 + k, (150 + 7 * k, 120)) for k in range(6)]
    assert example["image"] in files  # the JPEG as written, not re-encoded
    expected = ResNet34_Weights.IMAGENET1K_V1.transforms()(image_folder.decode(example["image"]))
    got = transforms.normalize(pipeline.eval_transform(example, spec)["image"], transforms.normalization_table(spec))
    np.testing.assert_array_equal(got, expected.permute(1, 2, 0).numpy())
    batch = next(pipeline.train_batches(sources["train"], spec, 4, seed=0, epoch=0))
    assert batch["image"].shape == (4, 224, 224, 3)
    cifar, _ = pipeline.load("imagenette_like", tmp_path, image_size=32, augment="cifar")
    assert (cifar.augment, cifar.image_size, cifar.eval_resize) == ("cifar", 32, 0)
    message = "--eval-resize/--val-resize-size and --val-crop-size apply to --augment imagenet"
    with pytest.raises(pipeline.DataError, match=message):
        pipeline.load("imagenette_like", tmp_path, augment="cifar", eval_resize=256)
