"""torchvision's builders with published weights, in the PyTorch twin: `resnet50(weights="IMAGENET1K_V2")`.

Every builder of the family (`resnet18` .. `wide_resnet101_2`) is made from its preset (r34.config) and its catalogue
entries (r34.weights): no second code path per architecture. Weights come from torch's hub cache (downloaded once,
hash-checked: r34.hub), or from any source `from_pretrained` takes (a file, `timm:NAME`, `hf:REPO`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from r34.config import get_preset
from r34.hub import resolve
from r34.weights import BUILDERS, Weights, WeightsError, get_weights, head_config
from r34_torch.model import ResNet, resnet


def from_pretrained(spec: str | Path | Weights, *, builder: str | None = None, num_classes: int | None = None,
                    replace_head: bool = False, progress: bool = True) -> ResNet:
    """The PyTorch twin with the weights of `spec` (see r34.hub.resolve: catalogue names, files, timm:, hf:),
    architecture read from the weights; `num_classes` with `replace_head=True` starts a new head."""
    # The file readers (torch pickles, safetensors, transformers' names) are the converter's; imported here so that
    # `import r34_torch` stays free of JAX.
    from r34_flax.conversion import infer_config
    from r34_flax.weights_io import read_torch_weights

    resolved = resolve(spec, builder, progress)
    state_dict, _ = read_torch_weights(resolved.path)
    config = infer_config(state_dict)
    config, new_head = head_config(config, num_classes, replace_head, resolved.description)
    model = resnet(config)
    if new_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not unexpected and all(k.startswith("fc.") for k in missing), (missing, unexpected)
    else:
        model.load_state_dict(state_dict, strict=True)
    model.weights = resolved.entry
    return model.eval()


def _builder(name: str) -> Callable[..., ResNet]:
    def build(*, weights: str | Weights | None = None, progress: bool = True, num_classes: int | None = None,
              replace_head: bool = False, **config: Any) -> ResNet:
        if weights is None:
            preset = get_preset(name)
            if num_classes is not None:
                config["heads"] = (("fc", num_classes),)
            return resnet(preset.replace(**config))
        if config:
            raise WeightsError(f"{name}(weights=...): the architecture comes with the weights; got {sorted(config)}")
        entry = get_weights(weights, name)
        model = from_pretrained(entry, num_classes=num_classes, replace_head=replace_head, progress=progress)
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"torchvision's `{name}`: with `weights` (\"IMAGENET1K_V1\", \"DEFAULT\", a `Weights` entry, ...) "
                     "the published weights, in eval mode; `num_classes` with `replace_head=True` starts a new head; "
                     "other keyword arguments are ResNetConfig fields.")
    return build


BUILDER_FUNCTIONS = {name: _builder(name) for name in BUILDERS}
