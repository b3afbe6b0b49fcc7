"""The PK sampler and the tf.data training pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mgn_tf.data.pipeline import (
    BadFileLog,
    batches_per_epoch,
    pk_epoch_order,
    substitute_candidates,
    train_dataset,
)
from mgn_tf.images import decode_and_resize


def _unbalanced_pids(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, 40)  # identities with 1..29 images, some fewer than K
    return np.repeat(np.arange(40), counts)


@pytest.mark.parametrize("p,k", [(16, 4), (8, 2), (4, 8)])
def test_every_batch_has_p_identities_times_k_images(p, k):
    pids = _unbalanced_pids()
    order = pk_epoch_order(pids, p, k, seed=3, epoch=0)
    assert order.shape == (batches_per_epoch(pids, p, k), p * k)
    for batch in order:
        groups = pids[batch].reshape(p, k)
        assert (groups == groups[:, :1]).all(), "each K-group is one identity, contiguous"
        assert len(np.unique(groups[:, 0])) == p, "P distinct identities"


def test_epoch_covers_the_training_set_and_is_deterministic():
    pids = _unbalanced_pids(1)
    a = pk_epoch_order(pids, 16, 4, seed=7, epoch=2)
    assert set(a.ravel()) == set(range(len(pids)))
    np.testing.assert_array_equal(a, pk_epoch_order(pids, 16, 4, seed=7, epoch=2))
    assert not np.array_equal(a, pk_epoch_order(pids, 16, 4, seed=7, epoch=3))
    assert not np.array_equal(a, pk_epoch_order(pids, 16, 4, seed=8, epoch=2))


def test_identities_with_fewer_than_k_images_are_sampled_with_replacement():
    pids = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    order = pk_epoch_order(pids, 2, 4, seed=0, epoch=0)
    for batch in order:
        for group in pids[batch].reshape(2, 4):
            assert len(set(group)) == 1
    assert set(order.ravel()) == set(range(10))


def test_too_few_identities_is_a_clear_error():
    with pytest.raises(ValueError, match="only 3 identities"):
        batches_per_epoch([0, 1, 2], 4, 2)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for pid in range(6):
        for i in range(3):
            path = folder / f"{pid}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
            labels.append(pid)
    return paths, np.array(labels)


def test_dataset_batches_decode_and_resume_exactly(tiny_images):
    paths, labels = tiny_images
    full = list(train_dataset(paths, labels, (12, 8), p=4, k=2, seed=5, epochs=3))
    steps = batches_per_epoch(labels, 4, 2)
    assert len(full) == 3 * steps
    images, batch_labels = full[0]
    assert images.shape == (8, 12, 8, 3) and images.dtype == "float32"
    assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 255
    orders = np.concatenate([pk_epoch_order(labels, 4, 2, 5, e) for e in range(3)])
    np.testing.assert_array_equal(np.stack([b.numpy() for _, b in full]), labels[orders])
    resumed = list(
        train_dataset(paths, labels, (12, 8), p=4, k=2, seed=5, epochs=3, start_epoch=1, start_step=2)
    )
    assert len(resumed) == len(full) - steps - 2
    for (a, la), (b, lb) in zip(full[steps + 2 :], resumed, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # same images, same flips
        np.testing.assert_array_equal(la.numpy(), lb.numpy())


def test_flip_is_applied_to_about_half_the_samples(tiny_images):
    paths, labels = tiny_images
    plain = list(train_dataset(paths, labels, (20, 10), p=4, k=2, seed=1, epochs=4, flip=False))
    flipped = list(train_dataset(paths, labels, (20, 10), p=4, k=2, seed=1, epochs=4, flip=True))
    same = mirrored = 0
    for (a, _), (b, _) in zip(plain, flipped, strict=True):
        for x, y in zip(a.numpy(), b.numpy(), strict=True):
            same += np.array_equal(x, y)
            mirrored += np.array_equal(x[:, ::-1], y)
    total = sum(len(b) for _, b in plain)
    assert same + mirrored == total
    assert 0.25 * total < mirrored < 0.75 * total


def test_substitutes_are_other_images_of_the_same_identity_fixed_by_seed_and_position():
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 1, 0, 0])
    index = np.tile(np.arange(10), 3)
    position = np.arange(30) + 1000
    found = substitute_candidates(index, position, labels, seed=7, tries=3)
    for item, row in zip(index, found, strict=True):
        others = {int(j) for j in np.flatnonzero(labels == labels[item]) if j != item}
        chosen = [int(c) for c in row if c >= 0]
        assert len(chosen) == min(3, len(others)) and len(set(chosen)) == len(chosen)
        assert set(chosen) <= others
        assert all(c == -1 for c in row[len(chosen) :])
    np.testing.assert_array_equal(found, substitute_candidates(index, position, labels, seed=7, tries=3))
    # the same item at other positions (or seeds) starts elsewhere among its identity's images
    assert len({tuple(row) for row in found[index == 0]}) > 1
    assert not np.array_equal(found, substitute_candidates(index, position, labels, seed=8, tries=3))


def _decode(path: str, size: tuple[int, int]) -> np.ndarray:
    return decode_and_resize(tf.io.read_file(path), size).numpy()


def test_a_file_gone_bad_is_replaced_by_an_image_of_its_identity_and_nothing_else_moves(
    tiny_images, tmp_path: Path
):
    paths, labels = list(tiny_images[0]), tiny_images[1]
    options = dict(p=4, k=2, seed=0, epochs=3, flip=False)
    clean = list(train_dataset(paths, labels, (12, 8), **options))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    paths[4] = str(bad)
    log = BadFileLog()
    dirty = list(train_dataset(paths, labels, (12, 8), bad_files=log, **options))
    assert len(dirty) == len(clean)
    replaced = log.replacements()
    order = np.concatenate([pk_epoch_order(labels, 4, 2, 0, e) for e in range(3)])
    assert [(r.step - 1, r.sample) for r in replaced] == [tuple(x) for x in np.argwhere(order == 4)]
    assert all(r.original == str(bad) for r in replaced)
    for (a, la), (b, lb), step in zip(clean, dirty, range(len(clean)), strict=True):
        np.testing.assert_array_equal(la.numpy(), lb.numpy())  # the replacement has the same identity
        here = {r.sample: r for r in replaced if r.step == step + 1}
        for sample in range(8):
            if sample in here:
                substitute = here[sample].replacement
                assert labels[paths.index(substitute)] == labels[4] and substitute != str(bad)
                np.testing.assert_array_equal(b.numpy()[sample], _decode(substitute, (12, 8)))
            else:
                np.testing.assert_array_equal(a.numpy()[sample], b.numpy()[sample])
    # a resumed pipeline makes the same replacements at the same positions
    again = BadFileLog()
    list(train_dataset(paths, labels, (12, 8), bad_files=again, start_epoch=1, start_step=1, **options))
    steps = batches_per_epoch(labels, 4, 2)
    assert again.replacements() == [r for r in replaced if r.step > steps + 1]


def test_on_bad_file_stop_raises_at_the_batch_naming_the_file(tiny_images, tmp_path: Path):
    paths, labels = list(tiny_images[0]), tiny_images[1]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    paths[4] = str(bad)
    log = BadFileLog()
    dataset = train_dataset(paths, labels, (12, 8), p=4, k=2, seed=0, on_bad_file="stop", bad_files=log)
    first_bad = int(np.argwhere(pk_epoch_order(labels, 4, 2, 0, 0) == 4)[0, 0])
    received = 0
    with pytest.raises(tf.errors.OpError, match="bad.png"):
        for _ in dataset:
            received += 1
    assert received == first_bad  # every batch before it arrived
    assert log.fatal is not None and log.fatal.path == str(bad) and "on_bad_file=stop" in str(log.fatal)
    assert not log.replacements()


def test_an_identity_without_a_readable_image_stops_naming_the_files(tiny_images, tmp_path: Path):
    paths, labels = list(tiny_images[0]), tiny_images[1]
    for i in np.flatnonzero(labels == 2):
        paths[i] = str(tmp_path / f"gone_{i}.png")  # deleted after the scan
    log = BadFileLog()
    with pytest.raises(tf.errors.OpError):
        list(train_dataset(paths, labels, (12, 8), p=4, k=2, seed=0, epochs=2, bad_files=log))
    assert log.fatal is not None and "gone_" in log.fatal.path and "nor any substitute" in str(log.fatal)


def test_steps_per_epoch_shorter_or_longer_than_a_pass_resumes_exactly(tiny_images):
    paths, labels = tiny_images
    for steps in (2, 9):
        full = list(train_dataset(paths, labels, (12, 8), p=4, k=2, seed=5, epochs=2, steps_per_epoch=steps))
        assert len(full) == 2 * steps
        resumed = list(
            train_dataset(
                paths,
                labels,
                (12, 8),
                p=4,
                k=2,
                seed=5,
                epochs=2,
                start_epoch=1,
                start_step=1,
                steps_per_epoch=steps,
            )
        )
        assert len(resumed) == steps - 1
        for (a, la), (b, lb) in zip(full[steps + 1 :], resumed, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
            np.testing.assert_array_equal(la.numpy(), lb.numpy())
