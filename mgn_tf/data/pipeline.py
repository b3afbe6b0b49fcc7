"""The PK training pipeline: P identities × K images per batch, decoded, resized and augmented by tf.data.

The batch order of every epoch is a pure function of (seed, epoch), and the augmentation of every sample
(`mgn_tf.data.augment`: flip, pad and crop, colour jitter, random erasing) a pure function of (seed, its
position in the run), so a run resumed at any step sees exactly the data an uninterrupted run would. A
file that cannot be read during training (it went bad after the pre-training scan) never changes that:
its sample is replaced by another image of the same identity chosen from (seed, position), and augmented
as that position is, or the run stops naming the file; every replacement is logged. This module knows
nothing about datasets: it takes paths and training labels.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from mgn_tf.config import ON_BAD_FILE
from mgn_tf.data.augment import Augmentation, augment
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


# Other images of the identity tried, in a (seed, position) order, before a sample counts as unreadable.
SUBSTITUTE_TRIES = 4


class BadFileError(RuntimeError):
    """A training image could not be read during training and was not (or could not be) replaced."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Replacement:
    """One sample whose file could not be read, and the image of the same identity trained instead."""

    step: int  # the training step (1-based, as in the progress bar and checkpoints/step_N)
    sample: int  # index in that step's batch
    original: str
    replacement: str

    def to_dict(self) -> dict:
        return asdict(self)


class BadFileLog:
    """What the pipeline met while it ran: replacements in data order, and the fatal bad file, if any.

    The pipeline writes from tf.data's threads; readers (the engine's callback) take snapshots. A batch
    produced twice (Keras reads the first one to build the model) is recorded once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replacements: dict[tuple[int, int], Replacement] = {}
        self.fatal: BadFileError | None = None

    def add(self, replacement: Replacement) -> bool:
        """Records `replacement`; False if its (step, sample) was already recorded."""
        with self._lock:
            key = (replacement.step, replacement.sample)
            new = key not in self._replacements
            self._replacements.setdefault(key, replacement)
            return new

    def fail(self, error: BadFileError) -> None:
        with self._lock:
            self.fatal = self.fatal or error

    def replacements(self, up_to_step: int | None = None) -> list[Replacement]:
        """Replacements so far in data order, optionally only those of steps <= `up_to_step`."""
        with self._lock:
            found = [self._replacements[key] for key in sorted(self._replacements)]
        return [r for r in found if up_to_step is None or r.step <= up_to_step]


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread uint64 hash of uint64 values (wrapping arithmetic)."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def substitute_candidates(
    index: np.ndarray, position: np.ndarray, labels: np.ndarray, seed: int, tries: int = SUBSTITUTE_TRIES
) -> np.ndarray:
    """For samples `index` at run positions `position`: [n, tries] distinct other images of the same
    identity (fewer when it has fewer), starting at a point that is a pure function of (seed, position);
    -1 fills what is left."""
    index, position = np.asarray(index, np.int64), np.asarray(position, np.int64)
    labels = np.asarray(labels, np.int64)
    by_label = np.argsort(labels, kind="stable")
    first = np.searchsorted(labels[by_label], labels)  # first slot of each item's identity in by_label
    count = np.bincount(labels)[labels]
    rank = np.empty(len(labels), np.int64)
    rank[by_label] = np.arange(len(labels)) - first[by_label]  # each item's slot within its identity
    others = (count - 1)[index]
    start = (
        _mix(_mix(np.full(len(index), seed, np.uint64)) ^ position.astype(np.uint64))
        % np.maximum(others, 1).astype(np.uint64)
    ).astype(np.int64)
    j = np.arange(tries)[None, :]
    offset = 1 + (start[:, None] + j) % np.maximum(others, 1)[:, None]
    slot = first[index][:, None] + (rank[index][:, None] + offset) % count[index][:, None]
    return np.where(j < others[:, None], by_label[slot], -1)


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
    steps_per_epoch: int | None = None,
    on_bad_file: str = "substitute",
    bad_files: BadFileLog | None = None,
    augmentation: Augmentation | None = None,
) -> tf.data.Dataset:
    """Batches of (images float32 [P*K, H, W, 3] RGB 0..255, labels int32 [P*K]) for epochs [start, epochs).

    Starts at batch `start_step` of `start_epoch` (resume). An epoch is `steps_per_epoch` batches
    (default: one pass over the training set), so positions agree with the trainer's step count.
    Under a tf.distribute strategy with R replicas the global batch is split contiguously, so P must be
    a multiple of R for every replica to get whole K-groups.
    A file that fails to read or decode: with `on_bad_file="substitute"` its sample becomes the first
    readable of `substitute_candidates` (same identity, same augmentation), recorded in `bad_files` and
    printed; with "stop" (or when no candidate is readable) the dataset raises an error once the batch is
    reached and `bad_files.fatal` is a `BadFileError` naming the file. Batch count and every other sample are
    unchanged either way.
    `augmentation`: what to apply to each sample (default: `Augmentation(flip=flip)`, the paper's flip).
    """
    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file={on_bad_file!r}: accepted values: {', '.join(ON_BAD_FILE)}")
    bad_files = bad_files if bad_files is not None else BadFileLog()
    augmentation = (augmentation or Augmentation(flip=flip)).validate()
    labels = np.asarray(labels, np.int32)
    paths = [str(path) for path in paths]
    steps = steps_per_epoch or batches_per_epoch(labels, p, k)
    batch = p * k
    orders = [epoch_batches(labels, p, k, seed, e, steps) for e in range(start_epoch, epochs)]
    order = np.concatenate(orders)[start_step:] if orders else np.empty((0, batch), np.int64)
    first_step = start_epoch * steps + start_step
    index = order.reshape(-1)
    position = first_step * batch + np.arange(len(index), dtype=np.int64)
    if on_bad_file == "substitute":
        tries = SUBSTITUTE_TRIES
        candidates = np.concatenate(
            [index[:, None], substitute_candidates(index, position, labels, seed, tries)], axis=1
        )
    else:
        tries = 0
        candidates = index[:, None]
    # A last candidate -1 always "loads" (to a blank image), so every sample yields exactly one element.
    candidates = np.concatenate([candidates, np.full((len(index), 1), -1, np.int64)], axis=1)

    path_table = tf.constant(np.asarray(paths, dtype=object).astype(str)) if paths else tf.constant([""])
    height, width = input_size
    blank = tf.zeros([height, width, 3], tf.float32)

    def load(candidate):
        image = tf.cond(
            candidate >= 0,
            lambda: decode_and_resize(tf.io.read_file(path_table[tf.maximum(candidate, 0)]), (height, width)),
            lambda: blank,
        )
        return image, candidate

    def first_readable(sample_candidates, sample_position):
        tried = tf.data.Dataset.from_tensor_slices(sample_candidates).map(load).ignore_errors().take(1)
        return tried.map(lambda image, used: (image, used, sample_position))

    def augment_sample(image, used, sample_position):
        return augment(image, seed, sample_position, augmentation), used, sample_position

    def check(used: np.ndarray, sample_position: np.ndarray) -> np.ndarray:
        """Host side: records replacements (or the fatal file) of one batch; returns its labels."""
        for u, pos in zip(used.tolist(), sample_position.tolist(), strict=True):
            row = candidates[pos - first_step * batch]
            if u == row[0]:
                continue
            step, sample = divmod(pos, batch)
            step += 1
            original = paths[row[0]]
            if u >= 0:
                if bad_files.add(Replacement(step, sample, original, paths[u])):
                    print(
                        f"warning: training image {original} could not be read (step {step}, sample "
                        f"{sample}); trained on {paths[u]} of the same identity instead",
                        flush=True,
                    )
                continue
            if on_bad_file == "stop":
                message = f"training image {original} could not be read during training (step {step}); "
                message += "--on_bad_file=stop (substitute: train on another image of its identity)"
            else:
                tried = ", ".join(paths[c] for c in row[1 : 1 + tries] if c >= 0) or "none: no other image"
                message = (
                    f"training image {original} could not be read during training (step {step}), nor any "
                    f"substitute of its identity (tried: {tried})"
                )
            error = BadFileError(message, original)
            bad_files.fail(error)
            raise error
        return labels[candidates[sample_position - first_step * batch, 0]]

    def checked(images, used, sample_position):
        batch_labels = tf.numpy_function(check, [used, sample_position], tf.int32, stateful=True)
        return images, tf.ensure_shape(batch_labels, [batch])

    dataset = tf.data.Dataset.from_tensor_slices((candidates, position))
    # One sample at a time, in order (block_length 1, deterministic): the batch is exactly the order.
    dataset = dataset.interleave(
        first_readable,
        cycle_length=batch,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    dataset = dataset.map(augment_sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch, drop_remainder=True).map(checked)
    return dataset.prefetch(tf.data.AUTOTUNE)
