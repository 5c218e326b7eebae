"""Layer-by-layer divergence report: run both twins on the same input and compare every module's output.

  python -m parity_tests.report --preset resnet34 --size 224 --dtype float32 --mode eval
  python -m parity_tests.report --weights my_resnet.pth --dtype float64 --plot errors.png
  python -m parity_tests.report --config my_resnet.json --mode train      # a ResNetConfig of your own, as JSON

Prints each module's max |d| and max |d| / max |ref| in execution order and names the first module above
tolerance. The reference is the torch twin in float64, also for a float32 Flax run (the same weights and input,
exactly): the suite's float32 bounds hold one float32 implementation to the exact result (tolerances.F32_REL);
twin against twin would add torch's own float32 error. Exit status: 0 all within tolerance, 1 a module diverges,
2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from parity_tests.helpers import as_torch_layout, max_abs, nchw_to_nhwc, precision, torch_model
from parity_tests.tolerances import F32_FEATURE_MAP_REL, F32_REL, F32_TRAIN_LOGITS_REL, F64_ABS
from r34 import PRESETS, ResNetConfig, get_preset
from r34.cli_help import DefaultsHelpFormatter
from r34.machine import cpu_description
from r34_flax.conversion import ConversionError, from_torch
from r34_flax.model import ResNet
from r34_flax.precision import use_full_precision
from r34_flax.weights_io import atomic_write, read_torch_weights
from r34_torch import resnet as torch_resnet

EXIT_DIVERGES = 1
EXIT_BAD_INPUT = 2


@dataclasses.dataclass(frozen=True)
class Row:
    module: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float
    tolerance: float
    measure: str  # "abs" or "rel": which of the two the tolerance bounds

    @property
    def ok(self) -> bool:
        return (self.max_abs if self.measure == "abs" else self.rel) <= self.tolerance


def tolerance(dtype: str, mode: str, ndim: int) -> tuple[float, str]:
    """The parity suite's bound for one output (see parity_tests/tolerances.py for the reasons)."""
    if dtype == "float64":
        return F64_ABS, "abs"
    if mode == "train":
        return max(F32_TRAIN_LOGITS_REL, F32_FEATURE_MAP_REL), "rel"
    return (F32_FEATURE_MAP_REL if ndim == 4 else F32_REL), "rel"


def torch_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every named submodule's output in execution order (cloned: ReLU and the residual add work in place)."""
    out: dict[str, np.ndarray] = {}

    def hook(name: str):
        def record(module: torch.nn.Module, args: tuple, result: torch.Tensor) -> None:  # None: output unchanged
            out.setdefault(name, result.detach().clone().numpy())
        return record

    handles = []
    for name, module in model.named_modules():
        if name and not isinstance(module, torch.nn.ReLU):  # one ReLU object serves many call sites
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


@contextlib.contextmanager
def _recording(model: nnx.Module, out: dict[str, np.ndarray]) -> Iterator[None]:
    """NNX has no forward hooks: wrap `__call__` of each module class in the tree for the duration."""
    modules = [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module) and path]
    names = {id(node): ".".join(map(str, path)) for path, node in modules}
    originals = {type(node): type(node).__call__ for _, node in modules}

    def wrap(cls, call):
        def recorded(self, *args, **kwargs):
            result = call(self, *args, **kwargs)
            if id(self) in names:
                out.setdefault(names[id(self)], as_torch_layout(np.asarray(result)))
            return result
        return recorded

    for cls, call in originals.items():
        cls.__call__ = wrap(cls, call)
    try:
        yield
    finally:
        for cls, call in originals.items():
            cls.__call__ = call


def flax_outputs(model: ResNet, x: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with _recording(model, out):
        model(jnp.asarray(nchw_to_nhwc(x)))
    return out


def compare(reference: torch.nn.Module, candidate: ResNet, x: np.ndarray, dtype: str, mode: str) -> list[Row]:
    """Rows for every module both twins have, in torch's execution order. `x` is the candidate's input; the
    reference runs it in its own dtype (float64 for a float32 candidate: the same values, exactly)."""
    reference.train(mode == "train")
    if mode == "train":
        candidate.train()
    else:
        candidate.eval()
    ref = torch_outputs(reference, torch.from_numpy(x).to(next(reference.parameters()).dtype))
    got = flax_outputs(candidate, x)
    rows = []
    for name, r in ref.items():
        if name not in got:
            continue  # torch-only modules: maxpool, avgpool (functions in the Flax twin)
        g = got[name]
        if g.shape != r.shape:
            rows.append(Row(name, r.shape, float("inf"), float("inf"), 0.0, "abs"))
            continue
        err = max_abs(r, g)
        scale = float(np.max(np.abs(r))) or 1.0
        bound, measure = tolerance(dtype, mode, r.ndim)
        rows.append(Row(name, r.shape, err, err / scale, bound, measure))
    return rows


def render(rows: list[Row]) -> str:
    lines = [f"{'#':>3}  {'module':<32} {'shape':<20} {'max|d|':>10} {'rel':>10} {'tolerance':>14}"]
    for i, row in enumerate(rows):
        flag = "" if row.ok else "  <-- above tolerance"
        lines.append(f"{i:>3}  {row.module:<32} {str(row.shape):<20} {row.max_abs:>10.3e} {row.rel:>10.3e} "
                     f"{row.measure + ' ' + format(row.tolerance, '.0e'):>14}{flag}")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.18), 4.5))
    values = [max(r.max_abs if r.measure == "abs" else r.rel, 1e-18) for r in rows]
    colors = ["tab:blue" if r.ok else "tab:red" for r in rows]
    ax.bar(range(len(rows)), values, color=colors)
    ax.plot(range(len(rows)), [r.tolerance for r in rows], "k--", linewidth=1, label="tolerance")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r.module for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel(f"{rows[0].measure} error" if rows else "error")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), force=True)
    plt.close(fig)


def load_reference(args: argparse.Namespace) -> torch.nn.Module:
    if args.weights:
        state_dict, _ = read_torch_weights(args.weights)
        config = from_torch(state_dict).config  # strict: infers and checks the architecture
        model = torch_resnet(config)
        model.load_state_dict(state_dict, strict=True)
        return model
    if args.config:
        try:
            config = ResNetConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"--config {args.config}: not a readable ResNetConfig JSON file ({e})") from None
        return torch_model(config, args.seed)
    return torch_model(get_preset(args.preset), args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m parity_tests.report", description=__doc__,
                                     formatter_class=DefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, help="torch weights file (.pth/.pt/.safetensors) to compare with")
    source.add_argument("--preset", choices=list(PRESETS), default="tiny",
                        help="random weights with randomised BatchNorm statistics for this preset")
    source.add_argument("--config", type=Path, metavar="FILE.json",
                        help="random weights for an architecture of your own: a ResNetConfig as JSON "
                             "(ResNetConfig.to_dict(), e.g. {\"block\": \"bottleneck\", \"stage_sizes\": "
                             "[2, 2, 2, 2], ...})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and input")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--batch", type=int, default=2, help="images in the batch")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="the Flax twin's dtype (the reference is always float64)")
    parser.add_argument("--mode", choices=["eval", "train"], default="eval",
                        help="eval: running statistics; train: batch statistics")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the per-module error to this PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_full_precision()
    if args.size < 1 or args.batch < 1:
        print(f"error: --size and --batch must be >= 1, got {args.size} and {args.batch}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        print(f"error: --plot {args.plot}: expected a .png file name", file=sys.stderr)
        return EXIT_BAD_INPUT
    torch_dtype = torch.float64 if args.dtype == "float64" else torch.float32
    try:
        reference = load_reference(args).to(torch_dtype)
        with precision(args.dtype):
            candidate = from_torch(reference.state_dict(), reference.config)
            channels = reference.config.in_channels
            x = np.random.default_rng(args.seed).standard_normal((args.batch, channels, args.size, args.size))
            # The exact result of these weights (module docstring): the candidate holds its own copy of them, so
            # the reference is cast in place (a no-op in float64).
            rows = compare(reference.double(), candidate, x.astype(args.dtype), args.dtype, args.mode)
    except (ConversionError, ValueError, RuntimeError) as e:  # bad weights; input too small for the network
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    made = f"config {args.config}" if args.config else f"preset {args.preset}"
    source = args.weights or f"{made}, seed {args.seed}"
    print(f"{source}: {args.mode} mode, {args.dtype}, input {args.batch}x{channels}x{args.size}x{args.size}; "
          f"reference: the torch twin in float64")
    print(f"CPU: {cpu_description()}")
    print(render(rows))
    bad = [r for r in rows if not r.ok]
    if args.plot:
        plot(rows, args.plot, f"{source}, {args.mode}, {args.dtype}")
        print(f"plot written to {args.plot}")
    if bad:
        print(f"FIRST DIVERGENCE: {bad[0].module} ({bad[0].measure} error "
              f"{bad[0].max_abs if bad[0].measure == 'abs' else bad[0].rel:.3e} > {bad[0].tolerance:.0e}); "
              f"{len(bad)} of {len(rows)} modules above tolerance")
        return EXIT_DIVERGES
    print(f"all {len(rows)} modules within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
