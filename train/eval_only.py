"""`--eval-only` (both trainers): score weights on the eval split without training, report top-1/top-5."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r34_flax.weights_io import atomic_write
from train.plan import Plan

RESULT_FILE = "eval.json"


def report(plan: Plan, metrics: dict[str, float], weights: Path, framework: str, compute: str) -> dict[str, Any]:
    """Print the scores and write them, with what produced them, to WORKDIR/eval.json (atomically)."""
    spec = plan.spec
    result = {"framework": framework, "weights": str(weights), "preset": plan.args.preset, "dataset": spec.name,
              "split": spec.eval_split, "images": spec.num_eval, "compute": compute, "augment": spec.augment,
              "image_size": spec.image_size, "eval_resize": spec.eval_resize, "eval_crop": spec.eval_size,
              "metrics": metrics}
    entry = getattr(plan.args, "weights_entry", None)
    if entry is not None:  # torchvision's published figures beside the measured ones
        result["published"] = {"acc@1": entry.acc1, "acc@5": entry.acc5, "on": "ImageNet-1K val (torchvision)"}
    plan.workdir.mkdir(parents=True, exist_ok=True)
    path = plan.workdir / RESULT_FILE
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"), force=True)
    print(f"scored {weights} ({framework}, {compute}) on {spec.name} {spec.eval_split}: {spec.num_eval} images")
    for key, value in metrics.items():
        print(f"  {key}: {value:.4f}")
    if entry is not None and "top1/fc" in metrics:
        print(f"  top-1 {100 * metrics['top1/fc']:.3f}% measured here; {entry.acc1}% published for {entry} "
              f"(ImageNet-1K val, resize {entry.resize_size}, crop {entry.crop_size})")
    print(f"written to {path}")
    return result
