"""The PyTorch twin: a torchvision-compatible ResNet built from `r34.ResNetConfig`."""

from r34_torch.model import BLOCKS, BasicBlock, ResNet, resnet

__all__ = ["BLOCKS", "BasicBlock", "ResNet", "resnet"]
