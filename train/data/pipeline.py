"""Input pipeline: TFDS data sources read by grain, no TensorFlow needed.

A split is a random-access TFDS `ArrayRecordDataSource`; grain shuffles it per epoch (seeded), keeps this
process's shard of each epoch, augments with per-example seeds, batches and prefetches in threads. Batch k of
epoch e depends only on (seed, e, k), so a resumed run reads exactly the batches the interrupted one would have.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from train.data import bengali_graphemes, image_folder, sklearn_digits
from train.data.imagenet_transforms import IMAGENET_MEAN, IMAGENET_STD
from train.data import auto_augment, batch_augment
from train.data.spec import AugmentSpec, DatasetSpec
from train.data.transforms import AUGMENTS, default_eval_resize, eval_transform, train_transform

DEFAULT_TFDS_DIR = Path("~/tensorflow_datasets").expanduser()
IMAGE_FOLDER = "imagefolder"
Batch = dict[str, Any]  # {"image": uint8 NHWC, "labels": {head: int32}, "mask": bool (eval only)}


class DataError(ValueError):
    """A data set that cannot be found, prepared or used; the message says what to do."""


BUILDERS = {"sklearn_digits": sklearn_digits.SklearnDigits, "bengali_graphemes": bengali_graphemes.BengaliGraphemes}


def _builder(name: str, data_dir: Path, manual_dir: Path | None) -> tfds.core.DatasetBuilder:
    if name in BUILDERS:
        builder = BUILDERS[name](data_dir=str(data_dir), file_format="array_record")
    else:
        try:
            builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f"unknown data set {name!r}: not {IMAGE_FOLDER!r}, not one of this project's "
                            f"({', '.join(BUILDERS)}) nor a TFDS data set ({e})") from None
    if not builder.is_prepared():
        instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
        manual = Path(manual_dir) if manual_dir else Path(data_dir) / "downloads" / "manual"
        if instructions and not manual.is_dir():
            raise DataError(f"{name} is prepared from files you download yourself: manual dir {manual} does not "
                            f"exist (set --manual-dir). {instructions.strip()}")
        config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
        try:
            if not image_folder.prepare_once(builder, file_format="array_record", download_config=config):
                return _builder(name, data_dir, manual_dir)
        except Exception as e:  # network, TensorFlow (needed to encode images of most TFDS sets), manual files
            raise DataError(f"cannot prepare data set {name!r} in {data_dir}: {type(e).__name__}: {e}. "
                            "Preparing most TFDS image data sets needs network access and `pip install "
                            "tensorflow`; reading one already prepared in array_record format needs neither "
                            "(README, Training: converting a TFRecord-prepared data set).") from e
    return builder


def load(name: str, data_dir: Path, image_size: int | None = None, manual_dir: Path | None = None, *,
         augment: str | None = None, eval_resize: int | None = None, prepared_dir: Path | None = None,
         skip_bad_images: bool = False, eval_crop: int | None = None,
         augmentation: AugmentSpec = AugmentSpec()) -> tuple[DatasetSpec, dict[str, Any]]:
    """(spec, {"train": source, "eval": source}) for `name`, preparing it if needed.

    `name` is "imagefolder" (then `data_dir` is the folder, prepared into `prepared_dir`), one of this project's
    builders or a TFDS name (then `data_dir` is the TFDS data directory). `augment` picks the preprocessing preset
    (default: imagenet for data sets of variable image size, cifar for fixed-size ones); `image_size` is the crop
    (default 224 for imagenet, the data set's size for cifar); `eval_crop` the imagenet eval crop (default: the
    crop); `eval_resize` the imagenet eval resize (default 256 for a 224 eval crop); `augmentation` the recipe's
    data side (auto-augment, erasing, MixUp/CutMix, repeated augmentation, interpolation)."""
    if augment is not None and augment not in AUGMENTS:
        raise DataError(f"unknown augmentation {augment!r}; one of {', '.join(AUGMENTS)}")
    if name == IMAGE_FOLDER:
        try:
            builder = image_folder.prepare(Path(data_dir), Path(prepared_dir or DEFAULT_TFDS_DIR), skip_bad_images)
        except image_folder.FolderError as e:
            raise DataError(str(e)) from None
        name = f"{IMAGE_FOLDER}/{builder.builder_config.name}"
    else:
        builder = _builder(name, Path(data_dir), manual_dir)
    features = builder.info.features
    labels = {k: f for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)}
    if not labels or "image" not in features:
        raise DataError(f"{name}: needs an 'image' feature and at least one ClassLabel, has {list(features)}")
    if list(labels) == ["label"]:
        heads, label_keys = (("fc", labels["label"].num_classes),), {"fc": "label"}
    else:
        heads = tuple((k, f.num_classes) for k, f in labels.items())
        label_keys = {k: k for k in labels}
        if name == "bengali_graphemes":  # keep the competition's head order: root, vowel, consonant
            heads, label_keys = bengali_graphemes.HEADS, {k: k for k, _ in bengali_graphemes.HEADS}
    shape = features["image"].shape
    fixed = len(shape) == 3 and shape[0] is not None and shape[1] is not None
    channels = shape[-1] if len(shape) == 3 and shape[-1] is not None else 3
    augment = augment or ("cifar" if fixed else "imagenet")
    if augment == "cifar" and (eval_resize is not None or eval_crop is not None):
        raise DataError(f"--eval-resize/--val-resize-size and --val-crop-size apply to --augment imagenet; {name} "
                        "uses cifar (resize to a square)")
    size = image_size or (shape[0] if augment == "cifar" and fixed else 224)
    crop = eval_crop or size
    resize = (eval_resize or default_eval_resize(crop)) if augment == "imagenet" else 0
    # Encoded images stay encoded for the imagenet preset: decoded with PIL as torchvision decodes them.
    decoders = ({"image": tfds.decode.SkipDecoding()}
                if augment == "imagenet" and isinstance(features["image"], tfds.features.Image) else None)
    known = set(builder.info.splits) or {"train", "test"}  # mocked builders list no splits
    sources = {s: builder.as_data_source(split=s, decoders=decoders)
               for s in ("train", "validation", "test") if s in known}
    eval_split = next((s for s in ("validation", "test") if s in sources), None)
    if "train" not in sources or eval_split is None:
        raise DataError(f"{name}: needs a 'train' split and a 'validation' or 'test' split, has {list(sources)}")
    natural = name not in BUILDERS and name not in ("mnist", "fashion_mnist", "emnist", "kmnist")
    mean = IMAGENET_MEAN if channels == 3 else (0.5,) * channels
    std = IMAGENET_STD if channels == 3 else (0.5,) * channels
    spec = DatasetSpec(name, heads, label_keys, channels, size, "train", eval_split, natural, mean, std,
                       len(sources["train"]), len(sources[eval_split]), augment, resize,
                       crop if augment == "imagenet" else 0, augmentation, str(builder.data_dir), skip_bad_images)
    return spec, {"train": sources["train"], "eval": sources[eval_split]}


# -------------------------------------------------------------------------------------------- loaders


@dataclasses.dataclass(frozen=True)
class Sharding:
    """This process's part of every global batch."""

    index: int = 0
    count: int = 1


RA_DIVISOR = 256  # torchvision's RASampler keeps len(dataset) // 256 * 256 images per epoch, split over the replicas


def ra_kept(num_examples: int, replicas: int) -> int:
    """Images each replica keeps per epoch under torchvision's RASampler."""
    return int(math.floor(num_examples // RA_DIVISOR * RA_DIVISOR / replicas))


def steps_per_epoch(num_examples: int, global_batch: int, augmentation: AugmentSpec = AugmentSpec()) -> int:
    """Full global batches per epoch (a last partial batch is dropped: the train step has one shape)."""
    if augmentation.ra_reps:
        return ra_kept(num_examples, augmentation.replicas) // (global_batch // augmentation.replicas)
    return num_examples // global_batch


def ra_order(num_examples: int, reps: int, replicas: int, replica_batch: int, seed: int, epoch: int,
             permutation: np.ndarray | None = None) -> np.ndarray:
    """torchvision's RASampler for every replica, as global batches: a permutation of the data set seeded by the
    epoch (`permutation` if given), each index repeated `reps` times in a row, padded with its start to a multiple
    of the replicas, dealt round-robin; each replica keeps its first `ra_kept` indices. Global batch k is replica
    0's k-th batch, then replica 1's, ... (the pipeline's global batch layout)."""
    if permutation is None:
        permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order = np.repeat(permutation, reps)
    total = math.ceil(num_examples * reps / replicas) * replicas
    order = np.concatenate([order, order[: total - len(order)]])
    kept = ra_kept(num_examples, replicas)
    steps = kept // replica_batch
    per_replica = np.stack([order[r:total:replicas][:kept] for r in range(replicas)])
    return per_replica[:, :steps * replica_batch].reshape(replicas, steps, replica_batch).transpose(1, 0, 2).ravel()


# What a damaged record raises: read (array_record's checksums: RuntimeError "Corrupted Riegeli/records file"), or
# decoded (PIL: OSError/SyntaxError, simplejpeg and numpy: ValueError).
READ_ERRORS = (RuntimeError, OSError)
DECODE_ERRORS = (OSError, ValueError, SyntaxError)
SKIPPED: list[str] = []  # records replaced under --skip-bad-images, as "split record N (file)", in this process


def read_record(source: Any, index: int, spec: DatasetSpec, split: str, transform: Any) -> Batch:
    """`transform(source[index])`; a record that cannot be read or decoded (a damaged prepared copy) is a DataError
    naming the record, its source file and the command that prepares the data set again, or with --skip-bad-images
    it is replaced by the next readable record and listed (a warning each, and SKIPPED)."""
    n = len(source)
    for attempt in range(n):
        i = (index + attempt) % n
        try:
            example = source[i]
        except READ_ERRORS as e:
            problem, where = f"cannot be read ({type(e).__name__}: {e})", f"{split} record {i} {_shard_of(source, i)}"
        else:
            try:
                return transform(example)
            except DECODE_ERRORS as e:
                name = example.get("file_name", b"") if isinstance(example, dict) else b""
                name = name.decode() if isinstance(name, bytes) else str(name)
                problem = f"cannot be decoded ({type(e).__name__}: {e})"
                where = f"{split} record {i} (from {name})" if name else f"{split} record {i} {_shard_of(source, i)}"
        if not spec.skip_bad_records:
            raise DataError(f"{spec.name}: {where} {problem}; the prepared copy in {spec.prepared} is damaged: "
                            f"`rm -r {spec.prepared}` and rerun the same command (it prepares the data set again), "
                            "or pass --skip-bad-images to replace such records (each listed)")
        if where not in SKIPPED:
            SKIPPED.append(where)
            print(f"warning: {spec.name}: {where} {problem}; replaced by the next readable record "
                  "(--skip-bad-images)", file=sys.stderr)
    raise DataError(f"{spec.name}: no {split} record of {spec.prepared} can be read")


def _shard_of(source: Any, index: int) -> str:
    """'(in <array_record file>)' for a TFDS array_record source (its reader's private layout: '' if it changed)."""
    try:
        records = source.data_source
        reader, _ = records._reader_idx_and_position(index)
        return f"(in {records._read_instructions[reader].filename})"
    except Exception:  # another kind of source, or another array_record version
        return ""


MIX_STREAM = 0x6D6978  # keeps the per-batch MixUp/CutMix draws apart from the per-example ones


def train_batches(source: Any, spec: DatasetSpec, global_batch: int, seed: int, epoch: int, start_batch: int = 0,
                  shard: Sharding = Sharding(), prefetch_threads: int = 4,
                  ops: auto_augment.Ops = auto_augment.PIL_OPS) -> Iterator[Batch]:
    """Batches of one training epoch for this process, from batch `start_batch` on (to resume mid-epoch).

    The recipe's augmentation (`spec.augmentation`) is drawn here: per example its crop, flip, auto-augment and
    RandomErasing box; per global batch one MixUp/CutMix draw per replica (`batch["mix"]`, every process the same).
    `ops` applies auto-augment operations (the PyTorch trainer passes torchvision's kernels)."""
    if global_batch % shard.count:
        raise DataError(f"global batch {global_batch} is not divisible by the {shard.count} processes")
    augmentation = spec.augmentation
    steps = steps_per_epoch(len(source), global_batch, augmentation)
    if steps == 0:
        kept = (f" (the repeated-augmentation sampler keeps {ra_kept(len(source), augmentation.replicas)} per "
                f"replica: len // 256 * 256 / replicas)" if augmentation.ra_reps else "")
        raise DataError(f"{spec.name}: {len(source)} training examples are fewer than one batch of {global_batch}"
                        f"{kept}")
    # Each process takes its slice of each global batch, so the global batch is the same for any process count.
    per_process = global_batch // shard.count
    if augmentation.ra_reps:
        order = ra_order(len(source), augmentation.ra_reps, augmentation.replicas,
                         global_batch // augmentation.replicas, seed, epoch)
        ds = grain.MapDataset.source(order).seed(seed + epoch)
    else:
        ds = grain.MapDataset.range(len(source)).seed(seed + epoch).shuffle()[: steps * global_batch]
    ds = ds.random_map(lambda index, rng: read_record(source, int(index), spec, "train",
                                                      lambda ex: train_transform(ex, rng, spec, ops)))
    ds = ds.batch(global_batch, drop_remainder=True)
    if augmentation.mixes:
        size = spec.image_size

        def draw_mix(k: int, batch: Batch) -> Batch:
            rng = np.random.default_rng([seed, epoch, k, MIX_STREAM])
            return {**batch, "mix": batch_augment.batch_mix(rng, augmentation.replicas, augmentation.mixup_alpha,
                                                            augmentation.cutmix_alpha, size, size)}

        ds = ds.map_with_index(draw_mix)
    ds = ds[start_batch:steps]
    ds = ds.map(lambda b: _process_slice(b, shard.index * per_process, per_process))
    options = grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=prefetch_threads)
    return iter(ds.to_iter_dataset(options))


def eval_batches(source: Any, spec: DatasetSpec, global_batch: int, shard: Sharding = Sharding(),
                 prefetch_threads: int = 4) -> Iterator[Batch]:
    """The whole eval split once, in order; the last batch is padded to full size with mask False."""
    per_process = global_batch // shard.count
    n = len(source)
    batches = -(-n // global_batch)
    ds = grain.MapDataset.range(n).map(lambda index: read_record(source, int(index), spec, "eval",
                                                                 lambda ex: eval_transform(ex, spec)))
    ds = ds.batch(global_batch, drop_remainder=False)[:batches]
    ds = ds.map(lambda b: _process_slice(_pad(b, global_batch), shard.index * per_process, per_process))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch_threads,
                                                     prefetch_buffer_size=prefetch_threads)))


def _pad(batch: Batch, size: int) -> Batch:
    n = len(batch["mask"])
    if n == size:
        return batch
    pad = lambda a: np.concatenate([a, np.zeros((size - n,) + a.shape[1:], a.dtype)])  # noqa: E731
    return {"image": pad(batch["image"]), "labels": {k: pad(v) for k, v in batch["labels"].items()},
            "mask": pad(batch["mask"])}


def _process_slice(batch: Batch, start: int, size: int) -> Batch:
    """This process's images (and their labels, masks, erasing boxes) of a global batch; MixUp/CutMix draws are
    per replica of the global batch and kept whole."""
    take = lambda a: a[start:start + size]  # noqa: E731
    out = {"image": take(batch["image"]), "labels": {k: take(v) for k, v in batch["labels"].items()}}
    for key in ("mask", "erase"):
        if key in batch:
            out[key] = take(batch[key])
    if "mix" in batch:
        out["mix"] = batch["mix"]
    return out
