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
              "image_size": spec.image_size, "eval_resize": spec.eval_resize, "metrics": metrics}
    plan.workdir.mkdir(parents=True, exist_ok=True)
    path = plan.workdir / RESULT_FILE
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"), force=True)
    print(f"scored {weights} ({framework}, {compute}) on {spec.name} {spec.eval_split}: {spec.num_eval} images")
    for key, value in metrics.items():
        print(f"  {key}: {value:.4f}")
    print(f"written to {path}")
    return result
