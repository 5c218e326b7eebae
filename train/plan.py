"""What a run will do, decided from the flags before any compute: data, model config, recipe, length, workdir.
Shared by both trainers, so they train the same thing."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from r34.config import ResNetConfig, get_preset
from train.data import pipeline
from train.model_setup import ConfigError, resolve_config
from train.recipe import Recipe


# Per optimizer: (peak lr, weight decay) when the flags leave them out.
DEFAULTS = {"sgd": (0.1, 1e-4), "adamw": (2e-3, 0.05)}


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

    def identity(self) -> dict:
        """What a checkpoint must agree on to be resumed by this run."""
        return {"config": self.config.to_dict(), "recipe": dataclasses.asdict(self.recipe), "dataset": self.spec.name,
                "image_size": self.spec.image_size,
                "augment": self.spec.augment, "eval_resize": self.spec.eval_resize, "batch_size": self.args.batch_size,
                "seed": self.args.seed}


def make_plan(args: argparse.Namespace, framework: str) -> Plan:
    for flag in ("batch_size", "epochs", "log_every", "checkpoint_every", "keep"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for flag in ("image_size", "eval_resize"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    spec, sources = pipeline.load(args.dataset, args.data_dir, args.image_size, args.manual_dir,
                                  augment=args.augment, eval_resize=args.eval_resize,
                                  prepared_dir=args.prepared_dir, skip_bad_images=args.skip_bad_images)
    config = resolve_config(args.preset, preset, spec)
    steps_per_epoch = pipeline.steps_per_epoch(spec.num_train, args.batch_size)
    if args.eval_only:  # no training: the recipe is only described, never run
        steps_per_epoch = max(1, steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {args.batch_size} exceeds the {spec.num_train} training examples")
    total = args.steps if args.steps else args.epochs * steps_per_epoch
    warmup = args.warmup_steps if args.warmup_steps is not None else min(steps_per_epoch, total // 10)
    lr, weight_decay = DEFAULTS[args.optimizer]
    lr = lr if args.lr is None else args.lr
    weight_decay = weight_decay if args.weight_decay is None else args.weight_decay
    try:
        recipe = Recipe(optimizer=args.optimizer, lr=lr, momentum=args.momentum, weight_decay=weight_decay,
                        warmup_steps=warmup, total_steps=total, label_smoothing=args.label_smoothing)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    workdir = args.workdir or Path("runs") / f"{args.dataset}-{args.preset}-{framework}"
    return Plan(args, spec, sources, config, recipe, steps_per_epoch, total, Path(workdir))
