"""torchvision's builders with published weights, in the Flax twin: `r34_flax.resnet50(weights="IMAGENET1K_V2")`
returns an NNX model with torchvision's weights.

The source file comes from torch's hub cache (downloaded once, hash-checked: r34.hub) or any source `from_pretrained`
takes (a file, `timm:NAME`, `hf:REPO`); its conversion to Flax is cached too, keyed by the source file's sha256
(`~/.cache/r34/flax_weights/`, `$XDG_CACHE_HOME/r34` when set), so a second call converts nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from r34.config import get_preset
from r34.hub import resolve, sha256_of
from r34.weights import BUILDERS, Weights, WeightsError, get_weights, head_config
from r34_flax.conversion import flax_model, flax_state
from r34_flax.model import ResNet, resnet
from r34_flax.weights_io import SAFETENSORS, convert_to_flax, read_flax_weights


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "r34" / "flax_weights"


def flax_weights_file(source: Path, progress: bool = True) -> Path:
    """The Flax safetensors of a torch (torchvision/timm/transformers) weights source, converted once: the cached
    file is named after the source and the first 16 hex digits of its sha256."""
    weights = source
    if source.is_dir():  # a transformers snapshot: its weights file decides
        weights = next(p for p in sorted(source.iterdir()) if p.suffix in (SAFETENSORS, ".bin"))
    target = cache_dir() / f"{source.stem if source.is_file() else source.name}-{sha256_of(weights)[:16]}{SAFETENSORS}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_to_flax(source, target, force=True)  # atomic: a reader never sees half a file
    return target


def from_pretrained(spec: str | Path | Weights, *, builder: str | None = None, num_classes: int | None = None,
                    replace_head: bool = False, seed: int = 0, dtype: DTypeLike | None = None,
                    param_dtype: DTypeLike = jnp.float32, progress: bool = True) -> ResNet:
    """The Flax twin (eval mode) with the weights of `spec` (see r34.hub.resolve: catalogue names, files, timm:,
    hf:), architecture read from the weights; `num_classes` with `replace_head=True` starts a new head (drawn with
    `seed`)."""
    resolved = resolve(spec, builder, progress)
    config, flat, _ = read_flax_weights(flax_weights_file(resolved.path, progress))
    config, new_head = head_config(config, num_classes, replace_head, resolved.description)
    if new_head:
        fresh = flax_state(resnet(config, seed=seed, param_dtype=param_dtype))
        flat = {path: (fresh[path] if path[0] == "fc" else value) for path, value in flat.items()}
    # The parameters in param_dtype (the file's float32 by default); BatchNorm counters stay integers.
    flat = {path: np.asarray(value).astype(param_dtype) if np.issubdtype(np.asarray(value).dtype, np.floating)
            else value for path, value in flat.items()}
    model = flax_model(config, flat, dtype=dtype)
    model.eval()
    model.weights = resolved.entry
    return model


def _builder(name: str) -> Callable[..., ResNet]:
    def build(*, weights: str | Weights | None = None, progress: bool = True, num_classes: int | None = None,
              replace_head: bool = False, seed: int = 0, dtype: DTypeLike | None = None,
              param_dtype: DTypeLike = jnp.float32, **config: Any) -> ResNet:
        if weights is None:
            preset = get_preset(name)
            if num_classes is not None:
                config["heads"] = (("fc", num_classes),)
            return resnet(preset.replace(**config), seed=seed, dtype=dtype, param_dtype=param_dtype)
        if config:
            raise WeightsError(f"{name}(weights=...): the architecture comes with the weights; got {sorted(config)}")
        return from_pretrained(get_weights(weights, name), num_classes=num_classes, replace_head=replace_head,
                               seed=seed, dtype=dtype, param_dtype=param_dtype, progress=progress)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"torchvision's `{name}` as an NNX model: with `weights` (\"IMAGENET1K_V1\", \"DEFAULT\", a "
                     "`Weights` entry, ...) the published weights, in eval mode (call .train() to fine-tune); "
                     "`num_classes` with `replace_head=True` starts a new head; other keyword arguments are "
                     "ResNetConfig fields.")
    return build


BUILDER_FUNCTIONS = {name: _builder(name) for name in BUILDERS}
