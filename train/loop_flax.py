"""The Flax training run behind `python -m train.flax`: data-parallel over every device JAX finds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from r34_flax.checkpoint import MODEL_EMA_ITEM, model_save_args, read_model_checkpoint
from r34_flax.conversion import ConversionError, flax_model, flax_state, flax_to_torch
from r34_flax.model import ResNet, resnet
from r34_flax.weights_io import write_flax_weights, write_torch_weights
from train import eval_only as eval_only_lib
from train import metrics as metrics_lib
from train import preemption, storage
from train.data import pipeline
from train.data.transforms import normalization_table
from train.cli import FlagError
from train.model_setup import ConfigError, read_init_weights
from train.optim_flax import make_optimizer
from train.plan import Plan, announce, identity_differences, make_plan, write_config
from train.step_flax import TrainState, data_mesh, init_train_state, make_train_step, normalize_images

TRAIN_STATE, META = "train_state", "meta"


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why."""


@dataclasses.dataclass
class Run(Plan):
    """The plan plus what JAX adds: devices and compute dtype."""

    devices: list[jax.Device] = dataclasses.field(default_factory=list)  # type: ignore[assignment]
    dtype: Any = jnp.float32

    @property
    def device_count(self) -> int:
        return len(self.devices)


# What a plain `pip install -e .` lacks for each accelerator (extras of pyproject.toml, pinned to the project's jax).
INSTALL_HINTS = {
    "gpu": ". A CUDA host needs JAX's CUDA plugin: pip install -e '.[cuda]', with an NVIDIA driver installed; "
           "see README, Accelerators",
    "tpu": ". A Cloud TPU VM needs libtpu: pip install -e '.[tpu]'; see README, Accelerators",
}


def select_devices(platform: str | None) -> list[jax.Device]:
    present = sorted({d.platform for d in jax.devices()})
    if platform is None:
        return jax.devices()
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    if not devices:
        raise RunError(f"platform {platform!r} requested but JAX finds no such device; present: {', '.join(present)}"
                       f"{INSTALL_HINTS.get(platform, '')}")
    return devices


def initialize_distributed(args: argparse.Namespace) -> None:
    """Join the other processes before JAX touches a device: from flags, or from what the cluster provides."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(v is None for v in explicit):
        return
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise ConfigError("--coordinator, --num-processes and --process-id go together")
    if args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        raise ConfigError(f"--process-id {args.process_id} is not in [0, {args.num_processes})")
    # CPU devices of different processes talk through gloo; GPUs and TPUs use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def setup(args: argparse.Namespace) -> Run:
    """Everything checked before any compute: platform, data, model config, batch divisibility, recipe."""
    devices = select_devices("tpu" if args.tpu else args.platform)
    dtype = jnp.bfloat16 if (args.dtype or ("bfloat16" if args.tpu else "float32")) == "bfloat16" else jnp.float32
    plan = make_plan(args, "flax", devices=len(devices))
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(Plan) if f.name != "devices"}
    return Run(**fields, devices=devices, dtype=dtype)


def initial_model(run: Run, weights: Path | None = None, heads_required: bool = False) -> tuple[ResNet, list[str]]:
    """A fresh model, with the body (and, with `heads_required`, all heads) of `weights` (default --init-from)."""
    model = resnet(run.config, seed=run.args.seed, dtype=run.dtype)
    weights = weights or run.args.init_from
    if weights is None:
        return model, []
    try:
        flat, notes = read_init_weights(weights, run.config, flax_state(model), heads_required)
    except ConversionError as e:
        flag = "--init-from" if run.args.init_from else "--eval-only"
        raise ConfigError(f"{flag} {weights}: {e}") from None
    return flax_model(run.config, flat, dtype=run.dtype), notes


def checkpoint_manager(run: Run) -> ocp.CheckpointManager:
    # Data-parallel: every saved array is replicated on every device. orbax's default on CPU and TPU
    # (replica-parallel) has each replica write a slice of each array, one sliced copy per replica and array shape,
    # each slice a compiled program (a tiny-model save on 8 CPU devices: 128 compilations, 17 s blocked); one
    # replica's copy written once is all a replicated array needs. Process-wide, as orbax registers type handlers.
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                            override=True)
    # A save cut short (the process killed, or Ctrl-C twice) is a temporary directory that never counts: removed at
    # the next start.
    options = ocp.CheckpointManagerOptions(max_to_keep=run.args.keep, save_interval_steps=1,
                                           enable_async_checkpointing=True, cleanup_tmp_directories=True)
    items = (TRAIN_STATE, "model", "config", META) + ((MODEL_EMA_ITEM,) if run.recipe.model_ema else ())
    return ocp.CheckpointManager((run.workdir / "checkpoints").resolve(), options=options, item_names=items)


def flat_model_state(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State) -> dict:
    """The model's variables as a flat {path: array} dict (the converter's layout)."""
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, params, batch_stats))))


def save(manager: ocp.CheckpointManager, run: Run, state: TrainState, graphdef: nnx.GraphDef) -> None:
    step = int(state.step)
    # jax arrays, not host copies: orbax writes each replicated array once, whatever the process count.
    ema = (flat_model_state(graphdef, state.ema["params"], state.ema["batch_stats"]) if state.ema else None)
    items = model_save_args(run.config, flat_model_state(graphdef, state.params, state.batch_stats), ema)
    meta = {"step": step, "run": run.identity()}
    try:
        manager.save(step, args=ocp.args.Composite(**{TRAIN_STATE: ocp.args.StandardSave(state),
                                                      META: ocp.args.JsonSave(meta), **items}), force=True)
    except Exception as e:  # an earlier asynchronous save's failure surfaces here too
        raise storage.error(e, run.workdir / "checkpoints", max(storage.largest_step_bytes(
            run.workdir / "checkpoints"), state_bytes(state)), what="checkpoint") from e


def save_and_wait(manager: ocp.CheckpointManager, run: Run, state: TrainState, graphdef: nnx.GraphDef) -> None:
    save(manager, run, state, graphdef)
    wait_for_saves(manager, run)


def wait_for_saves(manager: ocp.CheckpointManager, run: Run) -> None:
    """Wait for orbax's asynchronous writes; one that failed for lack of space is a StorageError naming the path and
    the space a checkpoint takes (the previous checkpoints are intact: orbax renames a save into place when
    complete and deletes old ones only after)."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # orbax wraps the OSError of its writer threads
        raise storage.error(e, run.workdir / "checkpoints", storage.largest_step_bytes(run.workdir / "checkpoints"),
                            what="checkpoint") from e


def finish_saves(manager: ocp.CheckpointManager) -> None:
    """Let an asynchronous save in flight complete before the run stops on an error (best effort: the error that
    stops the run is the one to report)."""
    try:
        manager.wait_until_finished()
        manager.close()
    except Exception as e:
        print(f"warning: the checkpoint being written could not be completed ({type(e).__name__}: {e})",
              file=sys.stderr)


def state_bytes(state: TrainState) -> int:
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(state))


def restore(manager: ocp.CheckpointManager, run: Run, state: TrainState) -> TrainState:
    """The newest readable checkpoint; an unreadable one (truncated, half-written by a crash) is named and skipped
    for the one before. None readable is an error: starting over silently would lose the run."""
    directory = run.workdir / "checkpoints"
    steps = sorted(manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    for step in steps:
        try:
            meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        except Exception as e:  # orbax raises many types for damaged files
            set_aside(manager, run, step, e)
            continue
        if meta["run"] != run.identity():
            differs = identity_differences(meta["run"], run.identity())
            raise ConfigError(f"working directory {run.workdir} holds a checkpoint (step {step}) of a different "
                              f"configuration ({'; '.join(differs)}); use another --output-dir or --restart")
        try:
            args = ocp.args.Composite(**{TRAIN_STATE: ocp.args.StandardRestore(abstract)})
            return manager.restore(step, args=args)[TRAIN_STATE]
        except Exception as e:
            set_aside(manager, run, step, e)
    raise RunError(f"no readable checkpoint in {directory} (tried steps {steps}); refusing to start over "
                   "silently: pass --restart to start over on purpose")


def set_aside(manager: ocp.CheckpointManager, run: Run, step: int, error: Exception) -> None:
    """Name an unreadable checkpoint and move it out of the way (kept for inspection): the run will write that
    step again."""
    source = run.workdir / "checkpoints" / str(step)
    target = run.workdir / "checkpoints_damaged" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    warn(f"checkpoint step {step} in {run.workdir / 'checkpoints'} is unreadable ({type(error).__name__}: "
         f"{str(error)[:300]}); moved to {target}; trying the previous one")
    if jax.process_index() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
    manager.reload()


def warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr)


def check_finite(values: dict[str, float], checked: int, step: int, manager: ocp.CheckpointManager,
                 run: Run) -> None:
    """Stop on a NaN/Inf loss, naming the steps it can lie in and the last good checkpoint (kept)."""
    if np.isfinite(values["loss"]) or run.args.skip_nonfinite:
        return
    manager.wait_until_finished()
    raise RunError(f"loss is {values['loss']} at step {step} (non-finite somewhere in steps {checked + 1}-{step}); "
                   f"the last good checkpoint is step {manager.latest_step()} in {run.workdir / 'checkpoints'}; "
                   "lower --lr, or pass --skip-nonfinite to skip such steps")


def make_eval_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, spec: pipeline.DatasetSpec):
    """The jitted eval step on the pipeline's uint8 batches: top-1 prediction, top-5 hit and label per head."""
    input_table = normalization_table(spec)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))

    def step(params: nnx.State, batch_stats: nnx.State, images: jax.Array, labels: dict, mask: jax.Array) -> dict:
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        out = model(normalize_images(images, input_table))
        heads = out if isinstance(out, dict) else {model.config.head_names[0]: out}
        result = {"mask": mask}
        for name, logits in heads.items():
            k = min(5, logits.shape[-1])
            top = jax.lax.top_k(logits, k)[1]
            result[name] = (top[:, 0], jnp.any(top == labels[name][:, None], axis=-1), labels[name])
        return result

    # Replicated outputs: every process can read the whole global batch's predictions, labels and mask.
    return jax.jit(step, in_shardings=(replicated, replicated, batch, batch, batch), out_shardings=replicated)


def put_batch(batch: dict, mesh: jax.sharding.Mesh) -> tuple[jax.Array, dict]:
    """This process's part of a global batch -> global arrays sharded over the data axis (any process count)."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    put = lambda a: jax.make_array_from_process_local_data(sharding, a)  # noqa: E731
    return put(batch["image"]), {k: put(v) for k, v in batch["labels"].items()}


def put_augment(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """The batch's drawn augmentation parameters: erasing boxes sharded like the images, the MixUp/CutMix draws
    (one row per replica of the global batch, the same in every process) replicated; λ at the float dtype."""
    out = {}
    if "erase" in batch:
        out["erase"] = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("data")),
                                                              batch["erase"])
    if "mix" in batch:
        replicated = NamedSharding(mesh, PartitionSpec())
        floating = jnp.result_type(float)
        out["mix"] = {k: jax.make_array_from_process_local_data(
            replicated, v.astype(floating) if v.dtype == np.float64 else v) for k, v in batch["mix"].items()}
    return out


def evaluate(run: Run, eval_step, state: TrainState, mesh, shard: pipeline.Sharding) -> dict[str, float]:
    """Top-1/top-5 (and the grapheme metric) of `state` (anything with .params and .batch_stats) on the eval split."""
    acc = metrics_lib.EvalAccumulator()
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    for batch in pipeline.eval_batches(run.sources["eval"], run.spec, run.global_batch, shard):
        images, y = put_batch(batch, mesh)
        mask = jax.make_array_from_process_local_data(sharding, batch["mask"])
        out = jax.device_get(eval_step(state.params, state.batch_stats, images, y, mask))
        keep = out.pop("mask")
        for head, (preds, top5, truth) in out.items():
            acc.add(head, preds, top5, truth, keep)
    return acc.summarise(dict(run.config.heads))


def export(run: Run, model: ResNet, name: str = "model") -> tuple[Path, Path]:
    """torchvision-named NAME.pth and NAME.safetensors of a trained model, and NAME_flax.safetensors."""
    out = run.workdir / "export"
    out.mkdir(parents=True, exist_ok=True)
    flat = flax_state(model)
    state_dict = flax_to_torch(flat, run.config)
    pth, st = out / f"{name}.pth", out / f"{name}.safetensors"
    write_torch_weights(pth, state_dict, force=True)
    write_torch_weights(st, state_dict, force=True)
    write_flax_weights(out / f"{name}_flax.safetensors", run.config, flat, force=True)
    return pth, st


def eval_only(run: Run, mesh: jax.sharding.Mesh, shard: pipeline.Sharding) -> dict[str, Any]:
    """Score --init-from's weights (else the workdir's latest checkpoint, its EMA model with --model-ema) on the
    eval split; no training."""
    weights = run.args.init_from or run.workdir / "checkpoints"
    if run.args.init_from is None and not weights.is_dir():
        raise ConfigError(f"--eval-only scores --init-from WEIGHTS or the workdir's checkpoints; {weights} does "
                          "not exist")
    if run.args.init_from is None and run.args.model_ema:  # torchvision: --test-only --model-ema scores the EMA
        try:
            config, flat, step = read_model_checkpoint(weights, item=MODEL_EMA_ITEM)
        except ConversionError as e:
            raise ConfigError(f"--test-only --model-ema: {weights} holds no EMA model ({e})") from None
        model = flax_model(config, flat, dtype=run.dtype)
        weights = weights / f"{step} (EMA)"
    else:
        model, _ = initial_model(run, weights, heads_required=True)
    model.eval()
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = SimpleNamespace(params=jax.device_put(params, replicated), batch_stats=jax.device_put(batch_stats,
                                                                                                  replicated))
    metrics = evaluate(run, make_eval_step(graphdef, mesh, run.spec), state, mesh, shard)
    if jax.process_index() != 0:
        return {"metrics": metrics}
    return eval_only_lib.report(run, metrics, weights, "flax", jnp.dtype(run.dtype).name)


def make_stopper(args: argparse.Namespace, say: Any, state: TrainState) -> preemption.StopRequest:
    """The run's preemption watch: SIGTERM, SIGINT, --preemption-signal, --time-limit (and SLURM's job end)."""
    return preemption.StopRequest(args.preemption_signal, args.time_limit, jax.process_count() > 1,
                                  state_bytes(state), say, args.started)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training described by `args`; returns the final metrics (and the torch re-score)."""
    run = setup(args)
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    mesh = data_mesh(run.devices)
    shard = pipeline.Sharding(jax.process_index(), jax.process_count())
    announce(run, say)
    if args.eval_only:
        return {"eval_only": eval_only(run, mesh, shard)}
    run.workdir.mkdir(parents=True, exist_ok=True)
    damaged = run.workdir / "checkpoints_damaged"
    if args.restart and lead:
        for old in (run.workdir / "checkpoints", damaged):
            shutil.rmtree(old, ignore_errors=True)
        (run.workdir / "metrics.jsonl").unlink(missing_ok=True)
    if lead:
        write_config(run, "flax")
    jax.config.update("jax_compilation_cache_dir", str(Path(args.compile_cache).resolve()))

    model, notes = initial_model(run)
    for note in notes:
        say(f"init: {note}")
    tx = make_optimizer(run.recipe, run.config)
    graphdef, state = init_train_state(model, tx, mesh, ema=run.recipe.model_ema)
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
    manager = checkpoint_manager(run)
    logger = metrics_lib.Logger(run.workdir, enabled=lead)
    if manager.latest_step() is not None:  # --restart removed them above
        state = restore(manager, run, state)
        say(f"resumed from {run.workdir / 'checkpoints'} at step {int(state.step)}")
        logger.truncate_after(int(state.step))
    elif damaged.exists() and any(damaged.iterdir()):
        raise RunError(f"no readable checkpoint in {run.workdir / 'checkpoints'}, only damaged ones in {damaged}; "
                       "refusing to start over silently: pass --restart to start over on purpose")
    step_fn = make_train_step(graphdef, tx, run.recipe, mesh, args.skip_nonfinite, normalization_table(run.spec))
    stopper = make_stopper(args, say, state)
    lrs, per_lr = run.recipe.lr_per_epoch(), run.recipe.steps_per_iteration
    eval_step = make_eval_step(eval_graphdef, mesh, run.spec)

    say(f"training {args.preset} on {run.spec.name} ({run.spec.num_train} train / {run.spec.num_eval} eval, "
        f"{run.spec.image_size}px, {run.spec.channels}ch) on {len(run.devices)} {run.devices[0].platform} device(s), "
        f"batch {run.global_batch}, {run.total_steps} steps, {jnp.dtype(run.dtype).name} compute")
    start = int(state.step)
    progress = tqdm(total=run.total_steps, initial=start, disable=not lead or args.no_progress, unit="step",
                    dynamic_ncols=True)
    final_eval: dict[str, float] = {}
    clock = metrics_lib.InputClock()
    step = checked = start
    try:
        while step < run.total_steps:
            epoch, offset = divmod(step, run.steps_per_epoch)
            batches = pipeline.train_batches(run.sources["train"], run.spec, run.global_batch, args.seed, epoch,
                                             offset, shard, prefetch_threads=args.workers)
            for batch in clock.batches(batches):
                images, labels = put_batch(batch, mesh)
                state, step_metrics = step_fn(state, images, labels, put_augment(batch, mesh))
                step += 1
                if step % args.log_every == 0 or step == run.total_steps:
                    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}  # the only host sync
                    check_finite(values, checked, step, manager, run)
                    checked = step
                    values["images_per_s"] = clock.batches_per_s() * run.global_batch
                    values["input_wait"] = clock.fraction()
                    values["lr"] = lrs[(step - 1) // per_lr]
                    values["epoch"] = (step - 1) // run.steps_per_epoch
                    logger.log(step, "train", values)
                    accuracy = np.mean([v for k, v in values.items() if k.startswith("accuracy")])
                    progress.set_postfix(loss=f"{values['loss']:.3f}", acc=f"{accuracy:.3f}",
                                         img_s=f"{values['images_per_s']:.0f}", wait=f"{values['input_wait']:.0%}")
                    clock.restart()
                progress.update(1)
                if step % args.checkpoint_every == 0:
                    # Never checkpoint a diverged state: this sync is as rare as checkpoints.
                    check_finite({k: float(v) for k, v in jax.device_get(step_metrics).items()}, checked, step,
                                 manager, run)
                    checked = step
                    # Under a time limit, saves are waited for: their measured time sets the margin.
                    stopper.timed_save(lambda: (save_and_wait if stopper.deadline else save)(manager, run, state,
                                                                                             graphdef))
                if step % run.steps_per_epoch == 0 or step == run.total_steps:
                    final_eval = evaluate_epoch(run, eval_step, state, mesh, shard, logger, step,
                                                progress if lead else None)
                if step >= run.total_steps:
                    break
                if stopper.should_stop(step):  # after the step's logs, checkpoint and evaluation: a resume repeats none
                    progress.close()
                    if manager.latest_step() == step:  # the periodic checkpoint of this very step: wait for it
                        stopper.timed_save(lambda: wait_for_saves(manager, run))
                    else:
                        stopper.timed_save(lambda: save_and_wait(manager, run, state, graphdef))
                    manager.close()
                    logger.close()
                    raise stopper.stopped(step, step // run.steps_per_epoch)
    except (KeyboardInterrupt, SystemExit, preemption.Preempted, storage.StorageError):
        raise
    except Exception:  # bad data met mid-epoch, a diverged loss, ...: a checkpoint in flight is kept
        finish_saves(manager)
        raise
    progress.close()
    if not final_eval:  # the workdir held a finished run: score its final state again rather than report nothing
        say(f"run already complete at step {step} of {run.total_steps}: evaluating its final checkpoint")
        final_eval = evaluate(run, eval_step, state, mesh, shard)
    if manager.latest_step() != step:
        save(manager, run, state, graphdef)
    wait_for_saves(manager, run)
    manager.close()
    result: dict[str, Any] = {"step": step, "eval": final_eval}
    flax_eval, compute = final_eval, "compute dtype"
    if run.dtype != jnp.float32:
        # bfloat16 predictions cannot equal float32 torch's bit for bit: also score the same (float32) parameters
        # with float32 compute, which is what the exported weights compute.
        flax_eval = evaluate(run, make_eval_step(float32_graphdef(run), mesh, run.spec), state, mesh, shard)
        result["eval_float32"], compute = flax_eval, "float32"
    if lead:
        trained = flax_model(run.config, flat_model_state(graphdef, state.params, state.batch_stats))
        try:
            pth, _ = export(run, trained)
            if state.ema:
                export(run, flax_model(run.config, flat_model_state(graphdef, state.ema["params"],
                                                                    state.ema["batch_stats"])), "model_ema")
        except OSError as e:  # written through temporary files: nothing half-written is left
            raise storage.error(e, run.workdir / "export", 3 * state_bytes(state), what="export") from e
        metrics_lib.plot_curves(logger.path, run.workdir / "curves.png", f"{args.preset} on {run.spec.name}")
        result["torch_rescore"] = torch_rescore(run, pth)
        say(f"exported {pth} and {pth.with_suffix('.safetensors')}"
            + (" (and model_ema.*)" if state.ema else "") + f"; curves in {run.workdir / 'curves.png'}")
        for key in flax_eval:
            if key.startswith("top1/") or key == "grapheme_score":
                say(f"final {key}: flax ({compute}) {flax_eval[key]:.4f}, torch re-score from {pth.name} "
                    f"{result['torch_rescore'][key]:.4f}")
    logger.close()
    return result


def evaluate_epoch(run: Run, eval_step, state: TrainState, mesh, shard: pipeline.Sharding,
                   logger: metrics_lib.Logger, step: int, progress: Any) -> dict[str, float]:
    """The end-of-epoch evaluation: the model, and beside it the EMA model (torchvision's "EMA" line)."""
    final_eval = evaluate(run, eval_step, state, mesh, shard)
    logger.log(step, "eval", final_eval)
    lines = [f"step {step} (epoch {step / run.steps_per_epoch:.2f}): "
             + ", ".join(f"{k} {v:.4f}" for k, v in final_eval.items())]
    if state.ema:
        ema_eval = evaluate(run, eval_step, SimpleNamespace(params=state.ema["params"],
                                                            batch_stats=state.ema["batch_stats"]), mesh, shard)
        logger.log(step, "eval_ema", ema_eval)
        lines.append("  EMA: " + ", ".join(f"{k} {v:.4f}" for k, v in ema_eval.items()))
    if progress is not None:
        for line in lines:
            progress.write(line)
    return final_eval


def float32_graphdef(run: Run) -> nnx.GraphDef:
    """The eval graph of the same model computing in float32."""
    model = nnx.eval_shape(lambda: resnet(run.config, dtype=jnp.float32))
    model.eval()
    return nnx.split(model, nnx.Param, nnx.BatchStat)[0]


def torch_rescore(run: Run, pth: Path) -> dict[str, float]:
    """The PyTorch twin, loaded strictly from the exported .pth, scores the same eval set (train.torch's eval)."""
    import torch

    from r34_torch import resnet as torch_resnet
    from train.loop_torch import evaluate

    model = torch_resnet(run.config)
    model.load_state_dict(torch.load(pth, weights_only=True), strict=True)
    return evaluate(run, model)


DESCRIPTION = "Train the Flax ResNet twin, data-parallel over all devices."


def main(argv: list[str] | None = None) -> int:
    from train import cli

    def run() -> dict[str, Any]:
        args = cli.parse(argv, "python -m train.flax", DESCRIPTION, flax=True)
        initialize_distributed(args)
        return train(args)

    code, result = preemption.exit_code(run, (ConfigError, RunError, pipeline.DataError, ConversionError, FlagError),
                                        speaks=lambda: jax.process_index() == 0)
    if code:
        return code
    if "eval_only" in result:
        return 0
    if jax.process_index() == 0:
        print(json.dumps({"final": result["eval"], "final_float32": result.get("eval_float32"),
                          "torch_rescore": result.get("torch_rescore")}))
    return 0
