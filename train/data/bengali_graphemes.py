"""TFDS builder for the Bengali.AI Handwritten Grapheme Classification competition files (manual download).

Place in the manual dir (`--manual-dir`, default <data_dir>/downloads/manual): train.csv and
train_image_data_0.parquet .. train_image_data_3.parquet as the competition ships them. Each parquet row is one
image: an `image_id` column then 32,332 uint8 pixel columns "0".."32331", a 137x236 grayscale image row by row;
train.csv has image_id, grapheme_root, vowel_diacritic, consonant_diacritic, grapheme. The competition's test
parquet files carry no labels and are not used. Splits: a fixed 10% of the labelled images (by a hash of the
image_id) is `validation`, the rest `train`.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

HEIGHT, WIDTH = 137, 236
HEADS = (("grapheme_root", 168), ("vowel_diacritic", 11), ("consonant_diacritic", 7))
PARQUETS = tuple(f"train_image_data_{i}.parquet" for i in range(4))
VALIDATION_PERCENT = 10


def is_validation(image_id: str) -> bool:
    return int(hashlib.sha256(image_id.encode()).hexdigest(), 16) % 100 < VALIDATION_PERCENT


class BengaliGraphemes(tfds.core.GeneratorBasedBuilder):
    """Bengali.AI graphemes: 137x236x1 uint8 images, three labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the competition data (kaggle competitions download -c bengaliai-cv19), unzip it and place "
        "train.csv and train_image_data_{0..3}.parquet in the manual dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Tensor(shape=(HEIGHT, WIDTH, 1), dtype=np.uint8),
                    "image_id": tfds.features.Text()}
        features.update({name: tfds.features.ClassLabel(num_classes=n) for name, n in HEADS})
        return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        manual = Path(dl_manager.manual_dir)
        missing = [name for name in ("train.csv",) + PARQUETS if not (manual / name).is_file()]
        if missing:
            raise FileNotFoundError(f"bengali_graphemes: missing in manual dir {manual}: {', '.join(missing)}. "
                                    + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {"train": self._generate_examples(manual, validation=False),
                "validation": self._generate_examples(manual, validation=True)}

    def _generate_examples(self, manual: Path, validation: bool):
        import pyarrow.parquet as pq

        with open(manual / "train.csv", newline="") as f:
            labels = {row["image_id"]: row for row in csv.DictReader(f)}
        pixel_columns = [str(i) for i in range(HEIGHT * WIDTH)]
        for name in PARQUETS:
            parquet = pq.ParquetFile(manual / name)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                ids = table.column("image_id").to_pylist()
                pixels = np.stack([table.column(c).to_numpy() for c in pixel_columns], axis=1).astype(np.uint8)
                for image_id, row in zip(ids, pixels):
                    if is_validation(image_id) != validation:
                        continue
                    if image_id not in labels:
                        raise ValueError(f"{name}: image_id {image_id!r} has no row in train.csv")
                    example = {"image": row.reshape(HEIGHT, WIDTH, 1), "image_id": image_id}
                    example.update({head: int(labels[image_id][head]) for head, _ in HEADS})
                    yield image_id, example
