"""MGN's losses (paper §3.2): softmax cross-entropy on every identity head and batch-hard triplet.

tensorflow-addons is end-of-life and does not import under Keras 3, so the batch-hard triplet loss of
Hermans et al. (2017) is written here: for every anchor, the farthest positive and the closest negative
within the batch, hinge with `margin` on Euclidean distances.

All functions return per-example losses (shape [B]) or their mean over the local batch; the trainer
scales per-example losses by the global batch size under a tf.distribute strategy.
"""

from __future__ import annotations

import tensorflow as tf


def _loss_dtype(x: tf.Tensor) -> tf.Tensor:
    """Half-precision inputs (mixed precision) are computed in float32; float32/64 stay as they are."""
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def pairwise_euclidean(embeddings: tf.Tensor) -> tf.Tensor:
    """[B, D] -> [B, B] Euclidean distances, with a finite gradient at zero distance."""
    embeddings = _loss_dtype(embeddings)
    # Explicit differences (B x B x D is small for re-ID batches) are exact where the
    # |a|^2 - 2ab + |b|^2 expansion cancels catastrophically for near-duplicate features.
    squared = tf.reduce_sum(tf.square(embeddings[:, None, :] - embeddings[None, :, :]), axis=2)
    # sqrt'(0) is infinite: take the root of exact zeros (self-pairs, duplicates) at a tiny epsilon and
    # zero them afterwards, so neither the value nor the gradient is NaN.
    zero = tf.cast(squared <= 1e-16, squared.dtype)
    distances = tf.sqrt(squared + zero * 1e-16) * (1.0 - zero)
    return distances


def batch_hard_triplet_per_anchor(labels: tf.Tensor, embeddings: tf.Tensor, margin: float = 1.2) -> tf.Tensor:
    """Batch-hard triplet loss of each anchor: [B] = max(0, margin + d(a, hardest p) - d(a, hardest n)).

    Anchors without a positive (other than themselves) or without a negative in the batch get 0.
    """
    labels = tf.reshape(labels, [-1])
    distances = pairwise_euclidean(embeddings)
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    positive = tf.logical_and(same, not_self)
    negative = tf.logical_not(same)
    # Distances are >= 0, so masked entries at 0 never win the max; masked negatives get +max so they
    # never win the min.
    hardest_positive = tf.reduce_max(tf.where(positive, distances, tf.zeros_like(distances)), axis=1)
    far = tf.reduce_max(distances) + 1.0
    hardest_negative = tf.reduce_min(tf.where(negative, distances, tf.fill(tf.shape(distances), far)), axis=1)
    valid = tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1))
    loss = tf.nn.relu(tf.cast(margin, distances.dtype) + hardest_positive - hardest_negative)
    return tf.where(valid, loss, tf.zeros_like(loss))


def batch_hard_triplet_loss(labels: tf.Tensor, embeddings: tf.Tensor, margin: float = 1.2) -> tf.Tensor:
    """Mean over anchors of the batch-hard triplet loss (Hermans et al. 2017) with Euclidean distances."""
    return tf.reduce_mean(batch_hard_triplet_per_anchor(labels, embeddings, margin))


def softmax_per_example(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Cross-entropy of every head, averaged over heads: labels [B], logits [B, heads, C] -> [B].

    `label_smoothing` e (Szegedy et al. 2016): the target is (1 - e) on the label plus e / C on every
    class, i.e. (1 - e) * cross-entropy + e * mean over classes of -log p.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1, 1])
    labels = tf.broadcast_to(labels, tf.shape(logits)[:2])
    logits = _loss_dtype(logits)
    per_head = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if label_smoothing:
        uniform = -tf.reduce_mean(tf.nn.log_softmax(logits, axis=-1), axis=-1)
        per_head = (1.0 - label_smoothing) * per_head + label_smoothing * uniform
    return tf.reduce_mean(per_head, axis=1)


def triplet_per_example(labels: tf.Tensor, features: tf.Tensor, margin: float = 1.2) -> tf.Tensor:
    """Batch-hard triplet of every feature set, averaged over sets: features [B, sets, D] -> [B]."""
    per_set = [
        batch_hard_triplet_per_anchor(labels, features[:, i], margin) for i in range(features.shape[1])
    ]
    return tf.add_n(per_set) / tf.cast(len(per_set), per_set[0].dtype)
