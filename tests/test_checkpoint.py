"""Checkpoints: atomic publish, the newest complete one found, optimizer state restored, old ones pruned."""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf
from helpers.training import make_trainer

from mgn_tf.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint


def test_latest_checkpoint_ignores_unfinished_and_foreign_folders(tmp_path):
    """Only `step_N` folders whose state.json exists (written last, then published by a rename) count."""
    assert latest_checkpoint(tmp_path / "missing") is None
    for name, complete in (("step_00000003", True), ("step_00000012", False), ("step_x", True),
                           (".tmp_step_00000020_99", True), ("step_00000011", True)):  # fmt: skip
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "state.json").write_text(json.dumps({"step": 0}))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000011"


def test_checkpoint_round_trip_restores_weights_and_optimizer_state(tmp_path):
    """Every weight (BatchNorm statistics included), every optimizer slot and the iteration count come
    back in a model of other weights. The state is made non-trivial directly, without training: two
    optimizer steps on random gradients and random BatchNorm statistics."""
    trainer = make_trainer()
    trainer.optimizer.build(trainer.trainable_variables)
    rng = np.random.default_rng(0)
    trainer.set_weights(  # abs: every BatchNorm moving variance stays positive
        [np.abs(w + rng.normal(0, 0.1, w.shape)).astype(w.dtype) for w in trainer.get_weights()]
    )
    for _ in range(2):
        gradients = [tf.constant(rng.normal(0, 1, v.shape), v.dtype) for v in trainer.trainable_variables]
        trainer.optimizer.apply_gradients(zip(gradients, trainer.trainable_variables, strict=True))
    path = save_checkpoint(trainer, tmp_path, step=2, state={"epoch": 1, "step_in_epoch": 0})
    assert latest_checkpoint(tmp_path) == path
    (tmp_path / ".tmp_step_00000009_1").mkdir()  # a half-written checkpoint is never picked
    assert latest_checkpoint(tmp_path) == path
    other = make_trainer(seed=1)
    other.optimizer.build(other.trainable_variables)
    state = restore_checkpoint(other, path)
    assert state == {"epoch": 1, "step_in_epoch": 0, "step": 2}
    assert int(other.optimizer.iterations.numpy()) == 2
    for a, b in zip(trainer.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(trainer.optimizer.variables, other.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])  # pruning needs no MGN
    for step in (2, 3, 4, 5):
        save_checkpoint(model, tmp_path, step=step, state={}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000004", "step_00000005"]
    assert json.loads((tmp_path / "step_00000005" / "state.json").read_text()) == {"step": 5}
