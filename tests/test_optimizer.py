"""The paper's SGD + L2 update (PyTorch semantics) against a hand computation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mgn_tf.optimizer import SGDL2, AdamL2, make_optimizer, step_decay_schedule


def test_update_matches_hand_computation_across_a_learning_rate_step():
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    grads = [
        np.array([0.1, 0.2, -0.3], np.float32),
        np.array([-0.4, 0.0, 0.2], np.float32),
        np.array([0.3, -0.1, 0.1], np.float32),
    ]
    lrs = keras.optimizers.schedules.PiecewiseConstantDecay(
        [1], [0.1, 0.01]
    )  # steps 0, 1 at 0.1; step 2 at 0.01
    variable = keras.Variable(w0)
    optimizer = SGDL2(lrs, momentum=0.9, l2=0.05)
    for g in grads:
        optimizer.apply([tf.constant(g)], [variable])
    # PyTorch SGD(momentum=0.9, weight_decay=0.05), written out:
    w, v = w0.astype(np.float64), np.zeros(3)
    for step, g in enumerate(grads):
        lr = 0.1 if step < 2 else 0.01
        d = g + 0.05 * w  # L2 gradient added before momentum
        v = 0.9 * v + d
        w = w - lr * v
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-6)
    assert int(optimizer.iterations.numpy()) == 3


def test_differs_from_keras_decoupled_weight_decay():
    """Keras 3's SGD(weight_decay=...) is decoupled: it is not the paper's L2 with momentum."""
    grads = [np.array([0.5, -0.5], np.float32)] * 3
    ours, theirs = keras.Variable(np.ones(2, np.float32)), keras.Variable(np.ones(2, np.float32))
    a, b = SGDL2(0.1, momentum=0.9, l2=0.1), keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.1)
    for g in grads:
        a.apply([tf.constant(g)], [ours])
        b.apply([tf.constant(g)], [theirs])
    assert np.abs(ours.numpy() - theirs.numpy()).max() > 1e-3


def test_step_decay_schedule_positions():
    schedule = step_decay_schedule(0.01, steps_per_epoch=10, decay_epochs=(40, 60), factor=0.1)
    lr = {step: float(schedule(step)) for step in (0, 399, 400, 599, 600, 799)}
    assert lr == pytest.approx({0: 0.01, 399: 0.01, 400: 1e-3, 599: 1e-3, 600: 1e-4, 799: 1e-4})


def test_invalid_arguments():
    with pytest.raises(ValueError, match="momentum"):
        SGDL2(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="l2"):
        SGDL2(0.1, l2=-1)


def test_adam_l2_adds_l2_to_the_gradient_before_adam():
    grads = [np.array([0.1, -0.3], np.float32), np.array([0.2, 0.05], np.float32)]
    ours, reference = (
        keras.Variable(np.array([1.0, -2.0], np.float32)),
        keras.Variable(np.array([1.0, -2.0], np.float32)),
    )
    a, b = AdamL2(0.01, l2=0.1), keras.optimizers.Adam(0.01)
    for g in grads:
        b.apply([tf.constant(g) + 0.1 * reference.value], [reference])  # the L2 gradient, written out
        a.apply([tf.constant(g)], [ours])
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6)


def test_make_optimizer_names():
    assert isinstance(make_optimizer("sgd", 0.01, 0.9, 5e-4), SGDL2)
    assert isinstance(make_optimizer("adam", 3.5e-4, 0.9, 5e-4), AdamL2)
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer("rmsprop", 0.01, 0.9, 5e-4)
