"""The accelerator extras of pyproject.toml (cuda, tpu) resolve against the package registry at their pins.

`pip install --dry-run` of exactly the requirements the extras name (read from pyproject.toml), without this
project's own dependencies: it fails when a pin cannot be satisfied (a jax version without a matching CUDA plugin or
libtpu for this Python). Needs the package registry; deselect with -m "not network" when offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
ACCELERATOR_EXTRAS = ("cuda", "tpu")


def extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def test_accelerator_extras_use_the_pinned_jax() -> None:
    pins = [d for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"] if d.startswith("jax==")]
    for name in ACCELERATOR_EXTRAS:
        assert extras()[name] == [f"jax[{'cuda12' if name == 'cuda' else name}]=={pins[0].split('==')[1]}"], name


class Resolution:
    """`pip install --dry-run` of the extras' requirements, started when the test is collected: the resolution
    waits on the registry, not the CPU, so it runs beside the suite's compute-bound tests (~20 s saved)."""

    def __init__(self, directory: Path) -> None:
        self.report = directory / "report.json"
        self.stderr = directory / "stderr.txt"
        requirements = [r for name in ACCELERATOR_EXTRAS for r in extras()[name]]
        with open(self.stderr, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report",
                 str(self.report), *requirements], stdout=subprocess.DEVNULL, stderr=err)

    def wait(self, timeout: float = 600) -> int:
        return self.process.wait(timeout)


@pytest.mark.network
def test_accelerator_extras_resolve(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    resolution = getattr(request.config, "extras_resolution", None) or Resolution(tmp_path)  # started by conftest
    report = resolution.report
    assert resolution.wait() == 0, resolution.stderr.read_text()[-3000:]
    resolved = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert resolved["jax"] == resolved["jaxlib"] == resolved["jax-cuda12-plugin"] == resolved["jax-cuda12-pjrt"]
    assert resolved["libtpu"].startswith("0.0."), resolved["libtpu"]
    print(f"\nresolved: jax {resolved['jax']}, CUDA plugin {resolved['jax-cuda12-plugin']}, libtpu "
          f"{resolved['libtpu']} ({len(resolved)} packages)")
