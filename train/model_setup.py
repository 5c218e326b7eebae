"""The model a run trains: preset body fitted to the data set, optionally initialised from a weights file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from r34.config import BODY_FIELDS, ResNetConfig
from r34.hub import is_source_name, resolve
from r34.weights import WeightsError
from r34_flax.conversion import FlatState, conversion_table, torch_to_flax
from r34_flax.weights_io import is_flax_source, read_flax_weights, read_torch_weights
from train.data.pipeline import DatasetSpec


class ConfigError(ValueError):
    """A run configuration that cannot work; raised before any compute starts."""


def resolve_config(preset_name: str, preset: ResNetConfig, spec: DatasetSpec) -> ResNetConfig:
    """A single-head preset (torchvision's `fc`) takes the data set's classes and channels, as torchvision's
    `num_classes` does; a multi-head preset must name exactly the data set's labels."""
    if preset.single_head and len(spec.heads) == 1:
        return preset.replace(heads=spec.heads, in_channels=spec.channels)
    problems = []
    if dict(preset.heads) != dict(spec.heads):
        problems.append(f"preset {preset_name!r} has heads {dict(preset.heads)} but data set {spec.name!r} has "
                        f"labels {dict(spec.heads)}")
    if preset.in_channels != spec.channels:
        problems.append(f"preset {preset_name!r} takes {preset.in_channels}-channel images, {spec.name!r} has "
                        f"{spec.channels}")
    if problems:
        raise ConfigError("; ".join(problems))
    return preset.replace(heads=spec.heads)


def read_init_weights(path: Path | str, config: ResNetConfig, init: FlatState, heads_required: bool = False
                      ) -> tuple[FlatState, list[str]]:
    """`init` (a fresh model's flat state) with the body taken from the file at `path`.

    Heads whose name or size differ are kept from `init` (re-initialised) and reported, or refused with
    `heads_required` (scoring weights needs their heads); a 3-channel stem feeding a 1-channel model is summed over
    its input channels; a body of another architecture is refused.
    """
    if is_source_name(path):  # torchvision:..., NAME_Weights.X, timm:..., hf:...: downloaded once, into its cache
        try:
            path = resolve(path).path
        except WeightsError as e:
            raise ConfigError(f"--init-from {path}: {e}") from None
    path = Path(path)
    if is_flax_source(path):
        found, flat, notes = read_flax_weights(path)
    else:
        state_dict, notes = read_torch_weights(path)
        found, flat = torch_to_flax(state_dict)
    wrong = [f"{f}={getattr(found, f)!r} (this run: {getattr(config, f)!r})" for f in BODY_FIELDS
             if getattr(found, f) != getattr(config, f)]
    if wrong:
        raise ConfigError(f"--init-from {path}: the body is another architecture: " + ", ".join(wrong))
    out = dict(init)
    stem = ("conv1", "kernel")
    kernel = flat[stem]
    if found.in_channels != config.in_channels:
        if found.in_channels == 3 and config.in_channels == 1:
            flat = dict(flat)
            flat[stem] = kernel.sum(axis=2, keepdims=True).astype(kernel.dtype)  # HWIO: sum over I
            notes.append("adapted the 3-channel stem to 1 channel by summing conv1 over its input channels")
        else:
            raise ConfigError(f"--init-from {path}: stem takes {found.in_channels} channels, this run "
                              f"{config.in_channels}; only 3 -> 1 can be adapted")
    head_names = set(config.head_names) | set(found.head_names)
    for entry in conversion_table(config):
        head = entry.flax_path[0]
        if head in head_names:
            continue
        out[entry.flax_path] = np.asarray(flat[entry.flax_path]).astype(np.asarray(init[entry.flax_path]).dtype)
    for name, classes in config.heads:
        if dict(found.heads).get(name) == classes:
            for leaf in ("kernel", "bias"):
                out[(name, leaf)] = np.asarray(flat[(name, leaf)]).astype(init[(name, leaf)].dtype)
            notes.append(f"head {name}: loaded ({classes} classes)")
        else:
            had = dict(found.heads).get(name)
            if heads_required:
                raise ConfigError(f"{path} has {'no head ' + repr(name) if had is None else f'{had} classes'}"
                                  f"{'' if had is None else f' in head {name!r}'} but the data set has {classes}: "
                                  "scoring it would score a random head")
            notes.append(f"head {name}: re-initialised ({classes} classes; the file has "
                         f"{'no such head' if had is None else f'{had} classes'})")
    return out, notes
