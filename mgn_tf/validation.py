"""What a run records at the end of each epoch, written so that a killed and resumed run ends with the
same files as an uninterrupted one: the per-epoch history (history.csv) and the evaluation during
training (validation.json, best.weights.h5 / best.json).

Both callbacks run before the epoch's checkpoint is written, so a checkpoint of epoch e implies that
its history row and evaluation are on disk; a run killed between the two retrains that epoch from the
previous checkpoint and rewrites its entries (each is keyed by epoch, never appended twice).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import keras

from mgn_tf import artifacts
from mgn_tf.data.datasets import Split
from mgn_tf.evaluation.settings import EvalSettings
from mgn_tf.files import atomic_path, atomic_write_json, atomic_write_text

METRICS = ("rank1", "mAP", "mINP")


class EpochHistory(keras.callbacks.Callback):
    """history.csv: one row per epoch (0-based "epoch" first, then the logs in name order, an empty cell
    where an epoch has no such value). Rows of epochs a resumed run trains again are replaced."""

    def __init__(self, path: str | Path, completed_epochs: int):
        super().__init__()
        self.path = Path(path)
        self.rows: dict[int, dict] = {}
        if self.path.is_file():
            for row in csv.DictReader(io.StringIO(self.path.read_text())):
                if row.get("epoch", "").isdigit() and int(row["epoch"]) < completed_epochs:
                    self.rows[int(row["epoch"])] = {k: v for k, v in row.items() if k != "epoch" and v != ""}

    def on_epoch_end(self, epoch, logs=None):
        self.rows[epoch] = {k: float(v) for k, v in (logs or {}).items()}
        names = sorted({k for row in self.rows.values() for k in row})
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["epoch", *names])
        for e in sorted(self.rows):
            writer.writerow([e, *(self.rows[e].get(k, "") for k in names)])
        atomic_write_text(self.path, out.getvalue())


def validation_settings(settings: EvalSettings) -> EvalSettings:
    """The evaluation flags as they apply during training: no re-ranking (it costs more than the
    ranking itself; the evaluation after training has it), no ranked-list figures, no multi-query."""
    return dataclasses.replace(
        settings, rerank=None, num_ranked_queries=0, ranked_response_maps=False, multi_query="none"
    )


class PeriodicEvaluation(keras.callbacks.Callback):
    """Every `every` epochs (and after the last), runs the evaluation pipeline of `python -m
    mgn_tf.evaluate` on `split` with the model as it is, adds `<prefix>_rank1 / _mAP / _mINP` to the
    epoch's logs (history.csv, TensorBoard, the progress line, user callbacks), lists every evaluation in
    validation.json and keeps the weights of the best mAP in best.weights.h5 (the earliest epoch on
    ties; best.json says which).

    `prefix` is "val" for identities held out of training and "test" for the dataset's test split.
    """

    def __init__(
        self, mgn: keras.Model, split: Split, settings: EvalSettings, every: int, epochs: int,
        run_dir: str | Path, prefix: str, steps_per_epoch: int, completed_epochs: int,
    ):  # fmt: skip
        super().__init__()
        self.mgn, self.split, self.settings = mgn, split, validation_settings(settings)
        self.every, self.epochs, self.prefix = every, epochs, prefix
        self.run_dir, self.steps_per_epoch = Path(run_dir), steps_per_epoch
        self.record_path = self.run_dir / artifacts.VALIDATION_JSON
        entries = []
        if self.record_path.is_file():
            entries = json.loads(self.record_path.read_text())["evaluations"]
        self.entries = [e for e in entries if e["epoch"] <= completed_epochs]
        self.best = max(self.entries, key=lambda e: (e["mAP"], -e["epoch"]), default=None)

    def due(self, epoch: int) -> bool:
        """Whether the 0-based `epoch` is evaluated."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs

    def on_epoch_end(self, epoch, logs=None):
        if not self.due(epoch):
            return
        from mgn_tf.evaluation.pipeline import evaluate
        from mgn_tf.inference import KerasEmbedder

        if hasattr(self.model, "sync_moving_statistics"):  # the model every replica would save
            self.model.sync_moving_statistics()
        out_dir = self.run_dir / artifacts.VALIDATION_DIR / f"epoch_{epoch + 1:03d}"
        results = evaluate(KerasEmbedder(self.mgn, self.run_dir), self.split, self.settings, out_dir)
        metrics = results["results"]["without_rerank"]
        values = {k: metrics[k] for k in METRICS if k in metrics}
        entry = {
            "epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch, "split": self.split.name,
            **values, "results": str(out_dir / artifacts.RESULTS_JSON),
        }  # fmt: skip
        if logs is not None:
            logs.update({f"{self.prefix}_{k}": v for k, v in values.items()})
        self.entries = [e for e in self.entries if e["epoch"] < entry["epoch"]] + [entry]
        improved = self.best is None or entry["mAP"] > self.best["mAP"] or not math.isfinite(self.best["mAP"])
        if improved:
            with atomic_path(self.run_dir / artifacts.BEST_WEIGHTS) as tmp:
                self.mgn.save_weights(tmp)
            self.best = entry
            atomic_write_json(
                self.run_dir / artifacts.BEST_JSON, {**entry, "weights": artifacts.BEST_WEIGHTS}
            )
        atomic_write_json(
            self.record_path, {"split": self.split.name, "prefix": self.prefix, "evaluations": self.entries}
        )
        best = self.best
        print(
            f"\nepoch {epoch + 1} {self.prefix} ({self.split.name}): rank-1 {metrics['rank1']:.2%}, mAP "
            f"{metrics['mAP']:.2%}, mINP {metrics.get('mINP', float('nan')):.2%}; best mAP {best['mAP']:.2%} "
            f"at epoch {best['epoch']}" + (" (saved best.weights.h5)" if improved else ""),
            flush=True,
        )
