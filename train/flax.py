"""`python -m train.flax`: train the Flax twin (see `python -m train.flax --help`)."""

import sys

from r34_flax.xla_cpu import apply_cpu_flags
from train.loop_flax import main

if __name__ == "__main__":
    apply_cpu_flags()  # before JAX starts its CPU backend: see r34_flax.xla_cpu
    sys.exit(main())
