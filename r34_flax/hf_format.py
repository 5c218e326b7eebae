"""Hugging Face transformers' ResNet checkpoints (`ResNetForImageClassification`, `ResNetModel`) as key renamings
onto torchvision's names, both ways, bit-exact.

transformers' ResNet is torchvision's V1.5 ResNet under other names: the stem `embedder.embedder.{convolution,
normalization}`, block l of stage s `encoder.stages.{s}.layers.{l}.layer.{j}` (j = 0, 1 for basic blocks; 0, 1, 2
for bottlenecks), the projection `...shortcut`, the head `classifier.1` (prefix `resnet.` in the classification
model). Its `config.json` gives the architecture: `layer_type`, `depths`, `hidden_sizes` (each stage's output
channels), `embedding_size`, `num_channels`, `num_labels`. What it cannot express is refused: the stride in the first
1x1 (`downsample_in_bottleneck`, ResNet V1), a strided first stage, activations other than ReLU, a Bottleneck whose
inner width is not a quarter of its output (ResNeXt, Wide ResNet), a non-ResNet model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r34.config import ResNetConfig
from r34_flax.conversion import ConversionError

FORMAT = "Hugging Face transformers ResNet"
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
STEM = "embedder.embedder."
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK = re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:layer\.(\d+)|(shortcut))\.(convolution|normalization)"
                    r"\.(\w+)$")


def is_hf_state_dict(keys: Mapping[str, Any] | list[str]) -> bool:
    return any(k.removeprefix("resnet.").startswith(STEM) for k in keys)


def config_from_hf(hf: Mapping[str, Any], where: str) -> ResNetConfig:
    """The ResNetConfig of a transformers ResNet config.json; a clear error for what torchvision's ResNet is not."""
    problems = []
    if hf.get("model_type") not in (None, "resnet"):
        problems.append(f"model_type {hf.get('model_type')!r} is not a ResNet (transformers' 'resnet')")
    layer_type = hf.get("layer_type", "bottleneck")
    if layer_type not in ("basic", "bottleneck"):
        problems.append(f"layer_type {layer_type!r} is not basic or bottleneck")
    if hf.get("downsample_in_bottleneck", False):
        problems.append("downsample_in_bottleneck is true: the stride sits in the first 1x1 (ResNet V1), torchvision's "
                        "Bottleneck strides in the 3x3 (V1.5)")
    if hf.get("downsample_in_first_stage", False):
        problems.append("downsample_in_first_stage is true: torchvision's first stage keeps the stem's resolution")
    if hf.get("hidden_act", "relu") != "relu":
        problems.append(f"hidden_act {hf.get('hidden_act')!r}: torchvision's ResNet uses ReLU")
    if problems:
        raise ConversionError([f"{where}: {p}" for p in problems], "not a torchvision ResNet")
    expansion = 4 if layer_type == "bottleneck" else 1
    hidden = list(hf.get("hidden_sizes", [256, 512, 1024, 2048]))
    if any(h % expansion for h in hidden):
        raise ConversionError([f"{where}: hidden_sizes {hidden} are not multiples of {expansion}"], "not a ResNet")
    labels = hf.get("num_labels") or len(hf.get("id2label") or {}) or 1000
    config = ResNetConfig(block=layer_type, stage_sizes=tuple(hf.get("depths", [3, 4, 6, 3])),
                          widths=tuple(h // expansion for h in hidden), in_channels=hf.get("num_channels", 3),
                          heads=(("fc", labels),))
    if hf.get("embedding_size", 64) != config.stem_width:
        raise ConversionError([f"{where}: embedding_size {hf.get('embedding_size')} differs from the first stage's "
                               f"width {config.stem_width}: torchvision's stem has its first stage's width"],
                              "not a torchvision ResNet")
    return config


def hf_config(config: ResNetConfig, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json of the transformers ResNet equal to `config` (single head named fc, no groups or dilation);
    `base` (the config.json a file came with) keeps its other fields, labels and names."""
    if config.groups != 1 or config.width_per_group != 64 or any(config.replace_stride_with_dilation):
        raise ConversionError([f"groups={config.groups}, width_per_group={config.width_per_group}, dilation "
                               f"{config.replace_stride_with_dilation}: transformers' ResNet has none of them"],
                              "cannot write Hugging Face format")
    if config.head_names != ("fc",):
        raise ConversionError([f"heads {config.head_names}: transformers' ResNet has one classifier"],
                              "cannot write Hugging Face format")
    out = {"model_type": "resnet", "architectures": ["ResNetForImageClassification"], "layer_type": config.block,
           "hidden_act": "relu", "downsample_in_first_stage": False, "downsample_in_bottleneck": False,
           **dict(base or {})}
    out.update({"depths": list(config.stage_sizes), "hidden_sizes": [w * config.expansion for w in config.widths],
                "embedding_size": config.stem_width, "num_channels": config.in_channels})
    classes = dict(config.heads)["fc"]
    if len(out.get("id2label") or {}) != classes:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(classes)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(classes)}
    out["num_labels"] = classes
    return out


def to_torchvision(state_dict: Mapping[str, Any], where: str) -> tuple[dict[str, Any], bool]:
    """(torchvision-named state_dict, whether the file had the classification head)."""
    out, problems, head = {}, [], False
    for key, value in state_dict.items():
        name = key.removeprefix("resnet.")
        if key.startswith("classifier.1."):
            out["fc." + key[len("classifier.1."):]] = value
            head = True
        elif name.startswith(STEM):
            kind, leaf = name[len(STEM):].split(".", 1)
            out[("conv1." if kind == "convolution" else "bn1.") + leaf] = value
        elif match := _BLOCK.match(name):
            stage, layer, j, shortcut, kind, leaf = match.groups()
            prefix = f"layer{int(stage) + 1}.{layer}."
            if shortcut:
                prefix += "downsample.0." if kind == "convolution" else "downsample.1."
            else:
                prefix += f"conv{int(j) + 1}." if kind == "convolution" else f"bn{int(j) + 1}."
            out[prefix + leaf] = value
        else:
            problems.append(f"{key}: not a key of transformers' ResNet")
    if problems:
        raise ConversionError([f"{where}: {p}" for p in problems], "cannot read Hugging Face ResNet weights")
    return out, head


def from_torchvision(state_dict: Mapping[str, Any], classification: bool = True) -> dict[str, Any]:
    """transformers' names for a torchvision-named state_dict: ResNetForImageClassification's (prefix `resnet.`,
    head `classifier.1`), or ResNetModel's (no head) with `classification=False`."""
    prefix = "resnet." if classification else ""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            if classification:
                out["classifier.1." + key[3:]] = value
            continue
        parts = key.split(".")
        if parts[0] in ("conv1", "bn1"):
            out[prefix + STEM + ("convolution." if parts[0] == "conv1" else "normalization.") + parts[1]] = value
            continue
        stage, layer = int(parts[0][len("layer"):]) - 1, parts[1]
        base = f"{prefix}encoder.stages.{stage}.layers.{layer}."
        if parts[2] == "downsample":
            out[base + "shortcut." + ("convolution." if parts[3] == "0" else "normalization.") + parts[4]] = value
        else:
            j = int(parts[2][-1]) - 1
            out[base + f"layer.{j}." + ("convolution." if parts[2].startswith("conv") else "normalization.")
                + parts[3]] = value
    return out


def snapshot_files(path: Path) -> tuple[Path, Path] | None:
    """(config.json, weights file) of a transformers snapshot directory (or a weights file beside its config.json)."""
    directory = path if path.is_dir() else path.parent
    config = directory / CONFIG_FILE
    if not config.is_file():
        return None
    if path.is_dir():
        weights = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
        return (config, weights) if weights else None
    return config, path


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError([f"{path}: {e}"], "cannot read Hugging Face config") from None
