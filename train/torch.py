"""`python -m train.torch`: train the PyTorch twin, the reference (see `python -m train.torch --help`)."""

import sys

from train.loop_torch import main

if __name__ == "__main__":
    sys.exit(main())
