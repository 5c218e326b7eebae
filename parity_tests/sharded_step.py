"""Run as a separate process with 8 simulated CPU devices: the trainer's jitted step on a 1-device mesh and on
an 8-device mesh, same model and recipe, same global batches; prints the largest parameter and BN-statistic difference.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m parity_tests.sharded_step DATA_DIR [TRAINER FLAGS]

With trainer flags it then runs `train.flax` with them in the same 8-device process. Like `train.flax`, it applies
the XLA:CPU flags of r34_flax.xla_cpu first.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from parity_tests.helpers import max_rel
from parity_tests.roundings import ROUNDINGS, Rounding
from r34.cli_help import DefaultsHelpFormatter
from r34_flax import flax_state
from r34_flax.xla_cpu import apply_cpu_flags
from train.cli import parse
from train.data import pipeline
from train.data.transforms import normalization_table
from train.loop_flax import Run, initial_model, setup
from train.loop_flax import main as train_main
from train.optim_flax import make_optimizer
from train.step_flax import data_mesh, init_train_state, make_train_step, shard_batch

STEPS = 3
# The comparison holds for another rounding of the same steps too (parity_tests/roundings.py): 1-ulp nudged weights.
# XLA's own convolution (xla_conv) is left to the single-device checks, for suite time: sharding changes the order of
# the BatchNorm and gradient reductions, not the convolutions (measured under it: 2.2e-6 to 2.6e-6, tolerances.py).
SHARDED_ROUNDINGS = ("default", "ulp")


def run(devices: list, plan: Run, rounding: Rounding) -> dict:
    """STEPS of the trainer's step (its model, recipe, batch and flags in `plan`) on a mesh of `devices`, under
    `rounding`: the trained state, flat."""
    tx = make_optimizer(plan.recipe, plan.config)
    mesh = data_mesh(devices)
    graphdef, state = init_train_state(rounding.flax_model(initial_model(plan)[0]), tx, mesh)
    step = make_train_step(graphdef, tx, plan.recipe, mesh, plan.args.skip_nonfinite, normalization_table(plan.spec))
    batches = pipeline.train_batches(plan.sources["train"], plan.spec, plan.global_batch, seed=0, epoch=0)
    for batch in list(batches)[:STEPS]:
        state, _ = step(state, *shard_batch((batch["image"], batch["labels"]), mesh))
    from flax import nnx

    return flax_state(nnx.merge(graphdef, state.params, state.batch_stats))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity_tests.sharded_step", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("data_dir", help="TFDS data directory holding (or to hold) the digits")
    p.add_argument("trainer_flags", nargs=argparse.REMAINDER, help="flags of python -m train.flax, run afterwards")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # The trainer's XLA:CPU flag, as `python -m train.flax` sets it: this process is the suite's run of the flag's
    # float32 rounding (the in-process tests run without it). R34_XLA_CPU_FLAGS=0 leaves it off.
    apply_cpu_flags()
    assert len(jax.devices()) == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    trainer_flags = args.trainer_flags
    # The trainer's own step, as the trainer flags configure it (so the trainer run that follows finds the 8-device
    # program compiled); without trainer flags, the tiny body on the digits, batch 32.
    args = parse(["--preset", "tiny", "--batch-size", "4", "--steps", str(STEPS), "--data-dir", args.data_dir,
                  *trainer_flags], "sharded_step", __doc__, flax=True)
    plan = setup(args)
    for name in SHARDED_ROUNDINGS:
        with ROUNDINGS[name].applied():
            one = run(jax.devices()[:1], plan, ROUNDINGS[name])
            eight = run(jax.devices(), plan, ROUNDINGS[name])
        errors = {"/".join(map(str, k)): max_rel(one[k], eight[k])
                  for k in one if np.issubdtype(one[k].dtype, np.floating)}
        counters_equal = all(np.array_equal(one[k], eight[k]) for k in one if k[-1] == "num_batches_tracked")
        worst = max(errors, key=errors.get)
        print(json.dumps({"steps": STEPS, "rounding": name, "worst": worst, "rel": errors[worst],
                          "counters_equal": counters_equal}))
    if trainer_flags:
        sys.exit(train_main(trainer_flags))


if __name__ == "__main__":
    main()
