"""XLA:CPU flags the Flax twin trains faster with, put into XLA_FLAGS before JAX starts its CPU backend.

`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` keeps lone convolutions out of XLA's YNNPACK
fusions, whose convolution kernels ran 1.5-1.8x slower (forward + backward) than XLA's default here:
ResNet-34 train step +10-15% at 32-64 px, forward of a 56x56x64 conv 18 ms -> 10 ms (jaxlib 0.10.2, 2-core
AVX-512). It also makes float64 convolutions ~7x slower (they leave their fast path), which is why importing
`r34_flax` does NOT apply it (the float64 parity suite would double in time): `python -m train.flax` and
`python -m train.bench` call `apply_cpu_flags()` first thing; a program of your own can do the same before its first
JAX computation. The flag is experimental and version-specific (an unknown flag aborts XLA at start-up), so it is
set only on the jaxlib series it was measured on. It touches the CPU backend only; GPU and TPU compilation is
unchanged. Set R34_XLA_CPU_FLAGS=0 to leave XLA_FLAGS alone.
"""

from __future__ import annotations

import os

import jaxlib
from jax._src import xla_bridge  # private: no public API tells whether the backends have started

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
MEASURED_ON = "0.10."  # jaxlib series the flags were measured on; re-measure before extending it
OPT_OUT = "R34_XLA_CPU_FLAGS"


def apply_cpu_flags() -> bool:
    """Add CPU_FLAGS to XLA_FLAGS (a flag the user already set keeps the user's value). Returns whether they are
    in effect: False when opted out, on another jaxlib series, or when JAX's backends already started."""
    if os.environ.get(OPT_OUT, "1") == "0" or not jaxlib.__version__.startswith(MEASURED_ON):
        return False
    current = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in CPU_FLAGS if f.split("=", 1)[0] not in current]
    if missing:
        if xla_bridge.backends_are_initialized():
            return False
        os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
    return all(f in os.environ["XLA_FLAGS"] for f in CPU_FLAGS)
