"""`python -m train.flax`: train the Flax twin (see `python -m train.flax --help`)."""

import os
import sys

from r34_flax.xla_cpu import apply_cpu_flags
from train.loop_flax import main
from train.preemption import EXIT_STORAGE

if __name__ == "__main__":
    apply_cpu_flags()  # before JAX starts its CPU backend: see r34_flax.xla_cpu
    code = main()
    if code == EXIT_STORAGE:
        # orbax's failed writer threads print tracebacks while the interpreter shuts down: end here, so the message
        # that names the path and the space needed stays near the end.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
