"""Weight files on disk: reading torch and Flax formats, casting, strict conversion, atomic writing.

Torch side: `.pth`/`.pt` (a state_dict, or a training checkpoint holding one) loaded with `weights_only=True`,
and `.safetensors`. Flax side: `.safetensors` with flat keys named by module path ("layer1/0/conv1/kernel") and
the config in its metadata; the trainer's orbax checkpoint directory is accepted as input.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

from r34.config import ResNetConfig, body_name, preset_name
from r34_flax.checkpoint import is_checkpoint_dir, read_model_checkpoint
from r34_flax.conversion import (
    COUNT,
    ConversionError,
    FlatState,
    conversion_table,
    flax_to_torch,
    infer_config,
    parameter_count,
    parse_path_name,
    path_name,
    to_numpy,
    torch_to_flax,
)

TORCH_PICKLE_SUFFIXES = (".pth", ".pt")
SAFETENSORS = ".safetensors"
# Where training checkpoints usually keep the model's state_dict, in the order they are tried.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# Wrappers that prefix every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
FLAX_FORMAT = "r34_flax"
DTYPES: Mapping[str, Any] = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float64": np.float64,
}


def _fail(path: Path | str, problem: str, what: str = "cannot read weights") -> ConversionError:
    return ConversionError([f"{path}: {problem}"], what)


# ------------------------------------------------------------------------------------------------ reading


def read_torch_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A torch state_dict from `.pth`/`.pt`/`.safetensors`, with notes on what was unwrapped.

    Pickles load with `weights_only=True`: a file that needs code to unpickle is refused, never run.
    """
    path = Path(path)
    notes: list[str] = []
    if not path.is_file():
        raise _fail(path, "no such file")
    if path.suffix == SAFETENSORS:
        try:
            obj: Any = safetensors.torch.load_file(path)
        except Exception as e:  # SafetensorError, OSError: truncated or not a safetensors file
            raise _fail(path, f"not a readable safetensors file ({e})") from e
        if _safetensors_format(path) == FLAX_FORMAT:
            raise _fail(path, "is a Flax weights file (r34_flax layout), not torch weights; use to-torch")
        notes.append(f"read {path} (safetensors, {len(obj)} tensors)")
    elif path.suffix in TORCH_PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _fail(path, f"refused: unpickling it needs code outside plain tensors and containers, which "
                              f"is never run (torch.load weights_only=True said: {first})") from e
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
            raise _fail(path, f"truncated or not a torch file ({type(e).__name__}: {e})") from e
        notes.append(f"read {path} (torch pickle)")
    else:
        raise _fail(path, f"unknown suffix {path.suffix!r}; torch weights are {', '.join(TORCH_PICKLE_SUFFIXES)} "
                          f"or {SAFETENSORS}")
    state_dict = _find_state_dict(obj, path, notes)
    return _strip_wrapper_prefixes(state_dict, notes), notes


def _find_state_dict(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise _fail(path, f"holds a {type(obj).__name__}, expected a state_dict or a checkpoint dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in CHECKPOINT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            notes.append(f"checkpoint dict: using the state_dict under key {key!r} (top-level keys: {sorted(obj)})")
            return dict(inner)
    raise _fail(path, f"a dict without a state_dict: top-level keys {sorted(map(str, obj))[:10]}; expected tensors, "
                      f"or a state_dict under one of {list(CHECKPOINT_KEYS)}")


def _strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if state_dict and all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            return state_dict
        notes.append(f"stripped prefix {prefix!r} from all {len(state_dict)} keys")
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}


def _safetensors_format(path: Path) -> str | None:
    with safetensors.safe_open(path, "np") as f:
        return (f.metadata() or {}).get("format")


def read_flax_weights(path: str | Path) -> tuple[ResNetConfig, FlatState, list[str]]:
    """(config, flat Flax state, notes) from a Flax `.safetensors` file or an orbax checkpoint directory."""
    path = Path(path)
    if path.is_dir():
        if not is_checkpoint_dir(path):
            raise _fail(path, "a directory that is not an orbax checkpoint (no step directories, no 'model' item)")
        config, flat, step = read_model_checkpoint(path)
        return config, flat, [f"read {path} (orbax checkpoint, step {step})"]
    if not path.is_file():
        raise _fail(path, "no such file or directory")
    if path.suffix != SAFETENSORS:
        raise _fail(path, f"unknown suffix {path.suffix!r}; Flax weights are {SAFETENSORS} or an orbax directory")
    try:
        with safetensors.safe_open(path, "np") as f:
            metadata = f.metadata() or {}
        arrays = safetensors.numpy.load_file(path)
    except Exception as e:
        raise _fail(path, f"not a readable safetensors file ({e})") from e
    if metadata.get("format") != FLAX_FORMAT:
        raise _fail(path, f"no '{FLAX_FORMAT}' format in its metadata: not a Flax weights file of this project "
                          "(torch weights? use to-flax)")
    try:
        config = ResNetConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(path, f"bad config metadata ({e})") from e
    flat = {parse_path_name(k): v for k, v in arrays.items()}
    return config, flat, [f"read {path} (Flax safetensors, {len(flat)} arrays)"]


# ------------------------------------------------------------------------------------------------ casting


def cast_floats(arrays: Mapping[Any, np.ndarray], dtype: str | None, label: Callable[[Any], str] = str,
                ) -> tuple[dict[Any, np.ndarray], list[str]]:
    """Cast floating arrays to `dtype`; None keeps float32/float16/bfloat16 and casts float64 to float32
    (JAX's default precision). Integer counters are never cast. Every cast is reported; a cast that
    overflows to Inf is an error."""
    out, casts, problems = {}, Counter(), []
    for key, a in arrays.items():
        src = np.dtype(a.dtype)
        floating = np.issubdtype(src, np.floating) or src == ml_dtypes.bfloat16
        target = np.dtype(DTYPES[dtype]) if dtype else (np.dtype(np.float32) if src == np.float64 else src)
        if not floating or target == src:
            out[key] = a
            continue
        with np.errstate(over="ignore"):  # overflow is checked and reported just below
            cast = a.astype(target)
        if not np.all(np.isfinite(cast.astype(np.float32))):
            problems.append(f"{label(key)}: casting {src} to {target} overflows to Inf (max |x| {np.abs(a).max():g})")
        out[key] = cast
        casts[(str(src), str(target))] += 1
    if problems:
        raise ConversionError(problems, "cannot cast weights")
    notes = [f"cast {n} tensor(s) {s} -> {t}" for (s, t), n in sorted(casts.items())]
    return out, notes


# ------------------------------------------------------------------------------------------------ writing


def check_destination(dst: Path, force: bool) -> None:
    """Raise if `dst` may not be written; called before any work so a conversion never ends in this error."""
    if dst.exists() and not force:
        raise _fail(dst, "already exists; pass --force (force=True) to overwrite", "refusing to overwrite")
    if not dst.parent.is_dir():
        raise _fail(dst, f"directory {dst.parent} does not exist", "cannot write")


def atomic_write(dst: str | Path, write: Callable[[Path], None], force: bool = False) -> None:
    """Call `write(tmp)` on a temporary file beside `dst`, then rename it over `dst`: readers see the old file or
    the complete new one, never a half-written one; nothing is left behind on error."""
    dst = Path(dst)
    check_destination(dst, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_flax_weights(dst: str | Path, config: ResNetConfig, flat: Mapping[tuple, np.ndarray],
                       force: bool = False) -> None:
    """Flax safetensors: keys "layer1/0/conv1/kernel", metadata {"format": "r34_flax", "config": JSON}."""
    dst = Path(dst)
    if dst.suffix != SAFETENSORS:
        raise _fail(dst, f"Flax weights are written as {SAFETENSORS}, got {dst.suffix!r}", "cannot write")
    tensors = {path_name(p): np.ascontiguousarray(v) if v.ndim else v for p, v in flat.items()}
    metadata = {"format": FLAX_FORMAT, "config": json.dumps(config.to_dict())}
    atomic_write(dst, lambda tmp: safetensors.numpy.save_file(tensors, str(tmp), metadata=metadata), force)


def write_torch_weights(dst: str | Path, state_dict: Mapping[str, torch.Tensor], force: bool = False) -> None:
    """A plain state_dict as `.pth`/`.pt` (torch.save) or `.safetensors`; torchvision loads either strictly."""
    dst = Path(dst)
    if dst.suffix in TORCH_PICKLE_SUFFIXES:
        atomic_write(dst, lambda tmp: torch.save(dict(state_dict), tmp), force)
    elif dst.suffix == SAFETENSORS:
        atomic_write(dst, lambda tmp: safetensors.torch.save_file(dict(state_dict), str(tmp),
                                                                  metadata={"format": "pt"}), force)
    else:
        raise _fail(dst, f"torch weights are written as {', '.join(TORCH_PICKLE_SUFFIXES)} or {SAFETENSORS}, "
                         f"got {dst.suffix!r}", "cannot write")


# ------------------------------------------------------------------------------------------------ commands


def _describe(config: ResNetConfig) -> str:
    name = preset_name(config.replace(bn_eps=1e-5, bn_momentum=0.1))
    body = body_name(config)
    heads = ", ".join(f"{n}={c}" for n, c in config.heads)
    grouped = (f", groups={config.groups}, width_per_group={config.width_per_group}"
               if config.block == "bottleneck" else "")
    return (f"{name or (f'{body} body' if body else 'custom')} (block={config.block}, stages={config.stage_sizes}, "
            f"widths={config.widths}{grouped}, in_channels={config.in_channels}, heads: {heads}); "
            f"{parameter_count(config):,} parameters")


def convert_to_flax(src: str | Path, dst: str | Path, config: ResNetConfig | None = None,
                    dtype: str | None = None, force: bool = False) -> list[str]:
    """torch weights file -> Flax safetensors. Returns the report lines; raises ConversionError."""
    dst = Path(dst)
    check_destination(dst, force)
    state_dict, notes = read_torch_weights(src)
    config, flat = torch_to_flax(state_dict, config)
    flat, cast_notes = cast_floats(flat, dtype, path_name)
    write_flax_weights(dst, config, flat, force)
    return notes + [f"architecture: {_describe(config)}"] + cast_notes + [f"wrote {dst} ({len(flat)} arrays)"]


def convert_to_torch(src: str | Path, dst: str | Path, dtype: str | None = None, force: bool = False) -> list[str]:
    """Flax safetensors or orbax checkpoint -> torch `.pth`/`.safetensors`. Returns the report lines."""
    dst = Path(dst)
    check_destination(dst, force)
    config, flat, notes = read_flax_weights(src)
    flat, cast_notes = cast_floats(flat, dtype, path_name)
    state_dict = flax_to_torch(flat, config)
    write_torch_weights(dst, state_dict, force)
    return notes + [f"architecture: {_describe(config)}"] + cast_notes + [f"wrote {dst} ({len(state_dict)} tensors)"]


def inspect_weights(src: str | Path) -> tuple[list[str], list[str]]:
    """(report lines, problems) for a torch or Flax weights file; problems empty means it converts cleanly."""
    path = Path(src)
    is_flax = path.is_dir() or (path.suffix == SAFETENSORS and path.is_file() and is_flax_file(path))
    if is_flax:
        config, flat, notes = read_flax_weights(path)
        arrays = {path_name(p): v for p, v in flat.items()}
        convert: Callable[[], object] = lambda: flax_to_torch(flat, config)  # noqa: E731
        notes.append("side: Flax")
    else:
        state_dict, notes = read_torch_weights(path)
        arrays = {k: to_numpy(v) for k, v in state_dict.items()}
        try:
            config = infer_config(state_dict)
        except ConversionError as e:
            return notes + ["side: torch", _dtype_line(arrays)], e.problems
        convert = lambda: torch_to_flax(state_dict, config)  # noqa: E731
        notes.append("side: torch")
    notes += [f"architecture: {_describe(config)}", _dtype_line(arrays)]
    counters = {e.torch_key for e in conversion_table(config) if e.layout is COUNT}
    notes.append(f"tensors: {len(arrays)} ({len(counters)} BatchNorm counters)")
    try:
        convert()
    except ConversionError as e:
        return notes, e.problems
    return notes, []


def is_flax_file(path: Path) -> bool:
    try:
        return _safetensors_format(path) == FLAX_FORMAT
    except Exception:
        return False  # unreadable: let the torch reader name the problem


def _dtype_line(arrays: Mapping[str, np.ndarray]) -> str:
    counts = Counter(str(np.dtype(a.dtype)) for a in arrays.values())
    return "dtypes: " + ", ".join(f"{d} x{n}" for d, n in sorted(counts.items()))
