"""`python -m train.bench`: the Flax twin against the PyTorch twin, train step and inference, in one run.

Both twins run the same ResNet in turn (the order alternates every round, so a noisy neighbour slows both alike);
each figure is the median of several timed calls after warm-up, with device work synchronised. Throughput is
reported as images/s, achieved GFLOP/s (model FLOPs: 2 x conv/linear MACs forward, 3x that for a train step, the
usual convention), the fraction of this machine's matmul rate measured in the same run, and Flax / torch ratios.
The Flax train step's compile time is measured cold (fresh persistent cache) and again after its in-memory caches
are cleared, when it is read back from JAX's persistent compilation cache, as a restarted trainer would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import torch
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from r34.cli_help import DefaultsHelpFormatter
from r34.config import ResNetConfig, get_preset
from r34.machine import cpu_model, vector_extensions
from r34_flax.model import resnet as flax_resnet
from r34_flax.weights_io import atomic_write
from r34_flax.xla_cpu import apply_cpu_flags
from r34_torch.model import resnet as torch_resnet
from train.optim_flax import make_optimizer as flax_optimizer
from train.optim_torch import make_optimizer as torch_optimizer
from train.recipe import Recipe
from train.step_flax import data_mesh, init_train_state, make_train_step, shard_batch
from train.step_torch import train_step as torch_train_step

CASES: tuple[tuple[int, int], ...] = ((8, 224), (32, 64), (128, 32))  # (batch, image size)
# SGD with Nesterov momentum and weight decay: the Flax ImageNet recipe, and the heavier optimizer update of the two.
RECIPE = Recipe(opt="sgd_nesterov", lr=0.01, epochs=1, steps_per_epoch=10_000)
CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


def forward_flops(config: ResNetConfig, size: int) -> int:
    """FLOPs (2 x multiply-adds) of convolutions and heads for one `size` x `size` image; BatchNorm, ReLU and
    pooling are left out, as in the usual ResNet-34 figure of 3.6 GMAC at 224."""

    def conv(h: int, k: int, stride: int, c_in: int, c_out: int, groups: int = 1) -> tuple[int, int]:
        out = (h - 1) // stride + 1  # padding k // 2 (dilation d: padding d), so only the stride shrinks the map
        return out, 2 * out * out * k * k * c_in * c_out // groups

    h, flops = conv(size, 7, 2, config.in_channels, config.stem_width)
    h = (h + 2 - 3) // 2 + 1  # max pool 3x3, stride 2, padding 1
    for b in config.blocks():
        h_in = h
        if config.block == "bottleneck":  # 1x1 in, grouped 3x3 with the stride, 1x1 out
            _, f1 = conv(h_in, 1, 1, b.in_channels, b.width)
            h, f2 = conv(h_in, 3, b.stride, b.width, b.width, b.groups)
            flops += f1 + f2 + conv(h, 1, 1, b.width, b.out_channels)[1]
        else:
            h, f1 = conv(h_in, 3, b.stride, b.in_channels, b.width)
            flops += f1 + conv(h, 3, 1, b.width, b.out_channels)[1]
        if b.downsample:
            flops += conv(h_in, 1, b.stride, b.in_channels, b.out_channels)[1]
    return flops + sum(2 * config.num_features * n for _, n in config.heads)


def matmul_rate(dtype: str = "float32", torch_device: str = "cpu", n: int | None = None, repeats: int = 7) -> float:
    """The machine's matmul rate in GFLOP/s for `dtype`: the better of torch (on `torch_device`) and XLA (on JAX's
    default device) on an n x n product, median of `repeats`. n defaults to 2048 on a CPU and 8192 on an
    accelerator (a 2048 product is too short there to reach its rate)."""
    device = torch.device(torch_device)
    n = n or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=dtype)
    mm = jax.jit(jnp.matmul)

    def torch_mm() -> None:
        torch.mm(a, a)
        sync(device)

    seconds = time_alternating({"torch": torch_mm, "xla": lambda: jax.block_until_ready(mm(x, x))}, 1, repeats)
    return 2 * n**3 / min(seconds.values()) / 1e9


def sync(device: torch.device) -> None:
    """Wait for torch's queued device work (CUDA runs asynchronously; CPU work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class FlaxTwin:
    """The Flax twin's jitted train step (the trainer's own) and jitted eval-mode forward on one batch."""

    def __init__(self, config: ResNetConfig, batch: int, size: int, dtype: str, seed: int) -> None:
        compute = jnp.bfloat16 if dtype == "bfloat16" else None
        model = flax_resnet(config, seed=seed, dtype=compute)
        self.tx = flax_optimizer(RECIPE, config)
        self.mesh = data_mesh()
        self.graphdef, self.state = init_train_state(model, self.tx, self.mesh)
        rng = np.random.default_rng(seed)
        images = rng.standard_normal((batch, size, size, config.in_channels), dtype=np.float32)
        labels = {name: rng.integers(0, n, batch).astype(np.int32) for name, n in config.heads}
        self.images, self.labels = shard_batch((jnp.asarray(images), labels), self.mesh)
        self.step: Callable | None = None
        self.infer_fn: Callable | None = None

    def compile_train(self) -> float:
        """Trace, lower and compile the train step; seconds taken."""
        start = time.perf_counter()
        jitted = make_train_step(self.graphdef, self.tx, RECIPE, self.mesh)
        self.step = jitted.lower(self.state, self.images, self.labels).compile()
        return time.perf_counter() - start

    def compile_infer(self) -> float:
        model = nnx.merge(self.graphdef, self.state.params, self.state.batch_stats)
        model.eval()
        graphdef, state = nnx.split(model)
        state = jax.tree.map(jnp.copy, state)  # the train step donates (deletes) the arrays it was built from
        start = time.perf_counter()
        jitted = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
        self.infer_fn = jitted.lower(state, self.images).compile()
        self.infer_state = state
        return time.perf_counter() - start

    def train(self) -> None:
        self.state, metrics = self.step(self.state, self.images, self.labels, {})
        jax.block_until_ready(metrics)

    def inference(self) -> None:
        jax.block_until_ready(self.infer_fn(self.infer_state, self.images))


class TorchTwin:
    """The PyTorch twin, channels_last (its fastest layout on CPU and GPU), eager or torch.compile'd."""

    def __init__(self, config: ResNetConfig, batch: int, size: int, dtype: str, seed: int, device: str,
                 compiled: bool) -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = torch_resnet(config).to(self.device, memory_format=torch.channels_last)
        self.runner = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch_optimizer(self.model, RECIPE)
        self.autocast = torch.bfloat16 if dtype == "bfloat16" else None
        gen = torch.Generator().manual_seed(seed)
        images = torch.randn(batch, config.in_channels, size, size, generator=gen)
        self.images = images.to(self.device).contiguous(memory_format=torch.channels_last)
        self.labels = {name: torch.randint(0, n, (batch,), generator=gen).to(self.device) for name, n in config.heads}

    def train(self) -> None:
        torch_train_step(self.runner, self.optimizer, self.images, self.labels, RECIPE, autocast_dtype=self.autocast)
        sync(self.device)

    def inference(self) -> None:
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, self.autocast or torch.float32,
                                             enabled=self.autocast is not None):
            self.runner(self.images)
        sync(self.device)


@dataclasses.dataclass
class Row:
    work: str  # "train" or "inference"
    batch: int
    size: int
    seconds: dict[str, float]  # runner name -> median seconds per call
    gflop_per_call: float
    flax_compile_s: float | None = None
    flax_cached_compile_s: float | None = None
    errors: dict[str, str] = dataclasses.field(default_factory=dict)


def time_alternating(runners: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner, called in turn (order reversed every round)."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_case(config: ResNetConfig, batch: int, size: int, *, dtype: str, device: str, torch_compile: bool,
               warmup: int, repeats: int, seed: int = 0) -> list[Row]:
    """Train and inference rows for one (batch, size)."""
    flax = FlaxTwin(config, batch, size, dtype, seed)
    eager = TorchTwin(config, batch, size, dtype, seed, device, compiled=False)
    flops = forward_flops(config, size) * batch
    rows = []
    cold = flax.compile_train()
    jax.clear_caches()  # what a restarted process has: nothing in memory, the persistent cache on disk
    cached = flax.compile_train()
    flax.compile_infer()
    for work, gflop in (("train", 3 * flops / 1e9), ("inference", flops / 1e9)):
        runners = {"flax": getattr(flax, work), "torch": getattr(eager, work)}
        errors = {}
        if torch_compile:
            try:
                compiled = TorchTwin(config, batch, size, dtype, seed, device, compiled=True)
                getattr(compiled, work)()  # compiles here, outside the timing
                runners["torch.compile"] = getattr(compiled, work)
            except Exception as e:  # torch.compile's failure modes are many and backend-specific
                errors["torch.compile"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        row = Row(work, batch, size, time_alternating(runners, warmup, repeats), gflop, errors=errors)
        if work == "train":
            row.flax_compile_s, row.flax_cached_compile_s = cold, cached
        rows.append(row)
    return rows


def environment(matmul_gflops: float, args: argparse.Namespace) -> dict:
    cpu = cpu_model()
    return {
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "torch": torch.__version__,
        "backend": jax.default_backend(), "devices": [f"{d} ({d.device_kind})" for d in jax.devices()],
        "torch_device": args.torch_device,
        "torch_device_name": (torch.cuda.get_device_name(torch.device(args.torch_device))
                              if args.torch_device.startswith("cuda") else cpu),
        # float32 on NVIDIA GPUs: both run convolutions in TF32 by default (XLA's default precision, torch's
        # cudnn.allow_tf32); torch's plain matmuls do not unless asked.
        "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "cpu": cpu, "cpu_extensions": vector_extensions(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "dtype": args.dtype, "preset": args.preset,
        "matmul_gflops": matmul_gflops, "python": sys.version.split()[0],
    }


def format_table(rows: Sequence[Row], matmul_gflops: float, dtype: str = "float32") -> str:
    runners = sorted({n for r in rows for n in r.seconds}, key=["flax", "torch", "torch.compile"].index)
    head = f"{'work':<10}{'batch@size':>11}"
    for n in runners:
        head += f"{n + ' img/s':>20}{'GFLOP/s':>9}{'%mm':>5}"
    head += f"{'flax/torch':>11}{'compile s':>10}{'cached s':>9}"
    lines = [f"{dtype} matmul rate measured: {matmul_gflops:.0f} GFLOP/s (%mm is against it)", head, "-" * len(head)]
    for r in rows:
        line = f"{r.work:<10}{f'{r.batch}@{r.size}':>11}"
        for n in runners:
            s = r.seconds.get(n)
            if s is None:
                line += f"{'-':>20}{'-':>9}{'-':>5}"
                continue
            gflops = r.gflop_per_call / s
            line += f"{r.batch / s:>20.1f}{gflops:>9.1f}{100 * gflops / matmul_gflops:>4.0f}%"
        line += f"{r.seconds['torch'] / r.seconds['flax']:>11.2f}"
        if r.flax_compile_s is not None:
            line += f"{r.flax_compile_s:>10.1f}{r.flax_cached_compile_s:>9.1f}"
        lines.append(line)
        for n, e in r.errors.items():
            lines.append(f"    {n} failed: {e}")
    return "\n".join(lines)


def parse_case(text: str) -> tuple[int, int]:
    try:
        batch, size = (int(v) for v in text.split("@"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"case {text!r} is not BATCH@SIZE, e.g. 32@64") from None
    if batch < 2 or size < 32:
        raise argparse.ArgumentTypeError(f"case {text!r}: need batch >= 2 (train-mode BatchNorm) and size >= 32")
    return batch, size


def build_parser() -> argparse.ArgumentParser:
    from train import bench_pipeline

    pipeline_help = bench_pipeline.build_parser().format_help()
    p = argparse.ArgumentParser(
        prog="python -m train.bench", description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter,
        epilog="The other mode, --pipeline, benchmarks the input pipelines instead (this project's grain pipeline "
               "against torchvision's DataLoader); its flags:\n\n" + pipeline_help)
    p.add_argument("--pipeline", action="store_true",
                   help="benchmark the input pipelines instead of the models (flags below, after the model's)")
    p.add_argument("--preset", default="resnet34", help="model (any preset of r34.config)")
    p.add_argument("--cases", nargs="+", type=parse_case, default=list(CASES), metavar="BATCH@SIZE",
                   help="batch sizes and image sizes (default: 8@224 32@64 128@32)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype: Flax dtype=bfloat16 (float32 params) vs torch autocast bfloat16")
    p.add_argument("--torch-device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="the PyTorch twin's device")
    p.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                   help="skip the torch.compile reference (it compiles for 10-50 s per row on a CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per runner before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per runner (the median is reported)")
    p.add_argument("--json", type=Path, default=Path("runs/bench.json"), help="where the table goes as JSON")
    p.add_argument("--compile-cache", type=Path,
                   help="persistent compilation cache to measure with (default: a fresh temporary one, so the "
                        "first compile is cold)")
    return p


def run(config: ResNetConfig, args: argparse.Namespace) -> tuple[list[Row], float]:
    """(rows, matmul GFLOP/s) for every case of `args`."""
    if args.torch_device.startswith("cuda"):
        # cuDNN picks convolution algorithms by timing them, as XLA's GPU autotuner does; the warm-up calls pay it.
        torch.backends.cudnn.benchmark = True
    rate = matmul_rate(args.dtype, args.torch_device)
    rows = []
    for batch, size in args.cases:
        print(f"benchmarking batch {batch} @ {size} ...", file=sys.stderr, flush=True)
        case_rows = bench_case(config, batch, size, dtype=args.dtype, device=args.torch_device,
                               torch_compile=args.torch_compile, warmup=args.warmup, repeats=args.repeats)
        # Each case's rows as soon as they are measured: a long run that is stopped still told what it found.
        print(format_table(case_rows, rate, args.dtype), file=sys.stderr, flush=True)
        rows += case_rows
    return rows, rate


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--pipeline" in argv:  # the input pipelines' benchmark (train/bench_pipeline.py)
        from train import bench_pipeline

        return bench_pipeline.main([a for a in argv if a != "--pipeline"])
    args = build_parser().parse_args(argv)
    flags_applied = apply_cpu_flags()  # as the trainer does; before the first computation starts JAX's backend
    try:
        config = get_preset(args.preset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.warmup < 1 or args.repeats < 1:
        print("error: --warmup and --repeats must be >= 1", file=sys.stderr)
        return 2
    saved = {k: getattr(jax.config, k) for k in CACHE_SETTINGS}
    with tempfile.TemporaryDirectory(prefix="r34-bench-cache-") as tmp:
        jax.config.update("jax_compilation_cache_dir", str(args.compile_cache or tmp))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        try:
            rows, rate = run(config, args)
        finally:  # a caller's own cache settings come back (the temporary cache is gone)
            for k, v in saved.items():
                jax.config.update(k, v)
            compilation_cache.reset_cache()  # else JAX keeps writing to the deleted directory
    print(format_table(rows, rate, args.dtype))
    report = {"environment": {**environment(rate, args), "r34_xla_cpu_flags": flags_applied},
              "rows": [dataclasses.asdict(r) for r in rows]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1)), force=True)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
