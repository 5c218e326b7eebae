"""The trainer's orbax checkpoint layout for model weights, shared with the converter.

A checkpoint directory is an orbax `CheckpointManager` root with one sub-directory per step. Each step holds at
least the items `model` (the Flax twin's variables, params and BatchNorm statistics, as a nested dict with string
keys) and `config` (the `ResNetConfig` as JSON); the trainer adds its own items (optimizer state, data position).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from r34.config import ResNetConfig
from r34_flax.conversion import ConversionError, FlatState, parse_path_name

MODEL_ITEM = "model"
MODEL_EMA_ITEM = "model_ema"  # the EMA model of a --model-ema run, in the same layout
CONFIG_ITEM = "config"


def nest(flat: Mapping[tuple, Any]) -> dict[str, Any]:
    """{("layer1", 0, "conv1", "kernel"): a} -> {"layer1": {"0": {"conv1": {"kernel": a}}}} (orbax wants str keys)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = value
    return tree


def unnest(tree: Mapping[str, Any], prefix: str = "") -> FlatState:
    """Inverse of `nest`, with list indices back to ints."""
    flat: FlatState = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(unnest(value, name))
        else:
            flat[parse_path_name(name)] = np.asarray(value)
    return flat


def model_save_args(config: ResNetConfig, flat: Mapping[tuple, Any],
                    ema: Mapping[tuple, Any] | None = None) -> dict[str, ocp.args.CheckpointArgs]:
    """The `model` and `config` items of a step (and `model_ema` for an EMA model), to merge into the trainer's
    `ocp.args.Composite`."""
    items = {
        MODEL_ITEM: ocp.args.StandardSave(nest(flat)),
        CONFIG_ITEM: ocp.args.JsonSave(config.to_dict()),
    }
    if ema is not None:
        items[MODEL_EMA_ITEM] = ocp.args.StandardSave(nest(ema))
    return items


def is_checkpoint_dir(path: Path) -> bool:
    """A CheckpointManager root (numbered step directories) or one step directory holding a `model` item."""
    path = Path(path)
    return path.is_dir() and ((path / MODEL_ITEM).is_dir() or any(p.name.isdigit() for p in path.iterdir()))


def read_model_checkpoint(path: str | Path, step: int | None = None,
                          item: str = MODEL_ITEM) -> tuple[ResNetConfig, FlatState, int]:
    """(config, flat Flax state, step) from a checkpoint root (latest step unless `step`) or a step directory;
    `item` MODEL_EMA_ITEM reads the EMA model of a --model-ema run."""
    path = Path(path)
    if (path / MODEL_ITEM).is_dir() and path.name.isdigit():
        root, step = path.parent, int(path.name)
    else:
        root = path
    try:
        manager = ocp.CheckpointManager(
            root.resolve(),
            item_names=(item, CONFIG_ITEM),
            options=ocp.CheckpointManagerOptions(read_only=True),
        )
        step = manager.latest_step() if step is None else step
        if step is None:
            raise ConversionError([f"{root}: no finished checkpoint step found"], "cannot read orbax checkpoint")
        restored = manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(), CONFIG_ITEM: ocp.args.JsonRestore()})
        )
        manager.close()
    except ConversionError:
        raise
    except Exception as e:  # orbax raises many types for damaged directories; name the cause
        raise ConversionError([f"{path}: {type(e).__name__}: {e}"], "cannot read orbax checkpoint") from e
    try:
        config = ResNetConfig.from_dict(restored[CONFIG_ITEM])
    except (TypeError, ValueError) as e:
        raise ConversionError([f"{path}: config item: {e}"], "cannot read orbax checkpoint") from e
    return config, unnest(restored[item]), step


__all__ = [
    "CONFIG_ITEM",
    "MODEL_EMA_ITEM",
    "MODEL_ITEM",
    "is_checkpoint_dir",
    "model_save_args",
    "nest",
    "read_model_checkpoint",
    "unnest",
]
