"""Crash-safe training checkpoints: write to a temporary folder, then publish it with one atomic rename.

A checkpoint is `checkpoints/step_NNNNNNNN/` holding `trainer.weights.h5` (model weights, BatchNorm
statistics and optimizer state, iteration count included) and `state.json`. Position in the run is the
optimizer's iteration count, from which the epoch and the step within it follow; the data pipeline and
the learning-rate schedule are pure functions of that position, so resuming is exact.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import keras

from mgn_tf.artifacts import (
    CHECKPOINT_STATE,
    CHECKPOINT_WEIGHTS,
    checkpoint_dir_name,
    checkpoint_step,
    published_checkpoints,
)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step and the loss term."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None. Half-written (temporary) folders are ignored."""
    done = published_checkpoints(checkpoint_dir)
    return done[-1] if done else None


def save_checkpoint(
    model: keras.Model, checkpoint_dir: str | Path, step: int, state: dict, keep: int = 2
) -> Path:
    """Writes model + optimizer state for global `step` atomically and prunes all but the `keep` newest."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / checkpoint_dir_name(step)
    tmp = checkpoint_dir / f".tmp_{final.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_weights(tmp / CHECKPOINT_WEIGHTS)
    (tmp / CHECKPOINT_STATE).write_text(json.dumps({**state, "step": step}, indent=2))
    for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_STATE):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # re-saving the same step (e.g. epoch end after a step checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(checkpoint_dir)
    published = sorted(
        (p for p in checkpoint_dir.iterdir() if checkpoint_step(p) is not None), key=checkpoint_step
    )
    for old in published[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_dir.glob(".tmp_*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def restore_checkpoint(model: keras.Model, path: str | Path) -> dict:
    """Loads a checkpoint folder into `model` (whose optimizer must be built) and returns its state."""
    path = Path(path)
    model.load_weights(path / CHECKPOINT_WEIGHTS)
    return json.loads((path / CHECKPOINT_STATE).read_text())


class CheckpointCallback(keras.callbacks.Callback):
    """Saves every `every_steps` optimizer steps (0: never mid-epoch) and at the end of every epoch."""

    def __init__(self, checkpoint_dir: str | Path, steps_per_epoch: int, every_steps: int = 0, keep: int = 2):
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.keep = keep
        self.last_saved = -1

    def _save(self) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if step == self.last_saved:
            return
        state = {"epoch": step // self.steps_per_epoch, "step_in_epoch": step % self.steps_per_epoch}
        if hasattr(self.model, "sync_moving_statistics"):  # every replica and worker saves the same model
            self.model.sync_moving_statistics()
        save_checkpoint(self.model, self.checkpoint_dir, step, state, self.keep)
        self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.every_steps and step % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss term, before any checkpoint of the bad weights."""

    def __init__(self, terms: tuple[str, ...] = ("loss", "softmax", "triplet")):
        super().__init__()
        self.terms = terms

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        bad = [t for t in self.terms if t in logs and not math.isfinite(float(logs[t]))]
        if bad:
            step = int(self.model.optimizer.iterations.numpy())
            values = ", ".join(f"{t}={float(logs[t])}" for t in bad)
            raise NonFiniteLossError(
                f"non-finite loss at training step {step} (epoch {epoch_of(step, self.params)}, batch "
                f"{batch + 1}): {values}. The weights of this step were not saved; the last good "
                "checkpoint is kept. Lower --lr or check the data."
            )


def epoch_of(step: int, params: dict | None) -> str:
    steps = (params or {}).get("steps")
    return str(step // steps + 1) if steps else "?"
