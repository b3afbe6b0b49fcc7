"""Checkpoints: atomic publish, the newest complete one found, optimizer state restored, old ones pruned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers.training import make_trainer, tiny_batch

from mgn_tf.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def batch():
    return tiny_batch()


def test_latest_checkpoint_ignores_unfinished_and_foreign_folders(tmp_path):
    """Only `step_N` folders whose state.json exists (written last, then published by a rename) count."""
    assert latest_checkpoint(tmp_path / "missing") is None
    for name, complete in (("step_00000003", True), ("step_00000012", False), ("step_x", True),
                           (".tmp_step_00000020_99", True), ("step_00000011", True)):  # fmt: skip
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "state.json").write_text(json.dumps({"step": 0}))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000011"


@pytest.mark.own_worker_unit(minutes=2)
def test_checkpoint_round_trip_restores_weights_and_optimizer_state(batch, tmp_path):
    images, labels = batch
    data = tf.data.Dataset.from_tensors((images, labels)).repeat(2)
    trainer = make_trainer()
    trainer.fit(data, epochs=1, verbose=0)
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
    for step in (3, 4, 5):
        save_checkpoint(trainer, tmp_path, step=step, state={})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000004", "step_00000005"]
