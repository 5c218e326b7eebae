"""What a run will do, decided from the flags before any compute: data, model config, recipe, batch layout, length,
workdir. Shared by both trainers, so they train the same thing."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from r34.config import ResNetConfig, get_preset
from r34_flax.weights_io import atomic_write
from train.data import pipeline
from train.data.spec import AugmentSpec
from train.model_setup import ConfigError, resolve_config
from train.recipe import Recipe


@dataclasses.dataclass
class Plan:
    args: argparse.Namespace
    spec: pipeline.DatasetSpec
    sources: dict[str, Any]
    config: ResNetConfig
    recipe: Recipe
    steps_per_epoch: int
    total_steps: int
    workdir: Path
    replicas: int = 1  # torchvision's world size: the global batch is args.batch_size per replica
    devices: int = 1

    @property
    def global_batch(self) -> int:
        return self.args.batch_size * self.replicas

    def identity(self) -> dict:
        """What a checkpoint must agree on to be resumed by this run."""
        return json.loads(json.dumps({
            "config": self.config.to_dict(), "recipe": dataclasses.asdict(self.recipe), "dataset": self.spec.name,
            "image_size": self.spec.image_size, "augment": self.spec.augment, "eval_resize": self.spec.eval_resize,
            "eval_crop": self.spec.eval_crop, "augmentation": dataclasses.asdict(self.spec.augmentation),
            "batch_size": self.args.batch_size, "replicas": self.replicas, "seed": self.args.seed}))

    @property
    def device_count(self) -> int:
        return self.devices

    def describe(self) -> list[str]:
        """The resolved run, as printed at start and saved in WORKDIR/config.json."""
        per_device = self.global_batch // self.device_count
        return [f"batch: {self.args.batch_size} per replica x {self.replicas} replicas = {self.global_batch} global, "
                f"{per_device} per device on {self.device_count} device(s); {self.steps_per_epoch} steps per epoch, "
                f"{self.total_steps} steps"]


def identity_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'name: saved -> current' for every value that differs between two run identities (nested by dots)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def augmentation(args: argparse.Namespace, replicas: int) -> AugmentSpec:
    return AugmentSpec(auto_augment=args.auto_augment, ra_magnitude=args.ra_magnitude,
                       augmix_severity=args.augmix_severity, random_erase=args.random_erase,
                       interpolation=args.interpolation, mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha,
                       ra_reps=args.ra_reps if args.ra_sampler else 0, replicas=replicas)


def make_plan(args: argparse.Namespace, framework: str, devices: int = 1) -> Plan:
    """Everything decided before any compute: flags checked, data set loaded (prepared if needed), model fitted to
    it, recipe resolved. `devices`: the devices the global batch is split over (all processes)."""
    for flag in ("batch_size", "epochs", "log_every", "checkpoint_every", "keep"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    replicas = args.world_size or devices
    global_batch = args.batch_size * replicas
    if global_batch % devices:
        raise ConfigError(f"--batch-size {args.batch_size} x --world-size {replicas} = {global_batch} images is not "
                          f"divisible by the {devices} devices; use a world size or batch that is")
    # Checked before any data is prepared: the recipe alone (its epochs and steps per epoch come later).
    recipe = make_recipe(args, steps_per_epoch=1, global_batch=global_batch)
    spec, sources = pipeline.load(args.dataset, args.data_dir, args.train_crop_size or args.image_size,
                                  args.manual_dir, augment=args.augment, eval_resize=args.eval_resize,
                                  prepared_dir=args.prepared_dir, skip_bad_images=args.skip_bad_images,
                                  eval_crop=args.val_crop_size,
                                  augmentation=augmentation(args, replicas))
    config = resolve_config(args.preset, preset, spec)
    steps_per_epoch = pipeline.steps_per_epoch(spec.num_train, global_batch, spec.augmentation)
    if args.eval_only:  # no training: the recipe is only described, never run
        steps_per_epoch = max(1, steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {args.batch_size} x {replicas} replicas = {global_batch} images exceeds "
                          f"the {spec.num_train} training examples"
                          + (" the repeated-augmentation sampler keeps (len // 256 * 256)" if args.ra_sampler else ""))
    recipe = make_recipe(args, steps_per_epoch, global_batch)
    workdir = args.workdir or Path("runs") / f"{args.dataset}-{args.preset}-{framework}"
    if isinstance(args.resume, Path):
        workdir = resume_directory(args.resume, args.workdir)
    return Plan(args, spec, sources, config, recipe, steps_per_epoch, recipe.steps, Path(workdir), replicas, devices)


def resume_directory(path: Path, output_dir: Path | None) -> Path:
    """The run directory `--resume PATH` names: a run directory, its checkpoints/ or its checkpoint.pth (torchvision's
    spelling). The run continues there; another --output-dir is refused (a run's checkpoints stay in one place)."""
    path = Path(path)
    run_dir = path.parent if path.name in ("checkpoints", "checkpoint.pth") else path
    if not ((run_dir / "checkpoints").is_dir() or (run_dir / "checkpoint.pth").is_file()):
        raise ConfigError(f"--resume {path}: no run there (expected a run directory holding checkpoints/ or "
                          "checkpoint.pth, or one of those)")
    if output_dir is not None and Path(output_dir).resolve() != run_dir.resolve():
        raise ConfigError(f"--resume {path} continues the run in {run_dir}; --output-dir {output_dir} names another "
                          "directory: drop one of them")
    return run_dir


def make_recipe(args: argparse.Namespace, steps_per_epoch: int, global_batch: int) -> Recipe:
    """The Recipe of the flags (torchvision's names); a ConfigError names the flag that is wrong."""
    try:
        return Recipe(
            opt=args.opt, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
            norm_weight_decay=args.norm_weight_decay, bias_weight_decay=args.bias_weight_decay,
            label_smoothing=args.label_smoothing, mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha,
            lr_scheduler=args.lr_scheduler, lr_step_size=args.lr_step_size, lr_gamma=args.lr_gamma,
            lr_min=args.lr_min,
            lr_warmup_epochs=args.warmup_steps if args.warmup_steps is not None else args.lr_warmup_epochs,
            lr_warmup_method=args.lr_warmup_method, lr_warmup_decay=args.lr_warmup_decay, epochs=args.epochs,
            steps_per_epoch=steps_per_epoch, total_steps=args.steps,
            schedule_unit="step" if args.warmup_steps is not None else "epoch", clip_grad_norm=args.clip_grad_norm,
            model_ema=args.model_ema, model_ema_steps=args.model_ema_steps, model_ema_decay=args.model_ema_decay,
            ema_global_batch=global_batch)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def announce(run: Plan, say: Any) -> None:
    """The resolved run at start (recipe expansion, notes, batch layout), and WORKDIR/config.json with every value."""
    for note in run.args.notes:
        say(note)
    for line in run.describe():
        say(line)


def write_config(run: Plan, framework: str) -> None:
    """WORKDIR/config.json: every resolved flag, the recipe and the batch layout (atomic)."""
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(run.args).items()
            if k not in ("notes", "recipe_expansion", "started")}
    record = {"framework": framework, "args": args, "recipe_expansion": {k: str(v) if isinstance(v, Path) else v
                                                                         for k, v in run.args.recipe_expansion.items()},
              "run": run.identity(), "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
              "global_batch": run.global_batch, "replicas": run.replicas, "describe": run.describe()}
    atomic_write(run.workdir / "config.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1, default=str)),
                 force=True)
