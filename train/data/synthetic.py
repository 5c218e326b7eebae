"""Generated ImageNet-like image folders, for benchmarks and tests where real data cannot be downloaded.

`python -m train.data.synthetic ROOT --files 10000` writes ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG:
random pictures with detail at several scales (~60-70 KB each, decoding like photographs of their size) of 300-640 px
per side, JPEG quality 90, as ImageNet's files are sized. Deterministic for a seed; an existing complete folder is kept.
"""

from __future__ import annotations

import argparse
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from r34.cli_help import DefaultsHelpFormatter

SIZE_RANGE = (300, 640)  # ImageNet's JPEGs are mostly 300-500 px on the shorter side, up to 500-640 on the longer
QUALITY = 90
DONE = ".complete"


def photo(seed: int, width: int, height: int) -> Image.Image:
    """A smooth random RGB picture: upsampled noise, with detail at a few scales."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((64, 0.5), (16, 0.25), (4, 0.15), (1, 0.1)):
        small = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
        image += weight * np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng([seed, 1])
    width, height = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    out = io.BytesIO()
    photo(seed, width, height).save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def make_folder(root: Path, files: int, classes: int = 10, val_fraction: float = 0.1, seed: int = 0) -> Path:
    """`files` JPEGs over `classes` class folders, `val_fraction` of them in val/; kept if already complete."""
    root = Path(root)
    if (root / DONE).exists():
        return root
    n_val = max(classes, int(files * val_fraction))
    jobs = [(split, k) for split, n in (("train", files - n_val), ("val", n_val)) for k in range(n)]

    def write(job: tuple[str, int]) -> None:
        split, k = job
        path = root / split / f"class_{k % classes:03d}" / f"{split}_{k:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(seed * 10_000_019 + (0 if split == "train" else 5_000_000) + k))

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(write, jobs), total=len(jobs), desc=f"writing {root}", unit="img"))
    (root / DONE).touch()
    return root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.data.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("root", type=Path, help="folder to write (ImageFolder layout)")
    p.add_argument("--files", type=int, default=2000, help="number of JPEGs, train and val together")
    p.add_argument("--classes", type=int, default=10, help="class folders")
    p.add_argument("--seed", type=int, default=0, help="picture seed")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.files < 2 * args.classes or args.classes < 1:
        p.error(f"--files {args.files} must be at least twice --classes {args.classes} (>= 1)")
    make_folder(args.root, args.files, args.classes, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
