"""The Flax (NNX) twin: a torchvision-compatible ResNet in NHWC, the torch <-> Flax weight converter, and
torchvision's builders with their published weights (`resnet50(weights="IMAGENET1K_V2")`)."""

from r34_flax.conversion import (
    ConversionError,
    conversion_table,
    flax_model,
    flax_state,
    flax_to_torch,
    from_torch,
    infer_config,
    to_torch,
    torch_to_flax,
)
from r34_flax.layers import BatchNorm
from r34_flax.model import BLOCKS, BasicBlock, ResNet, resnet
from r34_flax.pretrained import BUILDER_FUNCTIONS, from_pretrained

globals().update(BUILDER_FUNCTIONS)  # resnet18, resnet34, ..., wide_resnet101_2

__all__ = [
    "BLOCKS",
    "BasicBlock",
    "BatchNorm",
    "ConversionError",
    "ResNet",
    "conversion_table",
    "flax_model",
    "flax_state",
    "flax_to_torch",
    "from_pretrained",
    "from_torch",
    "infer_config",
    "resnet",
    "to_torch",
    "torch_to_flax",
    *BUILDER_FUNCTIONS,
]
