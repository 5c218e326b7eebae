"""`python -m train.bench`: its FLOP count, its table and JSON, its errors. (Speed itself is not asserted here:
timed unit tests on a noisy 2-core machine prove nothing; the benchmark prints the figures.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from r34 import get_preset
from train import bench


def test_resnet34_forward_flops_match_the_published_figure() -> None:
    # torchvision's model card: ResNet-34 at 224 is 3.66 GFLOPS (multiply-adds, convolutions and fc).
    macs = bench.forward_flops(get_preset("resnet34"), 224) / 2
    assert 3.66e9 <= macs <= 3.68e9, macs
    # resnet18: 1.81 G multiply-adds
    assert 1.81e9 <= bench.forward_flops(get_preset("resnet18"), 224) / 2 <= 1.83e9


# torchvision's model cards, GFLOPS (multiply-adds) at 224: the Bottleneck's 1x1-3x3-1x1 with groups.
PUBLISHED_GMACS = {"resnet50": 4.09, "resnet101": 7.80, "resnet152": 11.51, "resnext50_32x4d": 4.23,
                   "resnext101_32x8d": 16.41, "resnext101_64x4d": 15.46, "wide_resnet50_2": 11.40,
                   "wide_resnet101_2": 22.75}


@pytest.mark.parametrize("name", PUBLISHED_GMACS)
def test_bottleneck_forward_flops_match_the_published_figures(name: str) -> None:
    assert bench.forward_flops(get_preset(name), 224) / 2 / 1e9 == pytest.approx(PUBLISHED_GMACS[name], abs=0.005)


def test_a_small_run_writes_the_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    cache_dir = jax.config.jax_compilation_cache_dir
    argv = ["--preset", "tiny", "--cases", "4@32", "--no-torch-compile", "--warmup", "1", "--repeats", "2",
            "--json", str(out)]
    assert bench.main(argv) == 0
    assert jax.config.jax_compilation_cache_dir == cache_dir  # its temporary cache does not outlive it
    table = capsys.readouterr().out
    assert "flax/torch" in table and "4@32" in table
    report = json.loads(out.read_text())
    assert report["environment"]["matmul_gflops"] > 0
    rows = {r["work"]: r for r in report["rows"]}
    assert set(rows) == {"train", "inference"}
    for row in rows.values():
        assert set(row["seconds"]) == {"flax", "torch"} and all(s > 0 for s in row["seconds"].values())
    assert rows["train"]["gflop_per_call"] == pytest.approx(3 * rows["inference"]["gflop_per_call"])
    assert rows["train"]["flax_compile_s"] > 0 and rows["train"]["flax_cached_compile_s"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--cases", "32x64"], "is not BATCH@SIZE"),
    (["--cases", "1@64"], "need batch >= 2"),
])
def test_bad_cases_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_preset_is_refused(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--preset", "resnet51"]) == 2
    assert "unknown preset 'resnet51'" in capsys.readouterr().err


def test_pipeline_benchmark_runs_both_pipelines_and_writes_json(tmp_path: Path) -> None:
    """A subprocess: torchvision's DataLoader forks its workers, which a process running JAX must not do. With
    `--device`: the train-v2 row then runs the train step's normalise, erase and mix (without it, batches are only
    counted)."""
    out = tmp_path / "pipeline.json"
    argv = ["--pipeline", "--files", "40", "--batch-size", "4", "--batches", "1", "--workers", "1", "--crop-size",
            "32", "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--device"]
    done = subprocess.run([sys.executable, "-m", "train.bench", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| train | 1 |" in done.stdout and "| train-v2 | 1 |" in done.stdout and "| eval | 1 |" in done.stdout
    report = json.loads(out.read_text())
    assert [(r["split"], r["workers"]) for r in report["rows"]] == [("train", 1), ("train-v2", 1), ("eval", 1)]
    assert all(r["ours"] > 0 and r["torchvision"] > 0 for r in report["rows"]) and report["environment"]["cpu"]
    assert (tmp_path / "cache" / "jpegs_40" / "val").is_dir()


@pytest.mark.parametrize("argv, message", [(["--files", "10"], "--files 10 must be >= 20"),
                                           (["--workers", "0"], "--workers must be >= 1"),
                                           (["--batches", "0"], "--batches must be >= 1")])
def test_pipeline_benchmark_refuses_bad_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--pipeline", *argv]) == 2
    assert message in capsys.readouterr().err
