"""TFDS builder for scikit-learn's bundled handwritten digits: the trainer's offline default data set.

1,797 8x8 grayscale digits (0-16 intensities) ship inside scikit-learn, so preparing needs no download. Images
are scaled to 0-255 and resized (bilinear) to IMAGE_SIZE x IMAGE_SIZE; the split is fixed: every 5th image
(index % 5 == 0) is test (360), the rest train (1,437).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

IMAGE_SIZE = 32
TEST_EVERY = 5


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits, 32x32x1 uint8, labels 0-9."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 32x32 bilinear resize, every 5th image is test."}

    def _info(self) -> tfds.core.DatasetInfo:
        # Tensor, not Image: the Image feature needs TensorFlow to encode PNGs; this builder must not.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {"train": self._generate_examples(test=False), "test": self._generate_examples(test=True)}

    def _generate_examples(self, test: bool):
        from sklearn.datasets import load_digits

        digits = load_digits()
        for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            if (index % TEST_EVERY == 0) != test:
                continue
            small = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8))
            image = np.asarray(small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), np.uint8)
            yield index, {"image": image[..., None], "label": int(label)}
