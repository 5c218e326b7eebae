"""Lossless, strict conversion between a torch state_dict and the Flax twin's state.

Everything both directions need comes from ONE declarative table: which module kinds exist, which torch
parameter maps to which Flax variable with which layout change, and which modules a config has. `torch_to_flax`
and `flax_to_torch` walk the same `conversion_table(config)`; adding a block type (e.g. Bottleneck) means adding
its module list to `BLOCK_MODULES`, nothing else here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
from flax import nnx, traverse_util
from jax.typing import DTypeLike

from r34.config import BLOCK_EXPANSION, BODY_FIELDS, PRESETS, BlockSpec, ResNetConfig
from r34_flax.model import ResNet

FlaxPath = tuple[str | int, ...]
FlatState = dict[FlaxPath, np.ndarray]

_INT32_MAX = np.iinfo(np.int32).max


class ConversionError(ValueError):
    """Weights that do not fit the requested or inferred architecture; `problems` lists every issue found."""

    def __init__(self, problems: list[str], what: str = "cannot convert weights") -> None:
        self.problems = list(problems)
        super().__init__(f"{what}: {len(self.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one tensor's layout differs between the frameworks; `to_torch` inverts `to_flax` exactly."""

    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Layout("same", lambda a: a, lambda a: a)
CONV = Layout("conv OIHW<->HWIO", lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1))
LINEAR = Layout("linear (out,in)<->(in,out)", lambda w: w.T, lambda w: w.T)
# torch counts batches in int64; the Flax twin in int32 (64-bit ints need jax_enable_x64). Range checked on import.
COUNT = Layout("int64<->int32 counter", lambda a: a.astype(np.int32), lambda a: a.astype(np.int64))


class Param(NamedTuple):
    torch_name: str
    flax_name: str
    layout: Layout
    # torch shape from the module's dims: conv (out, in, k), batchnorm (channels,), linear (out, in).
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    # A torch buffer (running statistics, counter) rather than a trainable parameter.
    buffer: bool = False


# The declarative table: per module kind, its tensors in torch's state_dict order.
MODULE_KINDS: Mapping[str, tuple[Param, ...]] = {
    "conv": (Param("weight", "kernel", CONV, lambda d: (d[0], d[1], d[2], d[2])),),
    "bn": (
        Param("weight", "scale", SAME, lambda d: d),
        Param("bias", "bias", SAME, lambda d: d),
        Param("running_mean", "mean", SAME, lambda d: d, buffer=True),
        Param("running_var", "var", SAME, lambda d: d, buffer=True),
        Param("num_batches_tracked", "num_batches_tracked", COUNT, lambda d: (), buffer=True),
    ),
    "linear": (
        Param("weight", "kernel", LINEAR, lambda d: (d[0], d[1])),
        Param("bias", "bias", SAME, lambda d: (d[0],)),
    ),
}


class Module(NamedTuple):
    path: FlaxPath
    kind: str
    dims: tuple[int, ...]


def _downsample_modules(b: BlockSpec) -> list[Module]:
    if not b.downsample:
        return []
    return [
        Module(("downsample", 0), "conv", (b.out_channels, b.in_channels, 1)),
        Module(("downsample", 1), "bn", (b.out_channels,)),
    ]


def _basic_block_modules(b: BlockSpec) -> list[Module]:
    return [
        Module(("conv1",), "conv", (b.width, b.in_channels, 3)),
        Module(("bn1",), "bn", (b.width,)),
        Module(("conv2",), "conv", (b.out_channels, b.width, 3)),
        Module(("bn2",), "bn", (b.out_channels,)),
    ] + _downsample_modules(b)


def _bottleneck_modules(b: BlockSpec) -> list[Module]:
    return [
        Module(("conv1",), "conv", (b.width, b.in_channels, 1)),
        Module(("bn1",), "bn", (b.width,)),
        # grouped: each output channel sees width / groups input channels (torch (out, in/groups, k, k))
        Module(("conv2",), "conv", (b.width, b.width // b.groups, 3)),
        Module(("bn2",), "bn", (b.width,)),
        Module(("conv3",), "conv", (b.out_channels, b.width, 1)),
        Module(("bn3",), "bn", (b.out_channels,)),
    ] + _downsample_modules(b)


# Per block type: its modules, relative to the block. Same keys as BLOCK_EXPANSION.
BLOCK_MODULES: Mapping[str, Callable[[BlockSpec], list[Module]]] = {
    "basic": _basic_block_modules,
    "bottleneck": _bottleneck_modules,
}


def modules(config: ResNetConfig) -> list[Module]:
    """Every parameterised module of `config` in torch registration order."""
    mods = [
        Module(("conv1",), "conv", (config.stem_width, config.in_channels, 7)),
        Module(("bn1",), "bn", (config.stem_width,)),
    ]
    for b in config.blocks():
        mods += [Module((b.stage, b.index) + m.path, m.kind, m.dims) for m in BLOCK_MODULES[config.block](b)]
    mods += [Module((name,), "linear", (n, config.num_features)) for name, n in config.heads]
    return mods


class Entry(NamedTuple):
    torch_key: str
    flax_path: FlaxPath
    layout: Layout
    torch_shape: tuple[int, ...]
    kind: str
    buffer: bool

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return self.layout.to_flax(np.empty(self.torch_shape, np.uint8)).shape


def conversion_table(config: ResNetConfig) -> list[Entry]:
    """One row per tensor: torch key <-> Flax path, layout and torch shape, in torch's state_dict order."""
    rows = []
    for m in modules(config):
        for p in MODULE_KINDS[m.kind]:
            key = ".".join(str(part) for part in m.path + (p.torch_name,))
            rows.append(Entry(key, m.path + (p.flax_name,), p.layout, p.shape(m.dims), m.kind, p.buffer))
    return rows


def parameter_count(config: ResNetConfig) -> int:
    """Trainable parameters, as torch's `sum(p.numel() for p in model.parameters())` counts them."""
    return sum(int(np.prod(e.torch_shape)) for e in conversion_table(config) if not e.buffer)


# ---------------------------------------------------------------------------------------------- tensors


def path_name(path: FlaxPath) -> str:
    """("layer1", 0, "conv1", "kernel") -> "layer1/0/conv1/kernel"."""
    return "/".join(str(part) for part in path)


def parse_path_name(name: str) -> FlaxPath:
    """Inverse of `path_name`: all-digit parts are list indices (no module of the twins has such a name)."""
    return tuple(int(part) if part.isdigit() else part for part in name.split("/"))


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor, JAX array or numpy array as numpy, bit-exact; bfloat16 becomes ml_dtypes.bfloat16."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(value)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """numpy (ml_dtypes.bfloat16 included) to a contiguous torch tensor that owns its memory, bit-exact."""
    array = np.array(array, order="C")  # a copy; np.ascontiguousarray would turn 0-d counters into 1-d
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) or a.dtype in (ml_dtypes.bfloat16,)


def _check(entry: Entry, value: np.ndarray, expected_shape: tuple[int, ...], where: str) -> list[str]:
    problems = []
    if tuple(value.shape) != expected_shape:
        problems.append(f"{where}: shape {tuple(value.shape)}, expected {expected_shape}")
    if entry.layout is COUNT:
        if not np.issubdtype(value.dtype, np.integer):
            problems.append(f"{where}: dtype {value.dtype}, expected an integer batch counter")
        elif value.size and (value.min() < 0 or value.max() > _INT32_MAX):
            problems.append(f"{where}: counter value {value.max()} outside [0, {_INT32_MAX}]")
    elif not _is_float(value):
        problems.append(f"{where}: dtype {value.dtype}, expected a floating dtype")
    elif not np.all(np.isfinite(value.astype(np.float32) if value.dtype == ml_dtypes.bfloat16 else value)):
        problems.append(f"{where}: holds {int(np.sum(~np.isfinite(value.astype(np.float64))))} NaN/Inf value(s)")
    return problems


# ---------------------------------------------------------------------------------------------- inference

_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
_HEAD_KEY = re.compile(r"^([A-Za-z_]\w*)\.weight$")
_BODY = re.compile(r"^(conv1|bn1|layer\d+)\.")


def infer_config(
    state_dict: Mapping[str, Any], *, bn_eps: float = 1e-5, bn_momentum: float = 0.1
) -> ResNetConfig:
    """The ResNetConfig that a torchvision-style state_dict was made from (stages, widths, input channels,
    heads). BatchNorm eps/momentum are not stored in weights and come from the arguments. Raises
    ConversionError for anything that is not a supported ResNet."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    variant = _variant_keys(shapes)
    if variant:
        raise ConversionError(variant, "not a torchvision ResNet")
    stem = shapes.get("conv1.weight")
    if stem is None or len(stem) != 4:
        found = ", ".join(list(shapes)[:5]) + (", ..." if len(shapes) > 5 else "")
        raise ConversionError(
            [f"no 4-D 'conv1.weight' (found keys: {found or 'none'}); expected a torchvision-style ResNet state_dict"],
            "not a ResNet",
        )
    problems = []
    blocks: dict[int, set[int]] = {}
    for key in shapes:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if not stages:
        raise ConversionError(["no residual stage keys 'layer<N>.<i>.*' found"], "not a ResNet")
    if stages != list(range(1, len(stages) + 1)):
        problems.append(f"stages must be layer1..layerN without gaps, found layer{stages}")
    for s in stages:
        if sorted(blocks[s]) != list(range(len(blocks[s]))):
            problems.append(f"blocks of layer{s} must be numbered 0..n-1, found {sorted(blocks[s])}")
    block = "bottleneck" if any(k.endswith(".conv3.weight") for k in shapes if _BLOCK_KEY.match(k)) else "basic"
    # Per stage, from its first block: planes (torchvision's widths) and the 3x3's inner width and groups.
    widths, inner = [], []
    groups = set()
    for s in stages:
        last = shapes.get(f"layer{s}.0.{'conv3' if block == 'bottleneck' else 'conv1'}.weight")
        conv2 = shapes.get(f"layer{s}.0.conv2.weight")
        if last is None or len(last) != 4 or conv2 is None or len(conv2) != 4:
            problems.append(f"missing 4-D 'layer{s}.0.conv1/conv2{'/conv3' if block == 'bottleneck' else ''}."
                            f"weight'; cannot tell the width of layer{s}")
            continue
        if block == "bottleneck":
            widths.append(last[0] // BLOCK_EXPANSION[block])
            inner.append(conv2[0])
            groups.add(conv2[0] // conv2[1] if conv2[1] else 0)
        else:
            widths.append(last[0])
    width_per_group = 64
    group_count = next(iter(groups)) if len(groups) == 1 else 1
    if block == "bottleneck" and inner:
        if len(groups) > 1:
            problems.append(f"the 3x3 convolutions of the stages have different groups {sorted(groups)}")
        # torchvision: inner = int(planes * width_per_group / 64) * groups, the same width_per_group in every stage
        candidates = {w * 64 // p for w, p in zip((i // max(group_count, 1) for i in inner), widths) if p}
        width_per_group = min(candidates) if candidates else 64
        expected = [int(p * (width_per_group / 64.0)) * group_count for p in widths]
        if expected != inner:
            problems.append(f"Bottleneck inner widths {inner} fit no (groups, width_per_group): with groups "
                            f"{group_count} and width_per_group {width_per_group} they would be {expected}")
    heads = []
    for key, shape in shapes.items():
        m = _HEAD_KEY.match(key)
        if m and not _BODY.match(key):
            if len(shape) != 2:
                problems.append(f"{key}: shape {shape}; a head must be a Linear with a 2-D weight")
            else:
                heads.append((m.group(1), shape[0]))
    if not heads:
        problems.append("no classifier head ('<name>.weight' 2-D Linear weight) found")
    if stem[0] != (widths[0] if widths else stem[0]):
        problems.append(f"conv1.weight has {stem[0]} output channels but layer1 is {widths[0]} wide")
    if problems:
        raise ConversionError(problems, "not a supported ResNet")
    try:
        config = ResNetConfig(
            block=block,
            stage_sizes=tuple(len(blocks[s]) for s in stages),
            widths=tuple(widths),
            in_channels=stem[1],
            heads=tuple(heads),
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
            groups=group_count,
            width_per_group=width_per_group,
        )
    except ValueError as e:
        raise ConversionError([str(e)], "not a supported ResNet") from None
    # Some formats (safetensors) do not keep key order, so the head order is only known up to a permutation:
    # take a preset's order when the heads are the preset's.
    for preset in PRESETS.values():
        if dict(preset.heads) == dict(config.heads) and config.replace(heads=preset.heads) == preset.replace(
            bn_eps=bn_eps, bn_momentum=bn_momentum
        ):
            return config.replace(heads=preset.heads)
    return config


def _variant_keys(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """What marks a state_dict as a ResNet variant torchvision does not build (timm's deep stem, avg-down
    shortcut), naming the keys that show it. (Other extra modules, e.g. squeeze-excitation, are listed as
    unexpected keys by the key-by-key check.)"""
    problems = []
    deep_stem = sorted(k for k in shapes if re.match(r"^conv1\.\d+\.", k))
    if deep_stem:
        problems.append(f"a deep stem ({', '.join(deep_stem[:4])}{', ...' if len(deep_stem) > 4 else ''}): timm's "
                        "*c / *d / *s / *t variants (e.g. resnet50d); only torchvision's 7x7 stem 'conv1.weight' "
                        "is supported")
    avg_down = sorted(k for k in shapes if re.match(r"^layer\d+\.\d+\.downsample\.2\.", k))
    if avg_down:
        problems.append(f"an average-pool shortcut ({', '.join(avg_down[:3])}{', ...' if len(avg_down) > 3 else ''}: "
                        "the conv in downsample.1, its BatchNorm in downsample.2): timm's avg_down (*d variants); "
                        "torchvision's shortcut is downsample.0 conv + downsample.1 BatchNorm")
    return problems


def _config_differences(found: ResNetConfig, wanted: ResNetConfig) -> list[str]:
    fields = BODY_FIELDS + ("in_channels", "heads")
    # Head order is not a property of the weights (see infer_config); the requested config's order is used.
    same = lambda f, a, b: dict(a) == dict(b) if f == "heads" else a == b  # noqa: E731
    return [
        f"weights have {f}={getattr(found, f)!r} but the requested architecture has {getattr(wanted, f)!r}"
        for f in fields
        if not same(f, getattr(found, f), getattr(wanted, f))
    ]


# ---------------------------------------------------------------------------------------------- directions


def torch_to_flax(
    state_dict: Mapping[str, Any], config: ResNetConfig | None = None
) -> tuple[ResNetConfig, FlatState]:
    """torch state_dict -> (config, flat Flax state {path: array}), dtypes kept, every tensor checked.

    `config` None infers the architecture from the weights; a given config must agree with them. Raises
    ConversionError listing every missing, unexpected, misshapen or non-finite tensor at once.
    """
    arrays = {k: to_numpy(v) for k, v in state_dict.items()}
    if config is None:
        config = infer_config(arrays)
    else:
        try:
            found = infer_config(arrays, bn_eps=config.bn_eps, bn_momentum=config.bn_momentum)
        except ConversionError:
            found = None  # not even a ResNet: the key-by-key check below says what is wrong
        if found is not None and _config_differences(found, config):
            raise ConversionError(_config_differences(found, config), "weights do not match the architecture")
    table = conversion_table(config)
    problems = [f"missing key {e.torch_key!r} (shape {e.torch_shape})" for e in table if e.torch_key not in arrays]
    known = {e.torch_key for e in table}
    problems += [f"unexpected key {k!r} (shape {tuple(v.shape)})" for k, v in arrays.items() if k not in known]
    flat: FlatState = {}
    for e in table:
        if e.torch_key in arrays:
            value = arrays[e.torch_key]
            problems += _check(e, value, e.torch_shape, e.torch_key)
            if not problems:
                flat[e.flax_path] = np.array(e.layout.to_flax(value), order="C")
    if problems:
        raise ConversionError(problems)
    return config, flat


def flax_to_torch(
    flat: Mapping[FlaxPath, Any], config: ResNetConfig, *, partial: bool = False
) -> dict[str, torch.Tensor]:
    """Flat Flax state {path: array} -> torch state_dict in torchvision's key order, dtypes kept
    (num_batches_tracked back to int64), loadable with `load_state_dict(strict=True)`.

    `partial=True` converts a subset (e.g. gradients of the params only) without reporting the rest as missing.
    """
    arrays = {tuple(p): to_numpy(v) for p, v in flat.items()}
    table = conversion_table(config)
    problems = [] if partial else [
        f"missing Flax variable {path_name(e.flax_path)!r}" for e in table if e.flax_path not in arrays
    ]
    known = {e.flax_path for e in table}
    problems += [f"unexpected Flax variable {path_name(p)!r} (shape {v.shape})" for p, v in arrays.items() if p not in known]
    out: dict[str, torch.Tensor] = {}
    for e in table:
        if e.flax_path in arrays:
            value = arrays[e.flax_path]
            problems += _check(e, value, e.flax_shape, path_name(e.flax_path))
            if not problems:
                out[e.torch_key] = to_tensor(e.layout.to_torch(value))
    if problems:
        raise ConversionError(problems)
    return out


# ---------------------------------------------------------------------------------------------- models


def flax_state(model: ResNet) -> FlatState:
    """The model's variables (params, BatchNorm statistics) as {path: numpy array}."""
    pure = nnx.to_pure_dict(nnx.state(model))
    return {path: np.asarray(v) for path, v in traverse_util.flatten_dict(pure).items()}


def flax_model(
    config: ResNetConfig, flat: Mapping[FlaxPath, Any], *, dtype: DTypeLike | None = None
) -> ResNet:
    """A Flax twin holding exactly `flat` (no random init is run; dtypes are the arrays').

    float64 arrays need `jax_enable_x64`: without it JAX would silently round them to float32, so that is an error.
    """
    if jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
        wide = [path_name(p) for p, v in flat.items() if np.asarray(v).dtype in (np.float64, np.int64)]
        if wide:
            raise ConversionError(
                [f"{len(wide)} 64-bit array(s), e.g. {wide[0]!r}, but jax_enable_x64 is off and JAX would round them "
                 "to 32 bits; enable it (jax.config.update('jax_enable_x64', True)) or cast the weights first"],
                "cannot load weights losslessly",
            )
    abstract = nnx.eval_shape(lambda: ResNet(config, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in flat.items()}))
    return nnx.merge(graphdef, state)


def from_torch(
    state_dict: Mapping[str, Any], config: ResNetConfig | None = None, *, dtype: DTypeLike | None = None
) -> ResNet:
    """Flax twin from a torch (torchvision, timm or r34_torch) state_dict; architecture inferred if not given."""
    config, flat = torch_to_flax(state_dict, config)
    return flax_model(config, flat, dtype=dtype)


def to_torch(model: ResNet) -> dict[str, torch.Tensor]:
    """torch state_dict (torchvision names) of a Flax twin."""
    return flax_to_torch(flax_state(model), model.config)
