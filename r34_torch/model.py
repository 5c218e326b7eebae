"""ResNet in PyTorch, written to torchvision's `resnet.py` layout so its state_dict keys match torchvision's and timm's."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from r34.config import BlockSpec, ResNetConfig


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def downsample(spec: BlockSpec, config: ResNetConfig) -> nn.Sequential | None:
    """The projection shortcut (1x1 conv with the block's stride + BatchNorm) where the identity cannot be added."""
    if not spec.downsample:
        return None
    return nn.Sequential(
        conv1x1(spec.in_channels, spec.out_channels, spec.stride),
        nn.BatchNorm2d(spec.out_channels, eps=config.bn_eps, momentum=config.bn_momentum),
    )


class BasicBlock(nn.Module):
    def __init__(self, spec: BlockSpec, config: ResNetConfig) -> None:
        super().__init__()
        eps, momentum = config.bn_eps, config.bn_momentum
        self.conv1 = conv3x3(spec.in_channels, spec.width, spec.stride)
        self.bn1 = nn.BatchNorm2d(spec.width, eps=eps, momentum=momentum)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(spec.width, spec.out_channels)
        self.bn2 = nn.BatchNorm2d(spec.out_channels, eps=eps, momentum=momentum)
        self.downsample = downsample(spec, config)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet V1.5): the stride, groups and dilation are on conv2, the 3x3."""

    def __init__(self, spec: BlockSpec, config: ResNetConfig) -> None:
        super().__init__()
        eps, momentum = config.bn_eps, config.bn_momentum
        self.conv1 = conv1x1(spec.in_channels, spec.width)
        self.bn1 = nn.BatchNorm2d(spec.width, eps=eps, momentum=momentum)
        self.conv2 = conv3x3(spec.width, spec.width, spec.stride, spec.groups, spec.dilation)
        self.bn2 = nn.BatchNorm2d(spec.width, eps=eps, momentum=momentum)
        self.conv3 = conv1x1(spec.width, spec.out_channels)
        self.bn3 = nn.BatchNorm2d(spec.out_channels, eps=eps, momentum=momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(spec, config)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """torchvision-compatible ResNet built from a `ResNetConfig`.

    Input NCHW. With one head, `forward` returns its logits (like torchvision); with several, a dict
    head name -> logits.
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        block = BLOCKS[config.block]

        self.conv1 = nn.Conv2d(config.in_channels, config.stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width, eps=config.bn_eps, momentum=config.bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for stage in config.stage_names:
            self.add_module(stage, nn.Sequential(*[block(spec, config) for spec in config.stage_blocks(stage)]))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for name, num_classes in config.heads:
            self.add_module(name, nn.Linear(config.num_features, num_classes))

        # torchvision's init; nn.Linear keeps its default (kaiming_uniform(a=sqrt(5)) weight, uniform bias).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if config.zero_init_residual:
            for m in self.modules():
                if isinstance(m, tuple(BLOCKS.values())):
                    nn.init.constant_(m.last_bn().weight, 0)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(name, getattr(self, name)) for name in self.config.stage_names]

    def forward_intermediates(self, x: Tensor) -> dict[str, Tensor]:
        """Outputs in execution order: "stem", each stage, "pool" (flattened features), then each head."""
        out: dict[str, Tensor] = {}
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        out["stem"] = x
        for name, stage in self.stages():
            x = stage(x)
            out[name] = x
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        out["pool"] = x
        for name in self.config.head_names:
            out[name] = getattr(self, name)(x)
        return out

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        out = self.forward_intermediates(x)
        if self.config.single_head:
            return out[self.config.head_names[0]]
        return {name: out[name] for name in self.config.head_names}


def resnet(config: ResNetConfig) -> ResNet:
    """Build the PyTorch twin for `config` (e.g. `resnet(get_preset("resnet34"))`)."""
    return ResNet(config)
