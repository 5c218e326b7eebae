"""Fixtures shared across test files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

from parity_tests.bengali_files import write_competition_files
from r34.machine import cpu_description
from r34_flax.precision import use_full_precision

use_full_precision()

# XLA compilation is most of this suite's time, and many programs are compiled more than once: the same step under
# a rounding that only nudges weights or changes the torch side, the float64 runs that several test files referee
# against, a trainer subprocess repeating the in-process run. JAX's persistent compilation cache turns a repeat
# into a load (tiny-model trajectory and injected-bug tests: 168 s -> 125 s). It lives in a directory of this
# session, removed at its end, and XDG_CACHE_HOME points there too, so the trainers' default --compile-cache and
# the benchmark's JPEG cache stay out of the user's ~/.cache and no run starts warm from an earlier one. Programs
# that compile in under 0.3 s (single eager operations) are not written: storing them cost more than it saved
# (eval-parity and injected-bug tests: 104 s with the threshold, 113 s without).
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="r34-tests-cache-"))
os.environ["XDG_CACHE_HOME"] = str(SESSION_CACHE)
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(SESSION_CACHE / "r34" / "jax")  # the trainers' default, also for
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"  # subprocesses too
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the accelerator extras' resolution (network-bound) as soon as it is known to be selected."""
    if any(item.originalname == "test_accelerator_extras_resolve" for item in items):
        from parity_tests.test_install_extras import Resolution

        # Inside the session's directory, removed with it (a directory of its own was left behind by every run).
        config.extras_resolution = Resolution(Path(tempfile.mkdtemp(prefix="extras-", dir=SESSION_CACHE)))


def pytest_report_header(config: pytest.Config) -> str:
    """Float32 figures depend on the CPU's kernels: every run says which CPU its figures come from."""
    import jax
    import torch

    return f"parity figures measured on: {cpu_description()}; jax {jax.__version__}, torch {torch.__version__}"


@pytest.fixture(scope="session")
def bengali_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(manual dir, labels by image_id) of a small set of competition files in their exact format. Written once:
    parquet files with 32,333 columns are slow to write."""
    manual = tmp_path_factory.mktemp("bengali") / "manual"
    return manual, write_competition_files(manual, per_file=5)


@pytest.fixture(scope="session")
def bengali_data_dir(tmp_path_factory: pytest.TempPathFactory, bengali_files: tuple[Path, dict]) -> Path:
    """A TFDS data dir where bengali_graphemes gets prepared (at 32 px) by the first test that loads it."""
    return tmp_path_factory.mktemp("bengali_tfds")
