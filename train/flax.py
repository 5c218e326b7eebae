"""`python -m train.flax`: train the Flax twin (see `python -m train.flax --help`)."""

import sys

from train.loop_flax import main

if __name__ == "__main__":
    sys.exit(main())
