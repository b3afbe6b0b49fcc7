"""Crash-safe training checkpoints: write to a temporary folder, then publish it with one atomic rename.

A checkpoint is `checkpoints/step_NNNNNNNN/` holding `trainer.weights.h5` (model weights, BatchNorm
statistics and optimizer state, iteration count included) and `state.json`. Position in the run is the
number of batches trained (`BatchCounter`; not the optimizer's iteration count, which a mixed-precision
loss-scale optimizer does not advance on the steps it skips), from which the epoch and the step within it
follow; the data pipeline is a pure function of that position, so resuming is exact.
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
    REJECTED_DIR,
    checkpoint_dir_name,
    checkpoint_step,
    published_checkpoints,
)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step and the loss term.

    `step`: the 1-based training step whose loss was not finite; `resume_from`: the step of the checkpoint
    a restart resumes from (0: the start); `rejected`: checkpoints moved aside because their weights gave
    that loss."""

    def __init__(self, message: str, step: int, resume_from: int, rejected: list[Path]):
        super().__init__(message)
        self.step = step
        self.resume_from = resume_from
        self.rejected = rejected


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


class BatchCounter(keras.callbacks.Callback):
    """The run's position: batches trained so far, from `start` (the resumed checkpoint's step). Listed
    first among the callbacks, so the others read the position of the batch that just ended."""

    def __init__(self, start: int = 0):
        super().__init__()
        self.position = start

    def on_train_batch_end(self, batch, logs=None):
        self.position += 1


class StopAtStep(keras.callbacks.Callback):
    """Ends training once the run's position reaches `step` (--max_steps); listed right after the
    BatchCounter. Keras then ends the epoch as usual, so its history row and checkpoint are written."""

    def __init__(self, counter: BatchCounter, step: int):
        super().__init__()
        self.counter, self.step = counter, step

    def on_train_batch_end(self, batch, logs=None):
        if self.counter.position >= self.step:
            self.model.stop_training = True


class CheckpointCallback(keras.callbacks.Callback):
    """Saves every `every_steps` batches (0: never mid-epoch) and at the end of every epoch."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        steps_per_epoch: int,
        counter: BatchCounter,
        every_steps: int = 0,
        keep: int = 2,
    ):
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.steps_per_epoch = steps_per_epoch
        self.counter = counter
        self.every_steps = every_steps
        self.keep = keep
        self.last_saved = -1

    def _save(self) -> None:
        step = self.counter.position
        if step == self.last_saved:
            return
        state = {"epoch": step // self.steps_per_epoch, "step_in_epoch": step % self.steps_per_epoch}
        if hasattr(self.model, "sync_moving_statistics"):  # every replica and worker saves the same model
            self.model.sync_moving_statistics()
        save_checkpoint(self.model, self.checkpoint_dir, step, state, self.keep)
        self.last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and self.counter.position % self.every_steps == 0:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._save()


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss term. The loss of step N is computed with the weights
    after step N-1, so a checkpoint of step N-1 holds weights that give a non-finite loss: it is moved to
    `checkpoints/rejected/`, and the newest remaining checkpoint is the one to resume from."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        counter: BatchCounter,
        steps_per_epoch: int,
        terms: tuple[str, ...] = ("loss", "softmax", "triplet"),
    ):
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.counter = counter
        self.steps_per_epoch = steps_per_epoch
        self.terms = terms

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        bad = [t for t in self.terms if t in logs and not math.isfinite(float(logs[t]))]
        if not bad:
            return
        step = self.counter.position  # 1-based number of the step that just ended
        rejected = []
        for folder in published_checkpoints(self.checkpoint_dir):
            if checkpoint_step(folder) >= step - 1:
                target = self.checkpoint_dir / REJECTED_DIR / folder.name
                target.parent.mkdir(exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(folder, target)
                rejected.append(target)
        latest = latest_checkpoint(self.checkpoint_dir)
        resume_from = checkpoint_step(latest) if latest is not None else 0
        values = ", ".join(f"{t}={float(logs[t])}" for t in bad)
        kept = (
            f"checkpoint step {resume_from} is the last whose weights gave finite losses"
            if latest
            else ("no checkpoint gave only finite losses: a restart begins at step 0")
        )
        moved = (
            f"; moved {', '.join(str(r) for r in rejected)} aside (its weights gave this loss)"
            if (rejected)
            else ""
        )
        raise NonFiniteLossError(
            f"non-finite loss at training step {step} (epoch {epoch_of(step, self.steps_per_epoch)}, batch "
            f"{batch + 1}): {values}. The weights of this step were not saved; {kept}{moved}",
            step=step,
            resume_from=resume_from,
            rejected=rejected,
        )


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """The 1-based epoch of the 1-based training `step`."""
    return (step - 1) // steps_per_epoch + 1
