"""Evaluation metrics and metric sinks (JSONL, TensorBoard, a PNG of the curves), shared by both trainers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from r34_flax.weights_io import atomic_write

# Bengali.AI's metric: macro-averaged recall per head, weighted 2:1:1 (root counts double).
GRAPHEME_WEIGHTS = {"grapheme_root": 2.0, "vowel_diacritic": 1.0, "consonant_diacritic": 1.0}


def summarise(preds: Mapping[str, np.ndarray], top5: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
              classes: Mapping[str, int]) -> dict[str, float]:
    """Top-1 per head, top-5 where a head has >= 5 classes, and the grapheme metric when its heads are there."""
    out: dict[str, float] = {}
    for head, y in labels.items():
        out[f"top1/{head}"] = float(np.mean(preds[head] == y))
        if classes[head] >= 5:
            out[f"top5/{head}"] = float(np.mean(top5[head]))
    if set(GRAPHEME_WEIGHTS) <= set(labels):
        from sklearn.metrics import recall_score  # here: importing sklearn took 1.6 s of every trainer's start

        recalls = {h: recall_score(labels[h], preds[h], average="macro", zero_division=0) for h in GRAPHEME_WEIGHTS}
        for head, r in recalls.items():
            out[f"macro_recall/{head}"] = float(r)
        out["grapheme_score"] = float(sum(GRAPHEME_WEIGHTS[h] * recalls[h] for h in recalls)
                                      / sum(GRAPHEME_WEIGHTS.values()))
    return out


class EvalAccumulator:
    """Collects per-head predictions over an eval set (padding rows dropped by `mask`), then `summarise`s them."""

    def __init__(self) -> None:
        self.preds: dict[str, list[np.ndarray]] = {}
        self.top5: dict[str, list[np.ndarray]] = {}
        self.labels: dict[str, list[np.ndarray]] = {}

    def add(self, head: str, preds: np.ndarray, top5: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> None:
        self.preds.setdefault(head, []).append(np.asarray(preds)[mask])
        self.top5.setdefault(head, []).append(np.asarray(top5)[mask])
        self.labels.setdefault(head, []).append(np.asarray(labels)[mask])

    def summarise(self, classes: Mapping[str, int]) -> dict[str, float]:
        cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}  # noqa: E731
        return summarise(cat(self.preds), cat(self.top5), cat(self.labels), classes)


class Logger:
    """Appends metric records to workdir/metrics.jsonl and TensorBoard event files (process 0 only)."""

    def __init__(self, workdir: Path, enabled: bool = True) -> None:
        self.path = Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def log(self, step: int, kind: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            self._tb.add_scalar(f"{kind}/{key}", float(value), int(step))
        self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint a resumed run starts from)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        if lines and not _parses(lines[-1]):  # a line cut short by a kill or a power loss: the run writes it again
            lines.pop()
        kept = [line for line in lines if line and json.loads(line)["step"] <= step]
        atomic_write(self.path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)), force=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, png: Path, title: str) -> None:
    """Loss, accuracy (train, eval, and the EMA model's eval) and learning-rate curves from metrics.jsonl to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r["kind"] == "train"]
    evals = {kind: [r for r in records if r["kind"] == kind] for kind in ("eval", "eval_ema")}
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend()
    for key in sorted({k for r in train for k in r if k.startswith("accuracy/")}):
        middle.plot([r["step"] for r in train], [r[key] for r in train], label=f"train {key}", alpha=0.6)
    for kind, rows in evals.items():
        for key in sorted({k for r in rows for k in r if k.startswith(("top1/", "grapheme_score"))}):
            middle.plot([r["step"] for r in rows], [r[key] for r in rows], "o-" if kind == "eval" else "s--",
                        label=f"{kind.replace('_', ' ')} {key}")
    middle.set_xlabel("step")
    middle.set_ylabel("accuracy")
    middle.set_ylim(0, 1)
    middle.legend(fontsize=7)
    right.plot([r["step"] for r in train if "lr" in r], [r["lr"] for r in train if "lr" in r], label="learning rate")
    right.set_xlabel("step")
    right.set_ylabel("learning rate")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110), force=True)
    plt.close(fig)


class InputClock:
    """One log interval of a training loop: the batches it took, their rate, and how much of its wall time went to
    waiting for the next batch (near 1: the run is input-bound, the devices idle while images are decoded; near 0:
    the input pipeline keeps up). Both figures cover the same interval, from the last `restart`."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Start a new interval now. The loops restart it after a log line's work, which is neither input nor steps
        (the first one evaluates the lr schedule: a compile)."""
        self.waited = 0.0
        self.taken = 0
        self.since = time.perf_counter()

    def batches(self, batches: Iterable[Any]) -> Iterator[Any]:
        """`batches`, timing each wait for one and counting them."""
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - start
            self.taken += 1
            yield batch

    def batches_per_s(self) -> float:
        """Batches taken per second of wall time since the last `restart`."""
        return self.taken / self._elapsed()

    def fraction(self) -> float:
        """The waiting share of the wall time since the last `restart`."""
        return self.waited / self._elapsed()

    def _elapsed(self) -> float:
        return max(time.perf_counter() - self.since, 1e-9)
