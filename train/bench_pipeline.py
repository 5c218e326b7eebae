"""`python -m train.bench --pipeline`: this project's input pipelines against torchvision's, in one process and run.

Both read the same generated ImageNet-like JPEG folder (train.data.synthetic, 300-640 px, quality 90; written once
into --cache-dir, prepared once for this project's pipeline) with the `imagenet` preset at --crop-size: train =
RandomResizedCrop + flip, eval = Resize + CenterCrop, normalised, batched. torchvision: `ImageFolder` + `DataLoader`
(worker processes, the transforms of its reference recipe, float32 normalised tensors out). This project:
`train.data.pipeline.train_batches` / `eval_batches` with the same worker count as grain threads, uint8 batches out (the
trainer's steps normalise on the device, exactly; `--device` includes that transfer). Each row times --batches batches
after one warm-up batch; the worker counts run from 1 up to the core count (a scaling row each). `--device` also moves
this project's batches to the default JAX device (`jax.device_put`, waited for), as the trainer does.

The `train-v2` rows add torchvision's V2 recipe augmentations on both sides: TrivialAugmentWide after the crop and
flip, RandomErasing(0.1) after normalisation and MixUp(0.2)/CutMix(1.0) per batch (torchvision: v2 transforms in the
dataset and a RandomChoice in the DataLoader's collate, as its references do). This project draws all of it in the
input threads and applies the float parts (erasing, mixing) in the train step on the device; with `--device` the
rows include that jitted normalise + erase + mix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from r34.cli_help import DefaultsHelpFormatter
from r34.machine import cpu_description
from r34_flax.weights_io import atomic_write
from train.data import pipeline, synthetic
from train.data.imagenet_transforms import IMAGENET_MEAN, IMAGENET_STD
from train.data.spec import AugmentSpec
from train.data.transforms import normalization_table

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "r34" / "bench_jpegs"


@dataclasses.dataclass
class Row:
    split: str  # train | train-v2 | eval
    workers: int
    ours: float  # img/s
    torchvision: float  # img/s

    @property
    def ratio(self) -> float:
        return self.ours / self.torchvision


def images_per_s(batches: Iterator, count: int, batch_size: int, finish: Callable = lambda b: b) -> float:
    finish(next(batches))  # warm-up: thread pools and worker processes start, first reads
    start = time.perf_counter()
    for _ in range(count):
        finish(next(batches))
    return count * batch_size / (time.perf_counter() - start)


# The V2 recipe's augmentations (torchvision-v2): auto-augment policy, erasing probability, MixUp and CutMix alphas.
V2_AUGMENTATION = AugmentSpec(auto_augment="ta_wide", random_erase=0.1, mixup_alpha=0.2, cutmix_alpha=1.0)
SPLITS = ("train", "train-v2", "eval")


def torchvision_batches(root: Path, split: str, crop: int, resize: int, batch_size: int, workers: int) -> Iterator:
    import torch
    from torchvision import datasets
    from torchvision import transforms as T
    from torchvision.transforms import v2

    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    collate = None
    if split == "train":
        transform = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), *normalize])
    elif split == "train-v2":  # torchvision's presets.ClassificationPresetTrain and train.py's collate
        transform = v2.Compose([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip(),
                                v2.TrivialAugmentWide(), v2.PILToTensor(), v2.ToDtype(torch.float, scale=True),
                                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                                v2.RandomErasing(V2_AUGMENTATION.random_erase)])
        mix = v2.RandomChoice([v2.MixUp(alpha=V2_AUGMENTATION.mixup_alpha, num_classes=10),
                               v2.CutMix(alpha=V2_AUGMENTATION.cutmix_alpha, num_classes=10)])
        collate = lambda batch: mix(*torch.utils.data.default_collate(batch))  # noqa: E731
    else:
        transform = T.Compose([T.Resize(resize), T.CenterCrop(crop), *normalize])
    folder = datasets.ImageFolder(str(root / ("val" if split == "eval" else "train")), transform=transform)
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=split != "eval",
                                         num_workers=workers, drop_last=True, persistent_workers=False,
                                         collate_fn=collate)

    def endless() -> Iterator:
        while True:
            yield from loader

    return endless()


def our_batches(data: tuple, split: str, batch_size: int, workers: int) -> Iterator:
    spec, sources = data
    if split == "train-v2":
        spec = dataclasses.replace(spec, augmentation=V2_AUGMENTATION)

    def endless() -> Iterator:
        epoch = 0
        while True:
            if split != "eval":
                yield from pipeline.train_batches(sources["train"], spec, batch_size, seed=0, epoch=epoch,
                                                  prefetch_threads=workers)
            else:
                yield from pipeline.eval_batches(sources["eval"], spec, batch_size, prefetch_threads=workers)
            epoch += 1

    return endless()


def device_finish(spec: pipeline.DatasetSpec, split: str) -> Callable:
    """Moves a batch to the JAX device as the trainer does; for train-v2 also the step's normalise + erase + mix."""
    import jax
    import jax.numpy as jnp

    if split != "train-v2":
        return lambda batch: jax.block_until_ready(jax.device_put(batch["image"]))
    from train.step_flax import augment_batch, normalize_images

    table = jnp.asarray(normalization_table(spec))
    heads = dict(spec.heads)
    augment = jax.jit(lambda images, labels, params: augment_batch(normalize_images(images, table), labels, params,
                                                                   heads, jnp.int32(0)))

    def finish(batch: dict) -> object:
        params = {"erase": batch["erase"], "mix": {k: v.astype(np.float32) if v.dtype == np.float64 else v
                                                   for k, v in batch["mix"].items()}}
        return jax.block_until_ready(augment(jax.device_put(batch["image"]), batch["labels"], params))

    return finish


def run(args: argparse.Namespace) -> list[Row]:
    root = synthetic.make_folder(args.cache_dir / f"jpegs_{args.files}", args.files, classes=10)
    data = pipeline.load("imagefolder", root, args.crop_size, prepared_dir=args.cache_dir / "prepared",
                         augment="imagenet")
    spec = data[0]
    rows = []
    for workers in args.workers:
        for split in SPLITS:
            finish = device_finish(spec, split) if args.device else (lambda b: b)
            theirs = images_per_s(torchvision_batches(root, split, spec.image_size, spec.eval_resize,
                                                      args.batch_size, workers), args.batches, args.batch_size)
            ours = images_per_s(our_batches(data, split, args.batch_size, workers), args.batches, args.batch_size,
                                finish)
            rows.append(Row(split, workers, ours, theirs))
            print(f"  {split:<5} workers {workers}: ours {ours:7.1f} img/s, torchvision {theirs:7.1f} img/s",
                  flush=True)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = ["| split | workers | ours img/s | per worker | torchvision img/s | per worker | ours / torchvision |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.split} | {r.workers} | {r.ours:.1f} | {r.ours / r.workers:.1f} | {r.torchvision:.1f} | "
                     f"{r.torchvision / r.workers:.1f} | {r.ratio:.2f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.bench --pipeline", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--files", type=int, default=2000, help="generated JPEGs (90%% train, 10%% val)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the JPEGs are generated once")
    p.add_argument("--crop-size", type=int, default=224, help="the imagenet preset's crop")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--batches", type=int, default=20, help="timed batches per row")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1 .. the core count)")
    p.add_argument("--device", action="store_true", help="also put this project's batches on the JAX device")
    p.add_argument("--json", type=Path, default=Path("runs/bench_pipeline.json"), help="where the table goes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.workers = args.workers or list(range(1, (os.cpu_count() or 1) + 1))
    small = {k: v for k, v in (("--files", args.files), ("--batch-size", args.batch_size),
                               ("--batches", args.batches), ("--crop-size", args.crop_size)) if v < 1}
    if small or min(args.workers) < 1:
        print(f"error: {', '.join(small) or '--workers'} must be >= 1", file=sys.stderr)
        return 2
    if args.files < 20 or args.batch_size > args.files // 10:
        print(f"error: --files {args.files} must be >= 20 and give at least one --batch-size {args.batch_size} of "
              "val images (a tenth of the files)", file=sys.stderr)
        return 2
    print(f"input pipelines on {cpu_description()}, {os.cpu_count()} cores: {args.files} JPEGs, crop "
          f"{args.crop_size}, batch {args.batch_size}, {args.batches} timed batches per row")
    rows = run(args)
    print(format_table(rows))
    import torch
    import torchvision

    report = {"environment": {"cpu": cpu_description(), "cores": os.cpu_count(), "torch": torch.__version__,
                              "torchvision": torchvision.__version__, "files": args.files,
                              "crop_size": args.crop_size, "batch_size": args.batch_size, "batches": args.batches,
                              "device": args.device, "python": sys.version.split()[0]},
              "rows": [{**dataclasses.asdict(r), "ratio": r.ratio} for r in rows]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1)), force=True)
    print(f"wrote {args.json}")
    return 0
