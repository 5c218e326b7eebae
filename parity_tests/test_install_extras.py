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


@pytest.mark.network
def test_accelerator_extras_resolve(tmp_path: Path) -> None:
    requirements = [r for name in ACCELERATOR_EXTRAS for r in extras()[name]]
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                           "--report", str(report), *requirements], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert resolved["jax"] == resolved["jaxlib"] == resolved["jax-cuda12-plugin"] == resolved["jax-cuda12-pjrt"]
    assert resolved["libtpu"].startswith("0.0."), resolved["libtpu"]
    print(f"\nresolved: jax {resolved['jax']}, CUDA plugin {resolved['jax-cuda12-plugin']}, libtpu "
          f"{resolved['libtpu']} ({len(resolved)} packages)")
