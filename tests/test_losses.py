"""Losses against brute-force numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mgn_tf.losses import (
    batch_hard_triplet_loss,
    pairwise_euclidean,
    softmax_per_example,
    triplet_per_example,
)


def brute_force_batch_hard(labels: np.ndarray, x: np.ndarray, margin: float) -> float:
    """Hermans et al. 2017 batch-hard triplet, one anchor at a time, in float64."""
    x = x.astype(np.float64)
    losses = []
    for a in range(len(x)):
        positives = [np.linalg.norm(x[a] - x[p]) for p in range(len(x)) if p != a and labels[p] == labels[a]]
        negatives = [np.linalg.norm(x[a] - x[n]) for n in range(len(x)) if labels[n] != labels[a]]
        if not positives or not negatives:
            losses.append(0.0)
            continue
        losses.append(max(0.0, margin + max(positives) - min(negatives)))
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", range(6))
def test_batch_hard_triplet_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    p, k, dim = rng.integers(2, 7), rng.integers(2, 5), rng.choice([3, 16, 256])
    labels = np.repeat(rng.permutation(100)[:p], k)
    x = rng.normal(size=(p * k, dim)).astype(np.float32) * rng.uniform(0.1, 3)
    margin = float(rng.choice([0.3, 1.2, 5.0]))
    got = batch_hard_triplet_loss(tf.constant(labels), tf.constant(x), margin).numpy()
    assert got == pytest.approx(brute_force_batch_hard(labels, x, margin), rel=1e-5, abs=1e-6)


def test_triplet_handles_anchors_without_positive_or_negative():
    labels = np.array([0, 0, 1, 2])  # anchors 2 and 3 have no positive
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    got = batch_hard_triplet_loss(tf.constant(labels), tf.constant(x), 1.2).numpy()
    assert got == pytest.approx(brute_force_batch_hard(labels, x, 1.2), rel=1e-5)
    single = batch_hard_triplet_loss(tf.constant([3, 3]), tf.constant(x[:2]), 1.2).numpy()
    assert single == 0.0  # no negative at all


def test_zero_distances_have_finite_gradients():
    x = tf.Variable(np.ones((4, 5), np.float32))  # every pair at distance 0
    labels = tf.constant([0, 0, 1, 1])
    with tf.GradientTape() as tape:
        loss = batch_hard_triplet_loss(labels, x, 1.2)
    grad = tape.gradient(loss, x).numpy()
    assert loss.numpy() == pytest.approx(1.2)
    assert np.isfinite(grad).all()
    d = pairwise_euclidean(tf.constant([[0.0, 0.0], [3.0, 4.0]])).numpy()
    np.testing.assert_allclose(d, [[0, 5], [5, 0]], atol=1e-6)


def test_softmax_per_example_is_mean_cross_entropy_over_heads():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 8, 11)).astype(np.float32)
    labels = rng.integers(0, 11, 6)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, labels[:, None, None].repeat(8, 1), -1)[..., 0].mean(1)
    got = softmax_per_example(tf.constant(labels), tf.constant(logits)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_triplet_per_example_averages_feature_sets():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(4), 3)
    feats = rng.normal(size=(12, 3, 16)).astype(np.float32)
    got = triplet_per_example(tf.constant(labels), tf.constant(feats), 1.2).numpy().mean()
    expected = np.mean([brute_force_batch_hard(labels, feats[:, i], 1.2) for i in range(3)])
    assert got == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_equals_the_smoothed_target_cross_entropy_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 5)).astype(np.float32)
    labels = np.array([4, 0, 2])
    eps = 0.1
    got = softmax_per_example(tf.constant(labels), tf.constant(logits), label_smoothing=eps).numpy()
    want = np.zeros(3)
    for b in range(3):
        for h in range(8):
            z = logits[b, h].astype(np.float64)
            log_p = z - np.log(np.exp(z).sum())
            target = np.full(5, eps / 5)
            target[labels[b]] += 1 - eps
            want[b] += -(target * log_p).sum() / 8
    np.testing.assert_allclose(got, want, rtol=1e-5)
    plain = softmax_per_example(tf.constant(labels), tf.constant(logits)).numpy()
    assert not np.allclose(got, plain)
