"""The PyTorch twin: a torchvision-compatible ResNet built from `r34.ResNetConfig`, and torchvision's builders with
their published weights (`resnet50(weights="IMAGENET1K_V2")`)."""

from r34_torch.model import BLOCKS, BasicBlock, ResNet, resnet
from r34_torch.pretrained import BUILDER_FUNCTIONS, from_pretrained

globals().update(BUILDER_FUNCTIONS)  # resnet18, resnet34, ..., wide_resnet101_2

__all__ = ["BLOCKS", "BasicBlock", "ResNet", "from_pretrained", "resnet", *BUILDER_FUNCTIONS]
