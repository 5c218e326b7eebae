"""Build a PyTorch ResNet-34, convert it to Flax and print both models' logits difference.

    python -m r34_flax.demo [--preset resnet34] [--size 224] [--batch 2] [--float64]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from r34 import PRESETS, get_preset
from r34.cli_help import DefaultsHelpFormatter
from r34_flax.conversion import from_torch, to_torch
from r34_flax.precision import use_full_precision
from r34_torch import resnet as torch_resnet


def run(preset: str, size: int, batch: int, float64: bool, seed: int) -> dict[str, float | bool]:
    """Returns max|d| and max|d|/max|ref| of the logits of the two twins on one random batch."""
    config = get_preset(preset)
    torch.manual_seed(seed)
    model = torch_resnet(config)
    if float64:
        model = model.double()
    dtype = torch.float64 if float64 else torch.float32
    # Two train-mode batches give the BatchNorm layers non-trivial running statistics before eval.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, config.in_channels, 64, 64, dtype=dtype))
    model.eval()
    x = torch.randn(batch, config.in_channels, size, size, dtype=dtype)
    with torch.no_grad():
        ref = model(x)

    t0 = time.perf_counter()
    flax_model = from_torch(model.state_dict())
    convert_s = time.perf_counter() - t0
    flax_model.eval()
    got = flax_model(jnp.asarray(x.permute(0, 2, 3, 1).numpy()))

    if config.single_head:
        ref, got = {"logits": ref}, {"logits": got}
    result = {}
    for head in ref:
        r, g = ref[head].numpy(), np.asarray(got[head])
        result[f"{head} max|d|"] = float(np.abs(r - g).max())
        result[f"{head} rel"] = float(np.abs(r - g).max() / np.abs(r).max())
        result[f"{head} argmax equal"] = bool(np.array_equal(r.argmax(-1), g.argmax(-1)))
    back = to_torch(flax_model)
    sd = model.state_dict()
    result["round trip bit-identical"] = all(torch.equal(back[k], sd[k]) for k in sd)
    result["convert seconds"] = convert_s
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m r34_flax.demo", description=__doc__,
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--preset", default="resnet34", choices=list(PRESETS), help="model")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--batch", type=int, default=2, help="images in the batch")
    parser.add_argument("--float64", action="store_true", help="run both twins in float64")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and input")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_full_precision()
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    precision = "float64" if args.float64 else "float32"
    print(f"{args.preset}: torch -> flax at {args.size}x{args.size}, batch {args.batch}, {precision}")
    for name, value in run(args.preset, args.size, args.batch, args.float64, args.seed).items():
        shown = value if isinstance(value, bool) else f"{value:.3g}" if "seconds" in name else f"{value:.3e}"
        print(f"  {name:<34} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
