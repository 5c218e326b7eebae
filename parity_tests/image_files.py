"""Generated image files as ImageNet really has them: JPEGs of many shapes, CMYK and grayscale JPEGs, a PNG behind a
.JPEG name, RGBA and palette PNGs, and the bad ones (truncated, empty, not an image, 16-bit, a stray text file)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from train.data.synthetic import photo


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def jpeg(seed: int, size: tuple[int, int]) -> bytes:
    return encoded(photo(seed, *size), "JPEG", quality=90)


# name -> (bytes of a file of that kind, given a seed and (width, height)). Good files first, then bad ones.
GOOD: dict[str, Callable[[int, tuple[int, int]], bytes]] = {
    "jpeg": jpeg,
    "gray_jpeg": lambda seed, size: encoded(photo(seed, *size).convert("L"), "JPEG", quality=90),
    "cmyk_jpeg": lambda seed, size: encoded(photo(seed, *size).convert("CMYK"), "JPEG", quality=90),
    "png_named_jpeg": lambda seed, size: encoded(photo(seed, *size), "PNG"),
    "rgba_png": lambda seed, size: encoded(photo(seed, *size).convert("RGBA"), "PNG"),
    "palette_png": lambda seed, size: encoded(photo(seed, *size).quantize(64), "PNG"),
    "bmp": lambda seed, size: encoded(photo(seed, *size), "BMP"),
    "webp": lambda seed, size: encoded(photo(seed, *size), "WEBP", lossless=True),
}
BAD: dict[str, tuple[str, Callable[[int, tuple[int, int]], bytes], str]] = {
    # kind -> (file name, bytes, what the error must say)
    "truncated_jpeg": ("cut.JPEG", lambda seed, size: jpeg(seed, size)[: len(jpeg(seed, size)) // 2], "truncated"),
    "zero_bytes": ("empty.jpg", lambda seed, size: b"", "empty file"),
    "not_an_image": ("page.jpg", lambda seed, size: b"<html>404 Not Found</html>\n",
                     "not an image file PIL recognises"),
    "png_16_bit": ("deep.png", lambda seed, size: encoded(Image.fromarray(
        (np.asarray(photo(seed, *size).convert("L"), np.uint16) * 257)), "PNG"), "mode I;16"),
    "text_file": ("notes.txt", lambda seed, size: b"labels were checked by hand\n", "not an image file name"),
}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def simple_folder(root: Path, classes: tuple[str, ...] = ("Bird", "ant", "cat"), per_class: int = 2,
                  splits: tuple[str, ...] = ("train", "val"), size: tuple[int, int] = (96, 80)) -> Path:
    """root/<split>/<class>/<k>.JPEG, plain JPEGs."""
    seed = 0
    for split in splits:
        for name in classes:
            for k in range(per_class):
                seed += 1
                write(root / split / name / f"{k}.JPEG", jpeg(seed, size))
    return root


# The eval split of the parity folder: every shape the eval transform treats differently and every good kind,
# spread over classes whose sorted order is not their order here ("Bird" < "ant": capitals sort first).
PARITY_VAL = {
    "Bird": [("landscape.JPEG", "jpeg", (320, 240)), ("gray.jpg", "gray_jpeg", (250, 300)),
             ("tall.bmp", "bmp", (180, 400))],
    "ant": [("portrait.jpeg", "jpeg", (240, 320)), ("cmyk.JPEG", "cmyk_jpeg", (300, 300)),
            ("nested/odd.jpg", "jpeg", (333, 271))],
    "cat": [("tiny.png", "png_named_jpeg", (100, 80)), ("png.JPEG", "png_named_jpeg", (257, 300)),
            ("rgba.png", "rgba_png", (260, 260)), ("palette.png", "palette_png", (300, 200)),
            ("lossless.webp", "webp", (224, 224))],
}


def parity_folder(root: Path) -> Path:
    """A small folder for the eval identity and JPEG-to-logits checks: train/ of plain JPEGs, val/ of PARITY_VAL."""
    simple_folder(root, tuple(PARITY_VAL), per_class=1, splits=("train",))
    for seed, (name, files) in enumerate(PARITY_VAL.items()):
        for k, (file_name, kind, size) in enumerate(files):
            write(root / "val" / name / file_name, GOOD[kind](100 + 10 * seed + k, size))
    return root
