"""Writes a small set of Bengali.AI competition files in their exact format, for offline tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from train.data.bengali_graphemes import HEADS, HEIGHT, WIDTH


def write_competition_files(directory: Path, per_file: int = 6, seed: int = 0) -> dict[str, dict]:
    """train_image_data_{0..3}.parquet and train.csv; returns labels by id. (The competition's
    test_image_data_{0..3}.parquet are unlabelled and the builder never opens them; each file of 32,333 columns
    takes ~1.5 s to write, so they are not written.)"""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    labels: dict[str, dict] = {}
    columns = [str(i) for i in range(HEIGHT * WIDTH)]
    for i in range(4):
        ids = [f"Train_{i * per_file + j}" for j in range(per_file)]
        pixels = rng.integers(0, 256, size=(per_file, HEIGHT * WIDTH), dtype=np.uint8)
        arrays = [pa.array(ids)] + [pa.array(pixels[:, c]) for c in range(HEIGHT * WIDTH)]
        pq.write_table(pa.Table.from_arrays(arrays, names=["image_id"] + columns),
                       directory / f"train_image_data_{i}.parquet")
        for image_id, row in zip(ids, pixels):
            labels[image_id] = {"image": row.reshape(HEIGHT, WIDTH), **{h: int(rng.integers(0, n)) for h, n in HEADS}}
    with open(directory / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "grapheme_root", "vowel_diacritic", "consonant_diacritic", "grapheme"])
        for image_id, row in labels.items():
            writer.writerow([image_id, row["grapheme_root"], row["vowel_diacritic"], row["consonant_diacritic"],
                             "\u0995"])
    return labels
