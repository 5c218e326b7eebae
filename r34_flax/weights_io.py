"""Weight files on disk: reading torch and Flax formats, casting, strict conversion, atomic writing.

Torch side: `.pth`/`.pt` (a state_dict, or a training checkpoint holding one) loaded with `weights_only=True`,
and `.safetensors`. Flax side: `.safetensors` with flat keys named by module path ("layer1/0/conv1/kernel") and
the config in its metadata; the trainer's orbax checkpoint directory is accepted as input.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import shutil
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
from r34_flax import hf_format
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
HF_CONFIG_METADATA = "hf_config"
OUTPUT_FORMATS = ("torchvision", "hf")
TORCHVISION_FORMAT = "torchvision layout (torchvision, timm, r34_torch)"
DTYPES: Mapping[str, Any] = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float64": np.float64,
}


def _fail(path: Path | str, problem: str, what: str = "cannot read weights") -> ConversionError:
    return ConversionError([f"{path}: {problem}"], what)


# ------------------------------------------------------------------------------------------------ reading


@dataclasses.dataclass
class TorchWeights:
    """A torch weights file read into torchvision's names: the state_dict, notes (the first names the format), the
    format it came in (TORCHVISION_FORMAT or hf_format.FORMAT) and, for a transformers checkpoint, its config.json."""

    state_dict: dict[str, torch.Tensor]
    notes: list[str]
    format: str
    hf_config: dict | None = None


def read_torch_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A torchvision-named torch state_dict from `.pth`/`.pt`/`.safetensors` (torchvision's and timm's layout), or
    from a Hugging Face transformers ResNet (a snapshot directory, or its weights file beside its config.json),
    with notes on what was read and unwrapped; the first note names the format.

    Pickles load with `weights_only=True`: a file that needs code to unpickle is refused, never run.
    """
    weights = read_torch_source(path)
    return weights.state_dict, weights.notes


def read_torch_source(path: str | Path) -> TorchWeights:
    """read_torch_weights, keeping what it came as (to write it back in its own format)."""
    path = Path(path)
    snapshot = hf_format.snapshot_files(path) if path.exists() else None
    if path.is_dir():
        if snapshot is None:
            raise _fail(path, f"a directory without a Hugging Face snapshot ({hf_format.CONFIG_FILE} and one of "
                              f"{', '.join(hf_format.WEIGHT_FILES)})")
        path = snapshot[1]
    state_dict, notes = _read_torch_file(path)
    if not hf_format.is_hf_state_dict(state_dict):
        notes.insert(0, f"format: {TORCHVISION_FORMAT}")
        return TorchWeights(state_dict, notes, TORCHVISION_FORMAT)
    hf = None
    if snapshot is not None:
        hf = hf_format.read_config(snapshot[0])
        hf_format.config_from_hf(hf, str(snapshot[0]))  # refuses what torchvision's ResNet is not
        notes.append(f"read {snapshot[0]} (architecture {hf.get('architectures')}, layer_type "
                     f"{hf.get('layer_type')}, depths {hf.get('depths')})")
    else:
        notes.append(f"no {hf_format.CONFIG_FILE} beside {path}: assuming transformers' ResNet layout (V1.5)")
    state_dict, head = hf_format.to_torchvision(state_dict, str(path))
    kind = "ResNetForImageClassification" if head else "ResNetModel, no classifier"
    notes.insert(0, f"format: {hf_format.FORMAT} ({kind}); keys renamed to torchvision's")
    return TorchWeights(state_dict, notes, hf_format.FORMAT, hf)


def _read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
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
    elif path.suffix in TORCH_PICKLE_SUFFIXES or path.name in hf_format.WEIGHT_FILES:
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
                       force: bool = False, hf_config: Mapping | None = None) -> None:
    """Flax safetensors: keys "layer1/0/conv1/kernel", metadata {"format": "r34_flax", "config": JSON} (and the
    transformers config.json of a checkpoint that came in that format, to write it back as it was)."""
    dst = Path(dst)
    if dst.suffix != SAFETENSORS:
        raise _fail(dst, f"Flax weights are written as {SAFETENSORS}, got {dst.suffix!r}", "cannot write")
    tensors = {path_name(p): np.ascontiguousarray(v) if v.ndim else v for p, v in flat.items()}
    metadata = {"format": FLAX_FORMAT, "config": json.dumps(config.to_dict())}
    if hf_config is not None:
        metadata[HF_CONFIG_METADATA] = json.dumps(hf_config)
    # Serialised in memory and written by Python: a full disk is an OSError naming errno and file.
    atomic_write(dst, lambda tmp: tmp.write_bytes(safetensors.numpy.save(tensors, metadata=metadata)), force)


def torch_bytes(obj: Any) -> bytes:
    """torch.save's bytes of `obj`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_torch_weights(dst: str | Path, state_dict: Mapping[str, torch.Tensor], force: bool = False) -> None:
    """A plain state_dict as `.pth`/`.pt` (torch.save) or `.safetensors`; torchvision loads either strictly."""
    dst = Path(dst)
    # Serialised in memory and written by Python: a full disk is an OSError naming errno and file (torch.save's
    # own writer reports it as "unexpected pos").
    if dst.suffix in TORCH_PICKLE_SUFFIXES:
        atomic_write(dst, lambda tmp: tmp.write_bytes(torch_bytes(dict(state_dict))), force)
    elif dst.suffix == SAFETENSORS:
        atomic_write(dst, lambda tmp: tmp.write_bytes(safetensors.torch.save(dict(state_dict),
                                                                             metadata={"format": "pt"})), force)
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
    """torch weights (torchvision/timm layout or a transformers ResNet) -> Flax safetensors. `dst` may be a
    directory: the file is named after the source. Returns the report lines; raises ConversionError."""
    dst = Path(dst)
    if dst.is_dir():
        dst = dst / f"{Path(src).stem if Path(src).is_file() else Path(src).name}_flax{SAFETENSORS}"
    check_destination(dst, force)
    source = read_torch_source(src)
    config, flat = torch_to_flax(source.state_dict, config)
    flat, cast_notes = cast_floats(flat, dtype, path_name)
    write_flax_weights(dst, config, flat, force, hf_config=source.hf_config)
    return source.notes + [f"architecture: {_describe(config)}"] + cast_notes + [f"wrote {dst} ({len(flat)} arrays)"]


def convert_to_torch(src: str | Path, dst: str | Path, dtype: str | None = None, force: bool = False,
                     output_format: str = "torchvision") -> list[str]:
    """Flax safetensors or orbax checkpoint -> torch `.pth`/`.safetensors` (torchvision's names), or with
    output_format "hf" a transformers snapshot directory (config.json + model.safetensors; the config of the
    checkpoint it came from when it came from one). Returns the report lines."""
    dst = Path(dst)
    check_destination(dst, force)
    config, flat, notes = read_flax_weights(src)
    flat, cast_notes = cast_floats(flat, dtype, path_name)
    state_dict = flax_to_torch(flat, config)
    if output_format == "hf":
        base = flax_metadata(Path(src)).get(HF_CONFIG_METADATA) if Path(src).is_file() else None
        write_hf_snapshot(dst, state_dict, config, json.loads(base) if base else None, force)
        written = f"wrote {dst} ({hf_format.FORMAT}: {hf_format.CONFIG_FILE}, model.safetensors)"
    elif output_format == "torchvision":
        write_torch_weights(dst, state_dict, force)
        written = f"wrote {dst} ({len(state_dict)} tensors)"
    else:
        raise _fail(dst, f"unknown output format {output_format!r}; one of {', '.join(OUTPUT_FORMATS)}",
                    "cannot write")
    return notes + [f"architecture: {_describe(config)}"] + cast_notes + [written]


def flax_metadata(path: Path) -> dict[str, str]:
    with safetensors.safe_open(path, "np") as f:
        return f.metadata() or {}


def write_hf_snapshot(dst: Path, state_dict: Mapping[str, torch.Tensor], config: ResNetConfig,
                      base: Mapping | None = None, force: bool = False) -> None:
    """A transformers ResNetForImageClassification snapshot directory (config.json + model.safetensors), written to
    a temporary directory beside `dst` and renamed into place when complete."""
    hf = hf_format.hf_config(config, base)
    tensors = {k: v.contiguous() for k, v in hf_format.from_torchvision(state_dict).items()}
    dst = Path(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        (tmp / hf_format.CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
        safetensors.torch.save_file(tensors, str(tmp / hf_format.WEIGHT_FILES[0]), metadata={"format": "pt"})
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old")
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def inspect_weights(src: str | Path) -> tuple[list[str], list[str]]:
    """(report lines, problems) for a torch or Flax weights file; problems empty means it converts cleanly."""
    path = Path(src)
    if is_flax_source(path):
        config, flat, notes = read_flax_weights(path)
        arrays = {path_name(p): v for p, v in flat.items()}
        convert: Callable[[], object] = lambda: flax_to_torch(flat, config)  # noqa: E731
        notes.insert(0, "format: " + ("orbax checkpoint (this project's trainer)" if path.is_dir()
                                      else "r34_flax (Flax safetensors)"))
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


def is_flax_source(path: Path) -> bool:
    """A Flax weights file of this project or the trainer's orbax checkpoint (not a transformers snapshot)."""
    return is_checkpoint_dir(path) or (path.suffix == SAFETENSORS and path.is_file() and is_flax_file(path))


def is_flax_file(path: Path) -> bool:
    try:
        return _safetensors_format(path) == FLAX_FORMAT
    except Exception:
        return False  # unreadable: let the torch reader name the problem


def _dtype_line(arrays: Mapping[str, np.ndarray]) -> str:
    counts = Counter(str(np.dtype(a.dtype)) for a in arrays.values())
    return "dtypes: " + ", ".join(f"{d} x{n}" for d, n in sorted(counts.items()))
