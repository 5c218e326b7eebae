"""The documented ways to run the suite (README, docs/testing.md) are the ones that work: the example CI job installs
as the README does, runs the quick tier and the report with flags the report takes, and caches on pyproject.toml."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from parity_tests import report
from parity_tests.conftest import QUICK

ROOT = Path(__file__).resolve().parents[1]


def ci_job() -> dict:
    text = (ROOT / "docs" / "testing.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "docs/testing.md has no yaml block"
    return yaml.safe_load(block.group(1))


def test_example_ci_job_installs_like_the_readme_and_runs_the_quick_tier() -> None:
    steps = ci_job()["jobs"]["parity"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    readme = (ROOT / "README.md").read_text()
    install = next(r for r in runs if "pip install" in r)
    assert f"{install} && .venv/bin/python -m pytest" in readme  # the README's set-up, verbatim
    assert ".venv/bin/python -m pytest -m quick" in runs
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"] == ".venv" and "hashFiles('pyproject.toml')" in cache["with"]["key"]
    for run in runs:
        words = shlex.split(run)
        if words[:3] == [".venv/bin/python", "-m", "parity_tests.report"]:
            args = report.build_parser().parse_args(words[3:])  # flags the report takes
            assert args.weights is not None


def test_quick_tier_entries_name_existing_tests() -> None:
    """Every QUICK entry names a test function that exists (a renamed test must not drop out of the tier)."""
    for entry in QUICK:
        file, name = entry.split("::")
        function = name.split("[")[0]
        assert re.search(rf"(?m)^def {function}\(", (ROOT / "parity_tests" / file).read_text()), entry
