"""Checkpoints: atomic publish, the newest complete one found, optimizer state restored, old ones pruned."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.training import make_trainer

from mgn_tf.checkpoint import (
    BatchCounter,
    NonFiniteGuard,
    NonFiniteLossError,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)


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


def test_non_finite_loss_sets_aside_the_checkpoint_whose_weights_gave_it(tmp_path):
    """The loss of step 5 is computed with the weights after step 4: checkpoint 4 is moved to
    checkpoints/rejected/, checkpoint 3 (whose weights gave the finite loss of step 4) is the one kept."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for step in (3, 4):
        save_checkpoint(model, tmp_path, step=step, state={})
    counter = BatchCounter(start=4)
    guard = NonFiniteGuard(tmp_path, counter, steps_per_epoch=3)
    counter.on_train_batch_end(1)  # step 5 has ended
    guard.on_train_batch_end(1, {"loss": 2.0, "softmax": 1.5})
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000004"  # finite: nothing moves
    with pytest.raises(NonFiniteLossError) as raised:
        guard.on_train_batch_end(1, {"loss": float("nan"), "softmax": float("inf"), "triplet": 0.5})
    error = raised.value
    assert (error.step, error.resume_from) == (5, 3)
    assert error.rejected == [tmp_path / "rejected" / "step_00000004"]
    assert (tmp_path / "rejected" / "step_00000004" / "trainer.weights.h5").is_file()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000003"
    message = str(error)
    assert "training step 5 (epoch 2, batch 2)" in message  # steps 4-6 are epoch 2 of 3-step epochs
    assert "loss=nan" in message and "softmax=inf" in message and "triplet" not in message


def test_non_finite_loss_at_the_first_step_keeps_nothing_to_resume(tmp_path):
    counter = BatchCounter(start=0)
    guard = NonFiniteGuard(tmp_path / "checkpoints", counter, steps_per_epoch=4)
    counter.on_train_batch_end(0)
    with pytest.raises(NonFiniteLossError) as raised:
        guard.on_train_batch_end(0, {"loss": float("inf")})
    assert (raised.value.step, raised.value.resume_from, raised.value.rejected) == (1, 0, [])
    assert "begins at step 0" in str(raised.value)
