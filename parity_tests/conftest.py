"""Fixtures shared across test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from parity_tests.bengali_files import write_competition_files
from r34.machine import cpu_description
from r34_flax.precision import use_full_precision

use_full_precision()


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the accelerator extras' resolution (network-bound) as soon as it is known to be selected."""
    if any(item.originalname == "test_accelerator_extras_resolve" for item in items):
        import tempfile

        from parity_tests.test_install_extras import Resolution

        config.extras_resolution = Resolution(Path(tempfile.mkdtemp(prefix="r34-extras-")))


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
