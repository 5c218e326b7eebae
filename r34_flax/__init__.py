"""The Flax (NNX) twin: a torchvision-compatible ResNet in NHWC, and the torch <-> Flax weight converter."""

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
    "from_torch",
    "infer_config",
    "resnet",
    "to_torch",
    "torch_to_flax",
]
