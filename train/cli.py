"""Command-line flags shared by `python -m train.flax` and `python -m train.torch`: torchvision's classification
references' flags (same names, defaults and meaning, `../shared/RECIPE_FACTS.md`), named recipes, and this project's
own flags and earlier spellings.

A torchvision command pasted after `python -m train.flax` (in place of `torchrun ... train.py`) runs the same
recipe. `-b/--batch-size` is per replica, as torchvision's is per GPU: the global batch is `-b x --world-size`, and
the world size defaults to the number of devices (so N devices train torchvision's recipe on N GPUs); `--world-size
8` reproduces an 8-GPU recipe on any device count (global batch, MixUp pairs, EMA adjustment and repeated
augmentation as on 8 GPUs). Flags torchvision has that cannot be honoured stop the run, naming what to use instead.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

from r34.cli_help import DefaultsHelpFormatter
from r34.config import PRESETS
from r34.weights import WeightsError, get_weights
from train import preemption
from train.data.auto_augment import AUGMIX_REFUSAL, INTERPOLATIONS, POLICIES
from train.data.pipeline import DEFAULT_TFDS_DIR
from train.data.transforms import AUGMENTS
from train.recipe import OPTIMIZERS, RECIPES, SCHEDULERS, WARMUP_METHODS

DEFAULT_DATA_DIR = DEFAULT_TFDS_DIR
DEFAULT_COMPILE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "r34" / "jax"
DEFAULT_DATASET = "sklearn_digits"
# The recipe a run of the embedded digits gets without --recipe (torchvision's V1 defaults would take 90 epochs).
DIGITS_RECIPE = "digits"


class FlagError(ValueError):
    """A flag that cannot be honoured or a combination that cannot work; the message names it and what to use."""


def build_parser(prog: str, description: str, flax: bool, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """Both trainers' flags. `suppress_defaults`: no defaults at all (parsing then tells which flags were given)."""
    p = argparse.ArgumentParser(prog=prog, description=description + "\n\n" + (__doc__ or "").split("\n\n")[1],
                                formatter_class=DefaultsHelpFormatter,
                                argument_default=argparse.SUPPRESS if suppress_defaults else None)

    def add(group: argparse._ActionsContainer, *flags: str, **kwargs) -> None:
        if suppress_defaults:
            kwargs.pop("default", None)
        group.add_argument(*flags, **kwargs)

    # argparse formats help with %: a literal one is doubled
    recipe_names = ", ".join(f"{name} ({text.split(':')[0]})" for name, (text, _) in RECIPES.items()).replace("%", "%%")
    data = p.add_argument_group("data and preprocessing")
    add(data, "--dataset", default=DEFAULT_DATASET,
        help="imagefolder (a folder in torchvision's ImageFolder layout: --data-dir PATH holding train/<class>/* and "
             "val/<class>/* or test/<class>/*), sklearn_digits (embedded, offline), bengali_graphemes (manual dir), "
             "or any TFDS image classification data set (cifar10, imagenette, imagenet2012, ...)")
    add(data, "--data-dir", type=Path, default=DEFAULT_DATA_DIR,
        help="TFDS data directory; with --dataset imagefolder, the image folder")
    add(data, "--data-path", type=Path,
        help="torchvision's spelling: an ImageFolder tree with train/ and val/ (same as --dataset imagefolder "
             "--data-dir PATH)")
    add(data, "--prepared-dir", type=Path, default=DEFAULT_DATA_DIR,
        help="where --dataset imagefolder is prepared once (ArrayRecord of the original file bytes)")
    add(data, "--skip-bad-images", action="store_true",
        help="imagefolder: leave out (and list) files that cannot be decoded instead of stopping")
    add(data, "--manual-dir", type=Path, help="manual download dir (bengali_graphemes, imagenet2012)")
    add(data, "--augment", choices=list(AUGMENTS),
        help="preprocessing preset. imagenet: torchvision's (train RandomResizedCrop + flip, eval Resize + "
             "CenterCrop); cifar: resize to a square, pad-and-crop, flip. Default: imagenet for data sets of variable "
             "image size (image folders, imagenette, imagenet2012), cifar for fixed-size ones; flips only where they "
             "keep the label (not digits or script)")
    add(data, "--image-size", "--crop-size", dest="image_size", type=int,
        help="train and eval crop at once: the crop (imagenet: 224 by default) or the square (cifar: the data "
             "set's size unless given)")
    add(data, "--train-crop-size", type=int, help="imagenet: RandomResizedCrop's size (torchvision; 224 by default)")
    add(data, "--val-crop-size", type=int, help="imagenet: the eval centre crop (torchvision; 224 by default)")
    add(data, "--val-resize-size", "--eval-resize", dest="eval_resize", type=int,
        help="imagenet eval: the shorter side is resized to this before the centre crop (default 256 for a 224 "
             "crop, as torchvision's V1 weights; 232 for its V2 weights)")
    add(data, "--interpolation", choices=list(INTERPOLATIONS), default="bilinear",
        help="resampling of every resize and geometric augmentation")
    add(data, "--auto-augment", choices=list(POLICIES),
        help="torchvision's policy after crop and flip: ta_wide (TrivialAugmentWide), ra (RandAugment), or "
             "AutoAugment's imagenet/cifar10/svhn (augmix is refused: docs/data.md)")
    add(data, "--ra-magnitude", type=int, default=9, help="RandAugment's magnitude bin (of 31)")
    add(data, "--augmix-severity", type=int, default=3, help="AugMix's severity (1-10)")
    add(data, "--random-erase", type=float, default=0.0,
        help="RandomErasing probability (on the normalised image, after auto-augment)")
    add(data, "--ra-sampler", action="store_true",
        help="torchvision's repeated-augmentation sampler (each image --ra-reps times per epoch, dealt to replicas)")
    add(data, "--ra-reps", type=int, default=3, help="repetitions of each image with --ra-sampler")
    add(data, "-j", "--workers", type=int, default=4, help="input pipeline threads per process")
    add(data, "--cache-dataset", action="store_true",
        help="accepted for torchvision commands: image folders are always prepared once and reused")

    model = p.add_argument_group("model")
    add(model, "--preset", "--model", dest="preset", choices=list(PRESETS), default="resnet34",
        help="model body; a single-head preset gets the data set's classes and channels")
    add(model, "--init-from",
        help="weights to start from: a file (torch .pth/.pt/.safetensors, Flax .safetensors, an orbax checkpoint, a "
             "transformers snapshot) or a hub name (torchvision:resnet50.IMAGENET1K_V2, timm:NAME, hf:REPO); body "
             "loaded, mismatched heads re-initialised")
    add(model, "--weights",
        help="torchvision's published weights, its spelling (ResNet50_Weights.IMAGENET1K_V2, or IMAGENET1K_V2 / "
             "DEFAULT of --model): downloaded into torch's hub cache once; --model follows them when not given; "
             "--test-only scores them with their own eval resize and crop")
    add(model, "--sync-bn", action="store_true",
        help="accepted for torchvision commands: BatchNorm statistics are always over the global batch here")

    recipe = p.add_argument_group("recipe (torchvision's flags; README: Reproduce torchvision's recipes)")
    add(recipe, "--recipe", choices=list(RECIPES),
        help=f"expand a named recipe into its flags (printed; explicit flags override): {recipe_names}. Without "
             f"it, torchvision's train.py defaults, except for the embedded digits ({DIGITS_RECIPE})")
    add(recipe, "--opt", choices=list(OPTIMIZERS), default="sgd",
        help="sgd: momentum SGD (not Nesterov); sgd_nesterov; rmsprop (eps 0.0316, alpha 0.9); adamw")
    add(recipe, "--optimizer", choices=["sgd", "adamw"],
        help="this project's earlier spelling: sgd is --opt sgd_nesterov (Nesterov, as it always was here), "
             "adamw is --opt adamw")
    add(recipe, "--lr", type=float, default=0.1, help="initial learning rate")
    add(recipe, "--momentum", type=float, default=0.9, help="SGD/RMSprop momentum")
    add(recipe, "--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4,
        help="weight decay (SGD/RMSprop: L2 added to the gradient; AdamW: decoupled)")
    add(recipe, "--norm-weight-decay", type=float, help="weight decay of BatchNorm parameters (default: --wd)")
    add(recipe, "--bias-weight-decay", type=float, help="weight decay of biases (default: --wd)")
    add(recipe, "--transformer-embedding-decay", type=float,
        help="accepted for torchvision commands; a ResNet has none of those parameters")
    add(recipe, "--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    add(recipe, "--mixup-alpha", type=float, default=0.0, help="MixUp's Beta(alpha, alpha); 0 off")
    add(recipe, "--cutmix-alpha", type=float, default=0.0, help="CutMix's Beta(alpha, alpha); 0 off")
    add(recipe, "--lr-scheduler", choices=list(SCHEDULERS), default="steplr",
        help="the main schedule, stepped once per epoch")
    add(recipe, "--lr-step-size", type=int, default=30, help="StepLR: epochs between decays")
    add(recipe, "--lr-gamma", type=float, default=0.1, help="StepLR/ExponentialLR factor")
    add(recipe, "--lr-min", type=float, default=0.0, help="CosineAnnealingLR's eta_min")
    add(recipe, "--lr-warmup-epochs", type=int, default=0, help="warmup epochs before the main schedule")
    add(recipe, "--lr-warmup-method", choices=list(WARMUP_METHODS), default="constant",
        help="LinearLR or ConstantLR warmup")
    add(recipe, "--lr-warmup-decay", type=float, default=0.01, help="the warmup's start factor")
    add(recipe, "--warmup-steps", type=int,
        help="this project's earlier schedule: the scheduler steps every optimizer step, with this many steps of "
             "linear warmup from 0.1 x lr, then cosine over the run's steps")
    add(recipe, "--clip-grad-norm", type=float, help="clip the gradients' total norm to this")
    add(recipe, "--model-ema", action="store_true",
        help="keep torchvision's EMA of parameters and buffers; evaluated every epoch, checkpointed, exported")
    add(recipe, "--model-ema-steps", type=int, default=32, help="iterations between EMA updates")
    add(recipe, "--model-ema-decay", type=float, default=0.99998,
        help="EMA decay before torchvision's adjustment for batch, world size, steps and epochs")
    add(recipe, "-b", "--batch-size", type=int, default=32,
        help="images per replica (torchvision: per GPU); the global batch is this x --world-size")
    add(recipe, "--world-size", type=int,
        help="replicas the global batch is made of (torchvision's GPUs; default: every device, all processes): "
             "--world-size 8 reproduces an 8-GPU recipe on fewer devices")
    add(recipe, "--epochs", type=int, default=90, help="training epochs")
    add(recipe, "--steps", type=int, help="stop after this many optimizer steps (the schedule keeps its epochs)")
    add(recipe, "--seed", type=int, default=0, help="initialisation, shuffling and augmentation seed")

    run = p.add_argument_group("run")
    add(run, "--output-dir", "--workdir", dest="workdir", type=Path,
        help="checkpoints, metrics, plots, exports (default runs/DATASET-PRESET-FRAMEWORK)")
    add(run, "--resume", nargs="?", const=True, type=Path,
        help="continue the run: from the output dir's checkpoint (the default when it holds one), or from PATH (a "
             "run directory or its checkpoints, as torchvision's --resume checkpoint.pth)")
    add(run, "--restart", action="store_true",
        help="ignore existing checkpoints and start over (deletes them)")
    add(run, "--test-only", "--eval-only", dest="eval_only", action="store_true",
        help="score weights on the eval split without training: --init-from's, else the output dir's latest "
             "checkpoint (its EMA model with --model-ema); prints top-1/top-5 and writes WORKDIR/eval.json")
    add(run, "--print-freq", "--log-every", dest="log_every", type=int, default=10,
        help="steps between metric logs (host syncs)")
    add(run, "--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    add(run, "--keep", type=int, default=3, help="checkpoints to keep")
    add(run, "--no-progress", action="store_true", help="no progress bar (logs only)")
    add(run, "--preemption-signal", metavar="SIGNAL",
        help="also stop cleanly on this signal (e.g. SIGUSR1 with SLURM's --signal); SIGTERM and SIGINT always do: "
             "the step in flight finishes, a checkpoint is written, exit code 75 (docs/training.md)")
    add(run, "--time-limit", metavar="DURATION",
        help="stop cleanly this long after the start (3600, 90m, 23h30m), a measured margin early; SLURM's job end "
             "time (SLURM_JOB_END_TIME) counts too")
    add(run, "--amp", action="store_true", help="torchvision's CUDA float16 autocast: refused, naming what to use")
    add(run, "--device", help="torchvision's device: cpu or cuda (train.flax: --platform; train.torch: CPU only)")
    add(run, "--start-epoch", type=int, help="torchvision's: refused (a run's position comes from its checkpoint)")
    add(run, "--dist-url", help="torchvision's: env:// is accepted; multi-host runs use --distributed/--coordinator")
    add(run, "--use-deterministic-algorithms", action="store_true",
        help="accepted for torchvision commands: these trainers are deterministic on CPU")
    add(run, "--backend", choices=["pil", "tensor"], default="pil",
        help="torchvision's transform backend: pil (this pipeline's); tensor is refused")
    add(run, "--use-v2", action="store_true",
        help="accepted for torchvision commands: the augmentations reproduce torchvision.transforms.v2")
    if flax:
        add(run, "--compile-cache", type=Path, default=DEFAULT_COMPILE_CACHE,
            help="JAX persistent compilation cache: a restart of the same configuration skips compiling")
        add(run, "--dtype", choices=["float32", "bfloat16"],
            help="compute dtype; params and BN statistics stay float32 (default float32; bfloat16 with --tpu)")
        add(run, "--platform", choices=["cpu", "gpu", "tpu"], help="require this JAX platform")
        add(run, "--tpu", action="store_true", help="require TPU devices (bfloat16 compute unless --dtype)")
        add(run, "--skip-nonfinite", action="store_true",
            help="skip steps whose loss or gradients are NaN/Inf instead of stopping the run")
        dist = p.add_argument_group("multi-host (one process per host; docs/training.md)")
        add(dist, "--distributed", action="store_true",
            help="call jax.distributed.initialize() with what the environment provides (TPU pods, SLURM, ...); "
                 "implied by --coordinator")
        add(dist, "--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
        add(dist, "--num-processes", type=int, help="number of processes (with --coordinator)")
        add(dist, "--process-id", type=int, help="this process's index (with --coordinator)")
    return p


def parse(argv: Sequence[str] | None, prog: str, description: str, flax: bool) -> argparse.Namespace:
    """Parse a trainer's command line: torchvision's defaults, a named recipe's flags (explicit flags win), this
    project's earlier spellings, and torchvision's flags that cannot be honoured refused by name. `args.notes` are
    lines to print at start; `args.explicit` the flags given; `args.recipe_expansion` what the recipe set."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog, description, flax).parse_args(argv)
    explicit = vars(build_parser(prog, description, flax, suppress_defaults=True).parse_args(argv))
    args.explicit = sorted(explicit)
    args.notes = []
    if args.data_path is not None:
        if "dataset" in explicit and args.dataset != "imagefolder":
            raise FlagError(f"--data-path is an ImageFolder tree (torchvision's); it cannot go with --dataset "
                            f"{args.dataset} (use --data-dir for a TFDS directory)")
        args.dataset, args.data_dir = "imagefolder", args.data_path
    recipe = args.recipe or (DIGITS_RECIPE if args.dataset == DEFAULT_DATASET else None)
    args.recipe = recipe
    args.recipe_expansion = {}
    if recipe is not None:
        expansion = vars(build_parser(prog, description, flax, suppress_defaults=True).parse_args(
            list(RECIPES[recipe][1])))
        for dest, value in expansion.items():
            if dest not in explicit:
                setattr(args, dest, value)
                args.recipe_expansion[dest] = value
        overridden = sorted(d for d in expansion if d in explicit and explicit[d] != expansion[d])
        how = "--recipe" if "recipe" in explicit else "the default for the embedded digits"
        args.notes.append(f"recipe {recipe} ({how}): {' '.join(RECIPES[recipe][1])}"
                          + (f"; overridden by explicit flags: {', '.join(overridden)}" if overridden else ""))
    if args.optimizer is not None:
        if "opt" in explicit:
            raise FlagError("--optimizer (this project's earlier spelling) and --opt are the same flag: give one")
        args.opt = "sgd_nesterov" if args.optimizer == "sgd" else "adamw"
        args.notes.append(f"--optimizer {args.optimizer} is --opt {args.opt}")
    refuse_unsupported(args, explicit, flax)
    resolve_weights(args, explicit)
    args.started = time.monotonic()  # --time-limit counts from here
    try:
        args.preemption_signal = (preemption.signal_number(args.preemption_signal)
                                  if args.preemption_signal is not None else None)
        args.time_limit = preemption.parse_duration(args.time_limit) if args.time_limit is not None else None
    except ValueError as e:
        raise FlagError(str(e)) from None
    return args


def resolve_weights(args: argparse.Namespace, explicit: dict) -> None:
    """--weights: torchvision's catalogue entry (the model follows it unless --model is given, which must match);
    with --test-only its eval resize and crop unless given. Sets args.init_from and args.weights_entry."""
    args.weights_entry = None
    if args.weights is None:
        return
    if args.init_from is not None:
        raise FlagError("--weights and --init-from both name the starting weights: give one")
    try:
        entry = get_weights(args.weights, args.preset if "preset" in explicit else None)
    except WeightsError as e:
        raise FlagError(f"--weights: {e}") from None
    args.preset, args.init_from, args.weights_entry = entry.builder, str(entry), entry
    if args.eval_only:  # torchvision: --test-only with --weights evaluates with weights.transforms()
        for dest, value in (("eval_resize", entry.resize_size), ("val_crop_size", entry.crop_size),
                            ("interpolation", entry.interpolation)):
            if dest not in explicit:
                setattr(args, dest, value)
        args.notes.append(f"--weights {entry}: eval resize {args.eval_resize}, crop {args.val_crop_size}, "
                          f"{args.interpolation} (the weights' transforms); published top-1 {entry.acc1}%")


def refuse_unsupported(args: argparse.Namespace, explicit: dict, flax: bool) -> None:
    """torchvision's flags that cannot be honoured stop here, each naming what to use; accepted ones are noted."""
    if args.amp:
        raise FlagError("--amp (torchvision's CUDA float16 autocast with a gradient scaler) is not supported: "
                        + ("use --dtype bfloat16 (bfloat16 compute, float32 parameters, no loss scaling needed)"
                           if flax else "train.torch runs on the CPU; drop --amp (train.flax --dtype bfloat16 is "
                                        "the mixed-precision run)"))
    if args.start_epoch is not None:
        raise FlagError("--start-epoch is not supported: a run continues from its checkpoint's step; use --resume "
                        "(or --restart to start over)")
    if args.backend == "tensor":
        raise FlagError("--backend tensor is not supported: the input pipeline decodes and augments with PIL "
                        "(--backend pil, torchvision's default)")
    if args.dist_url is not None and args.dist_url != "env://":
        raise FlagError(f"--dist-url {args.dist_url} is not supported: start every host with --coordinator "
                        "HOST:PORT --num-processes N --process-id I, or --distributed (SLURM, TPU pods)")
    if args.device is not None:
        device = args.device.split(":")[0]
        if device not in ("cpu", "cuda"):
            raise FlagError(f"--device {args.device}: cpu or cuda" + (" (or --platform tpu / --tpu)" if flax else ""))
        if flax:
            platform = "gpu" if device == "cuda" else "cpu"
            if args.platform not in (None, platform):
                raise FlagError(f"--device {args.device} contradicts --platform {args.platform}")
            args.platform = platform
        elif device == "cuda":
            raise FlagError("--device cuda: train.torch (the reference) runs on the CPU; use train.flax "
                            "--platform gpu on a GPU")
    if args.resume is not None and args.restart:
        raise FlagError("--resume and --restart contradict each other: give one")
    if args.auto_augment == "augmix":
        raise FlagError(AUGMIX_REFUSAL)
    if args.ra_sampler and args.ra_reps < 1:
        raise FlagError(f"--ra-reps must be >= 1 with --ra-sampler, got {args.ra_reps}")
    if args.warmup_steps is not None:
        if "lr_warmup_epochs" in explicit:
            raise FlagError("--warmup-steps (steps, this project's earlier schedule) and --lr-warmup-epochs "
                            "(torchvision's, epochs) cannot go together: give one")
        for dest, value in (("lr_scheduler", "cosineannealinglr"), ("lr_warmup_method", "linear"),
                            ("lr_warmup_decay", 0.1)):
            if dest not in explicit:
                setattr(args, dest, value)
    if not 1 <= args.augmix_severity <= 10:
        raise FlagError(f"--augmix-severity must be in [1, 10], got {args.augmix_severity}")
    if not 0 <= args.ra_magnitude < 31:
        raise FlagError(f"--ra-magnitude must be a bin in [0, 31), got {args.ra_magnitude}")
    if not 0 <= args.random_erase <= 1:
        raise FlagError(f"--random-erase is a probability in [0, 1], got {args.random_erase}")
    for flag in ("workers", "world_size", "train_crop_size", "val_crop_size", "eval_resize", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise FlagError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    crop = args.val_crop_size or args.image_size or 224
    if args.eval_resize is not None and args.eval_resize < crop:
        raise FlagError(f"--val-resize-size {args.eval_resize} cannot give a {crop} px centre crop (--val-crop-size): "
                        "the resized image's shorter side must be at least the crop")
    for flag, dest, text in (("--cache-dataset", "cache_dataset", "image folders are prepared once and reused"),
                             ("--sync-bn", "sync_bn", "BatchNorm statistics are over the global batch anyway"),
                             ("--use-v2", "use_v2", "the augmentations reproduce torchvision.transforms.v2"),
                             ("--use-deterministic-algorithms", "use_deterministic_algorithms",
                              "these trainers are deterministic on CPU"),
                             ("--dist-url", "dist_url", "torchrun's environment is not used; see --distributed"),
                             ("--transformer-embedding-decay", "transformer_embedding_decay",
                              "a ResNet has no class token, position embedding or relative position bias")):
        if dest in explicit:
            args.notes.append(f"{flag}: accepted, nothing to do ({text})")
