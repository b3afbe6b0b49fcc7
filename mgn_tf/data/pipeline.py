"""The PK training pipeline: P identities × K images per batch, decoded, resized and flipped by tf.data.

The batch order of every epoch is a pure function of (seed, epoch), and the random flip of every sample a
pure function of (seed, its position in the run), so a run resumed at any step sees exactly the data an
uninterrupted run would. This module knows nothing about datasets: it takes paths and training labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mgn_tf.images import decode_and_resize


def _pid_chunks(pids: np.ndarray, k: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Per identity, its images shuffled and cut into groups of K (the last padded from the same identity)."""
    chunks = []
    for pid in np.unique(pids):
        members = np.flatnonzero(pids == pid)
        if len(members) < k:  # all of them, topped up by sampling with replacement
            chunks.append([np.concatenate([rng.permutation(members), rng.choice(members, k - len(members))])])
            continue
        members = rng.permutation(members)
        groups = [members[i : i + k] for i in range(0, len(members), k)]
        if len(groups[-1]) < k:
            others = np.setdiff1d(members, groups[-1])
            groups[-1] = np.concatenate([groups[-1], rng.choice(others, k - len(groups[-1]), replace=False)])
        chunks.append(groups)
    return chunks


def batches_per_epoch(pids: Sequence[int] | np.ndarray, p: int, k: int) -> int:
    """Batches that cover every training image once: ceil(#K-groups / P), at least max groups of one pid."""
    _, counts = np.unique(np.asarray(pids), return_counts=True)
    if len(counts) < p:
        raise ValueError(
            f"P={p} identities per batch, but the training set has only {len(counts)} identities"
        )
    groups = np.maximum(1, -(-counts // k))
    return int(max(-(-groups.sum() // p), groups.max()))


def pk_epoch_order(pids: Sequence[int] | np.ndarray, p: int, k: int, seed: int, epoch: int) -> np.ndarray:
    """Indices into the training items for one epoch: [batches_per_epoch, P*K].

    Every batch holds P distinct identities with K images each, identity groups contiguous. Every image
    appears at least once per epoch; identities with fewer than K images are sampled with replacement;
    when fewer than P identities have groups left, the batch is filled with fresh groups of other
    identities. Deterministic for (seed, epoch).
    """
    pids = np.asarray(pids)
    num_batches = batches_per_epoch(pids, p, k)
    rng = np.random.default_rng([seed, epoch])
    chunks = _pid_chunks(pids, k, rng)
    for groups in chunks:
        rng.shuffle(groups)
    remaining = np.array([len(g) for g in chunks])
    order = np.empty((num_batches, p * k), np.int64)
    for b in range(num_batches):
        batches_left = num_batches - b
        forced = np.flatnonzero(remaining >= batches_left)  # must take a group now or never fit
        optional = np.setdiff1d(np.flatnonzero(remaining > 0), forced)
        take = min(p - len(forced), len(optional))
        if take > 0:
            weights = remaining[optional] / remaining[optional].sum()
            chosen = np.concatenate([forced, rng.choice(optional, take, replace=False, p=weights)])
        else:
            chosen = forced
        if len(chosen) < p:  # fill with fresh groups of identities not in this batch
            spare = np.setdiff1d(np.arange(len(chunks)), chosen)
            fill = rng.choice(spare, p - len(chosen), replace=False)
        else:
            fill = np.empty(0, np.int64)
        rng.shuffle(chosen)
        groups = []
        for c in chosen:
            remaining[c] -= 1
            groups.append(chunks[c][remaining[c]])
        for c in fill:
            members = np.concatenate(chunks[c])
            groups.append(rng.choice(np.unique(members), k, replace=len(np.unique(members)) < k))
        order[b] = np.concatenate(groups)
    return order


def epoch_batches(
    labels: np.ndarray, p: int, k: int, seed: int, epoch: int, steps: int | None = None
) -> np.ndarray:
    """The batches of one epoch: `pk_epoch_order`, cut to (or extended by further draws to) `steps`."""
    order = pk_epoch_order(labels, p, k, seed, epoch)
    draw = 1
    while steps is not None and len(order) < steps:
        order = np.concatenate([order, pk_epoch_order(labels, p, k, seed + 7919 * draw, epoch)])
        draw += 1
    return order if steps is None else order[:steps]


def train_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    input_size: tuple[int, int],
    p: int = 16,
    k: int = 4,
    seed: int = 0,
    epochs: int = 1,
    start_epoch: int = 0,
    start_step: int = 0,
    flip: bool = True,
    spare_batches: int = 4,
    steps_per_epoch: int | None = None,
) -> tf.data.Dataset:
    """Batches of (images float32 [P*K, H, W, 3] RGB 0..255, labels int32 [P*K]) for epochs [start, epochs).

    Starts at batch `start_step` of `start_epoch` (resume). An epoch is `steps_per_epoch` batches
    (default: one pass over the training set), so positions agree with the trainer's step count.
    Under a tf.distribute strategy with R replicas the global batch is split contiguously, so P must be
    a multiple of R for every replica to get whole K-groups. A file that fails to decode drops its whole
    batch with a logged warning (the pre-training scan should have caught it); `spare_batches` extra
    batches at the end keep the step count intact when that happens.
    """
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    labels = np.asarray(labels, np.int32)
    steps = steps_per_epoch or batches_per_epoch(labels, p, k)
    orders = [epoch_batches(labels, p, k, seed, e, steps) for e in range(start_epoch, epochs)]
    if spare_batches:
        orders.append(epoch_batches(labels, p, k, seed, epochs, steps)[:spare_batches])
    order = np.concatenate(orders)[start_step:] if orders else np.empty((0, p * k), np.int64)
    steps_before = start_epoch * steps + start_step
    positions = steps_before + np.arange(len(order), dtype=np.int64)

    path_table = tf.constant(np.asarray(paths, dtype=object).astype(str))
    label_table = tf.constant(labels)
    height, width = input_size

    def load_one(index, position):
        image = decode_and_resize(tf.io.read_file(path_table[index]), (height, width))
        if flip:
            coin = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), position]))
            image = tf.cond(coin < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)
        return image

    def load_batch(indices, step):
        sample_positions = step * (p * k) + tf.range(p * k, dtype=tf.int64)
        images = tf.map_fn(
            lambda args: load_one(args[0], args[1]),
            (indices, sample_positions),
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
            parallel_iterations=p * k,
        )
        return images, tf.gather(label_table, indices)

    dataset = tf.data.Dataset.from_tensor_slices((order, positions))
    dataset = dataset.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors(log_warning=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
