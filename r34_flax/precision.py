"""Full float32 precision on both frameworks: on GPUs both use TF32 for float32 matmuls and convolutions by default,
which would put ~1e-3 relative noise into every parity figure. No effect on CPUs."""

import jax
import torch


def use_full_precision() -> None:
    """Parity checks call this first; training leaves the platform defaults alone."""
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
