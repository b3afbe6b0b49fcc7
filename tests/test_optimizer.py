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


@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_warmup_schedule_matches_the_formulas_written_out(kind):
    from mgn_tf.optimizer import learning_rate_schedule

    base, spe, epochs, warm, factor = 0.02, 5, 12, 2, 0.1
    schedule = learning_rate_schedule(base, spe, epochs, kind, (6, 9), 0.1, warm, factor)
    for s in range(epochs * spe + 3):
        if s < warm * spe:  # linear from base x factor towards base
            want = base * (factor + (1 - factor) * s / (warm * spe))
        elif kind == "step":
            want = base * 0.1 ** ((s >= 6 * spe) + (s >= 9 * spe))
        else:
            t = min(1.0, (s - warm * spe) / (epochs * spe - warm * spe))
            want = base * (1 + np.cos(np.pi * t)) / 2
        assert float(schedule(s)) == pytest.approx(want, rel=1e-5, abs=1e-9), s
    assert float(schedule(warm * spe)) == pytest.approx(base)  # warm-up ends exactly at the base rate


def test_without_warm_up_the_step_schedule_is_the_papers():
    from mgn_tf.optimizer import learning_rate_schedule

    schedule = learning_rate_schedule(0.01, 10, 80, "step", (40, 60), 0.1, 0, 0.1)
    assert isinstance(schedule, keras.optimizers.schedules.PiecewiseConstantDecay)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_lr_factors_scale_the_update_of_the_named_variables_only(name):
    """A variable with factor 10 moves as it would under a tenfold learning rate; the other is unchanged."""
    g = [np.array([0.3, -0.2], np.float32), np.array([0.1, 0.4], np.float32)]

    def run(lr, factor):
        a, b = (
            keras.Variable(np.ones(2, np.float32), name="a"),
            keras.Variable(np.ones(2, np.float32), name="b"),
        )
        optimizer = make_optimizer(name, lr, 0.9, 0.01, lr_factors={b.path: factor} if factor else None)
        for grad in g:
            optimizer.apply([tf.constant(grad), tf.constant(grad)], [a, b])
        return a.numpy(), b.numpy()

    a, b = run(0.01, 10.0)
    plain_a, _ = run(0.01, None)
    _, tenfold_b = run(0.1, None)
    np.testing.assert_allclose(a, plain_a, rtol=1e-6)
    np.testing.assert_allclose(b, tenfold_b, rtol=1e-6)
