"""Fixtures shared across test files."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import pytest

from parity_tests import recipe_runs as recipe_runs_lib
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


# The quick tier, `pytest -m quick` (docs/testing.md): the smallest check of every public path, for a user's CI on
# every pull request. Test ids relative to parity_tests/; an id without [params] takes every parametrisation.
QUICK = (
    # both twins: torchvision's module tree, names and parameter count
    "test_models.py::test_resnet34_parameter_count_in_both_twins",
    "test_models.py::test_torch_state_dict_equals_torchvision[resnet34-resnet34]",
    # the converter: both directions bit-identical (a Bottleneck body), the CLI's round trip and a refusal
    "test_conversion.py::test_torch_to_flax_to_torch_is_bit_identical[tiny_bottleneck-torch.float32]",
    "test_convert_cli.py::test_round_trip_through_every_file_format[tiny]",
    "test_convert_cli.py::test_bad_weights_exit_2_with_message_and_no_file[shape]",
    # eval parity: ResNet-34 in float64 and float32 (with the conditioning check), a Bottleneck body in float64
    "test_family_parity.py::test_every_builder_matches_in_eval_mode[resnet34]",
    "test_eval_parity.py::test_bottleneck_eval_logits_and_stages_match[resnet50-32-float64-dilation0]",
    # one train step: every gradient and the BatchNorm statistics, float64 and float32 under two roundings; steps
    "test_train_parity.py::test_gradients_of_every_parameter[tiny@64-float64-default]",
    "test_train_parity.py::test_gradients_of_every_parameter[tiny@64-float32-default]",
    "test_train_parity.py::test_gradients_of_every_parameter[tiny@64-float32-xla_conv]",
    "test_train_parity.py::test_optimizer_trajectories[tiny-sgd-float64-default]",
    # a float32 check still catches an injected bug
    "test_injected_bugs.py::test_train_mode_check_catches[same_padding]",
    # the same JPEG files to the same logits through both pipelines
    "test_jpeg_parity.py::test_same_files_same_logits",
    # the trainer's default run, shortened, and its bad input
    "test_trainer.py::test_default_run_shortened",
    "test_trainer.py::test_bad_flags_are_clear_errors",
    # torchvision's recipe: every learning rate, each optimizer with weight-decay groups, the EMA, the float
    # augmentations, auto-augment operations, the repeated-augmentation sampler
    "test_recipe.py::test_learning_rate_of_every_step_equals_torchs_schedulers",
    "test_recipe.py::test_optimizer_steps_with_weight_decay_groups_equal_torchs",
    "test_recipe.py::test_ema_parameters_and_buffers_equal_torchvisions",
    "test_augment_parity.py::test_erasing_mixup_and_cutmix_given_the_same_draws_equal_torchvisions",
    "test_augment_parity.py::test_every_operation_at_every_bin_and_sign_gives_torchvisions_pixels",
    "test_augment_parity.py::test_repeated_augmentation_sampler_is_torchvisions",
    # published weights: the catalogue, a download into torch's cache loaded by both twins, transformers' format
    "test_weights.py::test_catalogue_is_torchvisions[resnet50]",
    "test_weights.py::test_download_lands_in_torchs_cache_once_and_both_twins_load_it",
    "test_weights.py::test_hugging_face_format_loads_in_transformers_and_both_twins_and_round_trips[resnet18]",
    # preemption: SIGTERM to a training process, exit 75 after a checkpoint, the same command resumes
    "test_preemption.py::test_sigterm_saves_exits_75_and_the_same_command_resumes",
    # every command line's --help; the divergence report
    "test_cli_help.py::test_help_lists_every_flag_with_its_default_once",
    "test_report.py::test_healthy_twins_pass_and_plot",
)


def in_quick_tier(nodeid: str) -> bool:
    test = nodeid.split("parity_tests/", 1)[-1]
    return any(test == entry or ("[" not in entry and test.startswith(entry + "[")) for entry in QUICK)


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the quick tier."""
    for item in items:
        if in_quick_tier(item.nodeid):
            item.add_marker(pytest.mark.quick)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the accelerator extras' resolution (network-bound) as soon as it is known to be selected (after -m /
    -k deselection)."""
    config = session.config
    if any(item.originalname == "test_accelerator_extras_resolve" for item in session.items):
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


@pytest.fixture(scope="session")
def recipe_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, starting weights) of the shortened named-recipe runs (parity_tests/recipe_runs.py)."""
    root = tmp_path_factory.mktemp("recipe_runs")
    return recipe_runs_lib.write_images(root / "images"), recipe_runs_lib.write_init(root / "tiny.pth")


@pytest.fixture(scope="session")
def recipe_runs(tmp_path_factory: pytest.TempPathFactory,
                recipe_images: tuple[Path, Path]) -> Callable[[str, str], Path]:
    """`run(recipe, framework)`: the work directory of that recipe's shortened run by that trainer ("flax",
    "torch"), run once per session (test_recipe_runs checks them; test_preemption interrupts the same runs). What
    the run printed is beside it, in `stdout.txt`."""
    from train import loop_flax, loop_torch

    done: dict[tuple[str, str], Path] = {}

    def run(recipe: str, framework: str) -> Path:
        if (recipe, framework) not in done:
            workdir = tmp_path_factory.mktemp(f"{recipe}-{framework}") / "run"
            main = {"flax": loop_flax.main, "torch": loop_torch.main}[framework]
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = main(recipe_runs_lib.argv(recipe, *recipe_images, workdir))
            (workdir.parent / "stdout.txt").write_text(printed.getvalue())
            assert code == 0, (recipe, framework, printed.getvalue()[-2000:])
            done[recipe, framework] = workdir
        return done[recipe, framework]

    return run
