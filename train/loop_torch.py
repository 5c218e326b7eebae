"""The PyTorch reference run behind `python -m train.torch`: same flags, data pipeline and recipe as train.flax."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from r34_flax.conversion import ConversionError, flax_to_torch, torch_to_flax
from r34_flax.weights_io import atomic_write, torch_bytes, write_torch_weights
from r34_torch import resnet as torch_resnet
from train import eval_only as eval_only_lib
from train import metrics as metrics_lib
from train import preemption, storage
from train.data import pipeline
from train.data.transforms import normalization_table, normalize
from train.model_setup import ConfigError, read_init_weights
from train.optim_torch import ExponentialMovingAverage, make_optimizer, make_scheduler, update_ema
from train.plan import Plan, announce, identity_differences, make_plan, write_config
from train.step_torch import heads_of, train_step


def to_torch_batch(batch: dict, table: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NCHW float32 images (normalised through the pipeline's table) and int64 labels."""
    images = torch.from_numpy(np.ascontiguousarray(normalize(batch["image"], table).transpose(0, 3, 1, 2)))
    return images, {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch["labels"].items()}


def initial_model(plan: Plan, heads_required: bool = False) -> tuple[torch.nn.Module, list[str]]:
    torch.manual_seed(plan.args.seed)
    model = torch_resnet(plan.config)
    if plan.args.init_from is None:
        return model, []
    _, init = torch_to_flax(model.state_dict(), plan.config)
    flat, notes = read_init_weights(plan.args.init_from, plan.config, init, heads_required)
    model.load_state_dict(flax_to_torch(flat, plan.config), strict=True)
    return model, notes


def evaluate(plan: Plan, model: torch.nn.Module) -> dict[str, float]:
    model.eval()
    acc = metrics_lib.EvalAccumulator()
    table = normalization_table(plan.spec)
    with torch.no_grad():
        for batch in pipeline.eval_batches(plan.sources["eval"], plan.spec, plan.global_batch):
            images, _ = to_torch_batch(batch, table)
            for head, logits in heads_of(model(images), plan.config).items():
                top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices.numpy()
                y = batch["labels"][head]
                acc.add(head, top[:, 0], (top == y[:, None]).any(-1), y, batch["mask"])
    model.train()
    return acc.summarise(dict(plan.config.heads))


def eval_only(plan: Plan) -> dict[str, Any]:
    """Score --init-from's weights (else the workdir's checkpoint.pth) on the eval split; no training."""
    model, _ = initial_model(plan, heads_required=True)
    weights = plan.args.init_from
    if weights is None:
        weights = plan.workdir / "checkpoint.pth"
        if not weights.is_file():
            raise ConfigError(f"--eval-only scores --init-from WEIGHTS or the workdir's checkpoint; {weights} does "
                              "not exist")
        saved = torch.load(weights, weights_only=True)
        if plan.args.model_ema:  # torchvision: --test-only --model-ema scores the EMA model
            if "model_ema" not in saved:
                raise ConfigError(f"--test-only --model-ema: {weights} holds no EMA model")
            ema = ExponentialMovingAverage(model, plan.recipe.ema_decay)
            ema.load_state_dict(saved["model_ema"])
            model = ema.module
        else:
            model.load_state_dict(saved["model"], strict=True)
    return eval_only_lib.report(plan, evaluate(plan, model), weights, "torch", "float32")


def train(args: argparse.Namespace) -> dict[str, Any]:
    from train import augment_torch

    plan = make_plan(args, "torch")
    announce(plan, print)
    if args.eval_only:
        return {"eval_only": eval_only(plan)}
    plan.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = plan.workdir / "checkpoint.pth"
    if args.restart:
        ckpt.unlink(missing_ok=True)
        (plan.workdir / "metrics.jsonl").unlink(missing_ok=True)
    write_config(plan, "torch")
    for partial in plan.workdir.glob(f".{ckpt.name}.*.tmp"):  # a save cut short (killed, or Ctrl-C twice): never read
        partial.unlink()
    recipe = plan.recipe
    model, notes = initial_model(plan)
    for note in notes:
        print(f"init: {note}")
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe)
    ema = ExponentialMovingAverage(model, recipe.ema_decay) if recipe.model_ema else None
    logger = metrics_lib.Logger(plan.workdir)
    step = 0
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        if saved["identity"] != plan.identity():
            differs = identity_differences(saved["identity"], plan.identity())
            raise ConfigError(f"working directory {plan.workdir} holds a checkpoint of a different configuration "
                              f"({'; '.join(differs)}); use another --output-dir or --restart")
        model.load_state_dict(saved["model"], strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(saved["model_ema"])
        step = int(saved["step"])
        logger.truncate_after(step)
        print(f"resumed from {ckpt} at step {step}")

    def save() -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": scheduler.state_dict(), "step": step, "epoch": step // plan.steps_per_epoch,
                 "identity": plan.identity()}
        if ema is not None:
            state["model_ema"] = ema.state_dict()
        data = torch_bytes(state)
        try:  # a temporary file renamed over checkpoint.pth: a failed write leaves the previous one
            atomic_write(ckpt, lambda tmp: tmp.write_bytes(data), force=True)
        except OSError as e:
            raise storage.error(e, ckpt, max(storage.tree_bytes(ckpt), len(data)), what="checkpoint") from e

    stopper = preemption.StopRequest(args.preemption_signal, args.time_limit,
                                     state_bytes=sum(v.numel() * v.element_size() for v in model.state_dict().values()),
                                     started=args.started)

    print(f"training {args.preset} (PyTorch) on {plan.spec.name}, batch {plan.global_batch}, {plan.total_steps} steps")
    model.train()
    progress = tqdm(total=plan.total_steps, initial=step, disable=args.no_progress, unit="step", dynamic_ncols=True)
    final_eval: dict[str, float] = {}
    clock = metrics_lib.InputClock()
    table = normalization_table(plan.spec)
    classes = dict(plan.config.heads)
    while step < plan.total_steps:
        epoch, offset = divmod(step, plan.steps_per_epoch)
        for batch in clock.batches(pipeline.train_batches(plan.sources["train"], plan.spec, plan.global_batch,
                                                          args.seed, epoch, offset, prefetch_threads=args.workers,
                                                          ops=augment_torch.torchvision_ops)):
            images, labels = to_torch_batch(batch, table)
            if "erase" in batch:
                images = augment_torch.erase(images, batch["erase"])
            targets = labels
            if "mix" in batch:
                images, targets = augment_torch.mix(images, labels, batch["mix"], classes)
            lr = optimizer.param_groups[0]["lr"]
            step_metrics = train_step(model, optimizer, images, targets, recipe)
            if ema is not None:
                update_ema(ema, model, recipe, step)
            step += 1
            if step % recipe.steps_per_iteration == 0:  # torchvision: lr_scheduler.step() after each epoch
                scheduler.step()
            if step % args.log_every == 0 or step == plan.total_steps:
                values = {k: float(v) for k, v in step_metrics.items()}
                values["images_per_s"] = clock.batches_per_s() * plan.global_batch
                values["input_wait"] = clock.fraction()
                values["lr"] = lr
                values["epoch"] = (step - 1) // plan.steps_per_epoch
                logger.log(step, "train", values)
                progress.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{values['images_per_s']:.0f}",
                                     wait=f"{values['input_wait']:.0%}")
                clock.restart()
            progress.update(1)
            if step % args.checkpoint_every == 0:
                stopper.timed_save(save)
            if step % plan.steps_per_epoch == 0 or step == plan.total_steps:
                final_eval = evaluate(plan, model)
                logger.log(step, "eval", final_eval)
                progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in final_eval.items()))
                if ema is not None:
                    ema_eval = evaluate(plan, ema.module)
                    logger.log(step, "eval_ema", ema_eval)
                    progress.write("  EMA: " + ", ".join(f"{k} {v:.4f}" for k, v in ema_eval.items()))
            if step >= plan.total_steps:
                break
            if stopper.should_stop(step):  # after the step's logs, checkpoint and evaluation: a resume repeats none
                progress.close()
                if step % args.checkpoint_every:  # else this step's periodic checkpoint is the one
                    stopper.timed_save(save)
                logger.close()
                raise stopper.stopped(step, step // plan.steps_per_epoch)
    progress.close()
    if not final_eval:  # the workdir held a finished run: score its final state again rather than report nothing
        print(f"run already complete at step {step} of {plan.total_steps}: evaluating its final checkpoint")
        final_eval = evaluate(plan, model)
    save()
    export = plan.workdir / "export"
    export.mkdir(exist_ok=True)
    try:
        write_torch_weights(export / "model.pth", model.state_dict(), force=True)
        if ema is not None:
            write_torch_weights(export / "model_ema.pth", ema.module.state_dict(), force=True)
    except OSError as e:
        raise storage.error(e, export, storage.tree_bytes(ckpt), what="export") from e
    metrics_lib.plot_curves(logger.path, plan.workdir / "curves.png", f"{args.preset} (PyTorch) on {plan.spec.name}")
    logger.close()
    return {"step": step, "eval": final_eval}


DESCRIPTION = "Train the PyTorch ResNet twin (the reference)."


def main(argv: list[str] | None = None) -> int:
    from train import cli

    code, result = preemption.exit_code(
        lambda: train(cli.parse(argv, "python -m train.torch", DESCRIPTION, flax=False)),
        (ConfigError, pipeline.DataError, ConversionError, cli.FlagError))
    if code:
        return code
    if "eval_only" not in result:
        print(json.dumps({"final": result["eval"]}))
    return 0
