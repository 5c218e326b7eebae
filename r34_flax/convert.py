"""Convert ResNet weights between PyTorch and Flax, strictly and losslessly.

  python -m r34_flax.convert to-flax resnet34.pth resnet34_flax.safetensors
  python -m r34_flax.convert to-flax torchvision:resnet34 out/        # torchvision's file, downloaded once
  python -m r34_flax.convert to-flax hf:microsoft/resnet-50 out/      # a transformers ResNet (or hf:/snapshot/dir)
  python -m r34_flax.convert to-torch resnet34_flax.safetensors resnet34.pth
  python -m r34_flax.convert to-torch resnet50_flax.safetensors resnet50_hf/ --format hf
  python -m r34_flax.convert inspect resnet34.pth

Exit status: 0 done, 2 bad input (every problem listed; no output file written).
"""

from __future__ import annotations

import argparse
import sys

from r34.cli_help import DefaultsHelpFormatter
from r34.config import PRESETS, get_preset
from r34.hub import is_source_name, resolve
from r34.weights import WeightsError
from r34_flax.conversion import ConversionError
from r34_flax.weights_io import DTYPES, OUTPUT_FORMATS, convert_to_flax, convert_to_torch, inspect_weights

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m r34_flax.convert", description=__doc__, formatter_class=DefaultsHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{to-flax,to-torch,inspect}")
    dtype_help = ("cast floating tensors to this dtype (reported); default keeps float32/float16/bfloat16 and "
                  "casts float64 to float32")

    p = sub.add_parser("to-flax", formatter_class=DefaultsHelpFormatter,
                       help="torch .pth/.pt/.safetensors -> Flax .safetensors",
                       description="Convert a torch state_dict or training checkpoint (torchvision, timm, r34_torch; "
                                   "DataParallel and torch.compile prefixes stripped) to Flax safetensors.")
    p.add_argument("src", help="torch weights: .pth/.pt (loaded with weights_only=True) or .safetensors in "
                               "torchvision's or timm's names, a transformers snapshot directory, or a hub name "
                               "(torchvision:resnet50.IMAGENET1K_V2, ResNet50_Weights.DEFAULT, timm:NAME, hf:REPO)")
    p.add_argument("dst", help="output .safetensors (Flax layout, config in metadata), or a directory to write it in")
    p.add_argument("--preset", choices=list(PRESETS), help="require this architecture (default: infer it)")
    p.add_argument("--dtype", choices=list(DTYPES), help=dtype_help)
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")

    p = sub.add_parser("to-torch", formatter_class=DefaultsHelpFormatter,
                       help="Flax .safetensors or orbax checkpoint -> torch .pth/.safetensors",
                       description="Convert Flax weights back to a plain torchvision-named state_dict.")
    p.add_argument("src", help="Flax .safetensors written by to-flax, or the trainer's orbax checkpoint directory")
    p.add_argument("dst", help="output .pth/.pt (torch.save of the state_dict) or .safetensors; with --format hf a "
                               "directory")
    p.add_argument("--format", choices=list(OUTPUT_FORMATS), default="torchvision", dest="output_format",
                   help="torchvision: a torchvision-named state_dict (timm reads it too); hf: a transformers "
                        "ResNetForImageClassification snapshot (config.json, model.safetensors)")
    p.add_argument("--dtype", choices=list(DTYPES), help=dtype_help)
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")

    p = sub.add_parser("inspect", formatter_class=DefaultsHelpFormatter,
                       help="describe a weights file and list its problems",
                       description="Print the detected architecture and preset, parameter count, dtypes and every "
                                   "problem that would stop a conversion. Exit 2 if there are problems.")
    p.add_argument("src", help="torch or Flax weights file, orbax checkpoint directory, transformers snapshot, or a "
                               "hub name (as to-flax's SRC)")
    # The top-level help lists every command with its flags (each command's --help explains them).
    parser.epilog = "commands:\n" + "\n".join(
        "  " + " ".join(command.format_usage().split()[1:]) for command in sub.choices.values())
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        src = resolve(args.src).path if is_source_name(args.src) else args.src
        if args.command == "to-flax":
            config = get_preset(args.preset) if args.preset else None
            lines = convert_to_flax(src, args.dst, config, args.dtype, args.force)
        elif args.command == "to-torch":
            lines = convert_to_torch(src, args.dst, args.dtype, args.force, args.output_format)
        else:
            lines, problems = inspect_weights(src)
            print("\n".join(lines))
            if problems:
                print(f"problems ({len(problems)}):\n" + "\n".join(f"  - {p}" for p in problems))
                return EXIT_BAD_INPUT
            print("problems: none")
            return 0
    except (ConversionError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
