"""Training augmentations (mgn_tf.data.augment) against independent numpy / colorsys computations on fixed
images, their ranges over many positions, and their reproducibility per (seed, position) through the
training pipeline, resumed mid-run included."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from mgn_tf.data.augment import (
    MEAN_RGB,
    Augmentation,
    augment,
    color_jitter,
    crop_offset,
    jitter_factors,
    pad_crop,
    random_erasing,
    random_erasing_box,
)

H, W = 96, 32


def image(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(np.float32)


def test_erasing_boxes_follow_zhong_et_al_over_many_positions():
    aug = Augmentation(erasing_probability=0.5)
    boxes = tf.function(
        lambda positions: tf.map_fn(
            lambda p: tf.stack([tf.cast(v, tf.int32) for v in random_erasing_box(384, 128, 11, p, aug)]),
            positions, fn_output_signature=tf.int32,
        )
    )(tf.range(2000, dtype=tf.int64)).numpy()  # fmt: skip
    applied = boxes[:, 0] == 1
    assert abs(applied.mean() - 0.5) < 4 * np.sqrt(0.25 / 2000)  # binomial, 4 sigma
    _, y, x, h, w = boxes[applied].T
    assert (h < 384).all() and (w < 128).all() and (y >= 0).all() and (x >= 0).all()
    assert (y + h <= 384).all() and (x + w <= 128).all()
    # h = round(sqrt(S r)), w = round(sqrt(S / r)): S and r recovered within the rounding of h and w
    area_hi, area_lo = (h + 0.5) * (w + 0.5) / (384 * 128), (h - 0.5) * (w - 0.5) / (384 * 128)
    assert (area_hi >= 0.02).all() and (area_lo <= 0.4).all()
    assert ((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 3.3).all()
    assert len({tuple(b) for b in boxes[applied]}) > 0.9 * applied.sum()  # positions differ
    assert h.max() > 2 * h.min() and w.max() > 2 * w.min()  # the ranges are used, not one size


def test_no_erasing_when_no_rectangle_fits():
    # A 3x3 image and areas of 90-100 %: h = w = round(sqrt(S)) = 3, never < 3, for any aspect near 1.
    aug = Augmentation(erasing_probability=1.0, erasing_area=(0.9, 1.0), erasing_aspect=(0.9, 1.1))
    x = image(5, 3, 3)
    for position in range(20):
        assert not bool(random_erasing_box(3, 3, 0, position, aug)[0])
        np.testing.assert_array_equal(random_erasing(tf.constant(x), 0, position, aug).numpy(), x)


@pytest.mark.parametrize("fill", ["mean", "random"])
def test_erasing_changes_exactly_the_box_to_its_fill(fill):
    aug = Augmentation(erasing_probability=1.0, erasing_fill=fill)
    x = image(1)
    for position in range(5):
        out = random_erasing(tf.constant(x), 3, position, aug).numpy()
        apply, y0, x0, h, w = (int(v) for v in random_erasing_box(H, W, 3, position, aug))
        assert apply
        inside = np.zeros((H, W), bool)
        inside[y0 : y0 + h, x0 : x0 + w] = True
        np.testing.assert_array_equal(out[~inside], x[~inside])
        erased = out[inside]
        if fill == "mean":
            np.testing.assert_allclose(erased, np.broadcast_to(MEAN_RGB, erased.shape), rtol=1e-6)
        else:
            assert erased.min() >= 0 and erased.max() <= 255 and erased.std() > 50
            assert not np.allclose(erased, x[inside])
    if fill == "random":  # the noise is drawn per position: where two boxes overlap, it differs
        a = random_erasing(tf.constant(x), 3, 0, aug).numpy()
        for position in range(1, 50):
            b = random_erasing(tf.constant(x), 3, position, aug).numpy()
            both = (a != x).any(-1) & (b != x).any(-1)
            if both.sum() > 10:
                break
        assert both.sum() > 10 and (a[both] != b[both]).mean() > 0.99
    assert np.allclose(MEAN_RGB, (123.68, 116.779, 103.939))  # ImageNet's mean pixel, RGB
    no = random_erasing(tf.constant(x), 3, 0, Augmentation(erasing_probability=0.0)).numpy()
    np.testing.assert_array_equal(no, x)


def test_pad_crop_is_a_slice_of_the_zero_padded_image():
    x = image(2)
    offsets = set()
    for position in range(60):
        dy, dx = (int(v) for v in crop_offset(5, position, 10))
        offsets.add((dy, dx))
        padded = np.zeros((H + 20, W + 20, 3), np.float32)
        padded[10:-10, 10:-10] = x
        out = pad_crop(tf.constant(x), 5, position, 10).numpy()
        np.testing.assert_array_equal(out, padded[dy : dy + H, dx : dx + W])
    values = np.array(sorted(offsets))
    assert values.min() == 0 and values.max() == 20 and len(offsets) > 30


def _hue_shift(pixels: np.ndarray, shift: float) -> np.ndarray:
    out = np.empty_like(pixels)
    for i, j in np.ndindex(pixels.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(pixels[i, j] / 255.0))
        out[i, j] = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255.0
    return out


def test_color_jitter_equals_its_definition_with_the_drawn_factors():
    x = image(3, 12, 8)
    gray_w = np.array([0.299, 0.587, 0.114])
    for position in range(4):
        for name, value in (("brightness", 0.4), ("contrast", 0.3), ("saturation", 0.5), ("hue", 0.2)):
            aug = Augmentation(**{name: value})
            b, c, s, h = jitter_factors(7, position, aug).numpy()
            out = color_jitter(tf.constant(x), 7, position, aug).numpy()
            if name == "brightness":
                assert 0.6 <= b <= 1.4
                want = np.clip(x * b, 0, 255)
            elif name == "contrast":
                assert 0.7 <= c <= 1.3
                mean = (x @ gray_w).mean()
                want = np.clip(mean + c * (x - mean), 0, 255)
            elif name == "saturation":
                assert 0.5 <= s <= 1.5
                gray = (x @ gray_w)[..., None]
                want = np.clip(gray + s * (x - gray), 0, 255)
            else:
                assert -0.2 <= h <= 0.2
                want = _hue_shift(x, h)
            np.testing.assert_allclose(out, want, atol=0.05, err_msg=f"{name} at {position}")


def test_augment_applies_flip_pad_crop_jitter_erasing_in_that_order():
    """numpy: flip iff the old coin, zero-pad and slice, brightness, then the mean box (not jittered)."""
    aug = Augmentation(pad=4, brightness=0.3, erasing_probability=1.0)
    x = image(6)
    for position in range(6):
        coin = tf.random.stateless_uniform([], seed=tf.constant([2, position], tf.int64)).numpy() < 0.5
        want = x[:, ::-1] if coin else x
        dy, dx = (int(v) for v in crop_offset(2, position, 4))
        want = np.pad(want, [(4, 4), (4, 4), (0, 0)])[dy : dy + H, dx : dx + W]
        want = np.clip(want * jitter_factors(2, position, aug).numpy()[0], 0, 255)
        _, y0, x0, h, w = (int(v) for v in random_erasing_box(H, W, 2, position, aug))
        want[y0 : y0 + h, x0 : x0 + w] = MEAN_RGB
        np.testing.assert_allclose(augment(tf.constant(x), 2, position, aug).numpy(), want, rtol=1e-6)


def test_same_seed_and_position_same_output_other_position_other_output():
    aug = Augmentation(pad=10, brightness=0.2, contrast=0.15, erasing_probability=0.5, erasing_fill="random")
    x = tf.constant(image(4))
    a, b = augment(x, 9, 123, aug).numpy(), augment(x, 9, 123, aug).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(x, 9, 124, aug).numpy())
    assert not np.array_equal(a, augment(x, 8, 123, aug).numpy())


def test_validate_names_the_field():
    for bad, field in (
        ({"pad": -1}, "pad"), ({"hue": 0.7}, "hue"), ({"erasing_probability": 2}, "erasing_probability"),
        ({"erasing_area": (0.5, 0.1)}, "erasing_area"), ({"erasing_fill": "zero"}, "erasing_fill"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=f"Augmentation.{field}="):
            Augmentation(**bad).validate()
    names = Augmentation(pad=10, erasing_probability=0.5).enabled_names()
    assert names == ["flip", "pad_crop", "random_erasing"]


# --- through the pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aug_images")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for pid in range(4):
        for j in range(3):
            pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            path = folder / f"{pid}_{j}.png"
            tf.io.write_file(str(path), tf.io.encode_png(pixels))
            paths.append(str(path))
            labels.append(pid)
    return paths, np.array(labels)


def _batches(paths, labels, **kwargs):
    from mgn_tf.data.pipeline import train_dataset

    ds = train_dataset(paths, labels, (H, W), p=2, k=2, seed=4, epochs=2, steps_per_epoch=3, **kwargs)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_default_pipeline_flips_exactly_as_the_papers_flip_did(tiny_set):
    """Flip only: each sample is its decoded image, reversed iff stateless_uniform([seed, position]) < 0.5
    (the draw of the pipeline before the other augmentations existed)."""
    from mgn_tf.data.pipeline import epoch_batches
    from mgn_tf.images import decode_and_resize

    paths, labels = tiny_set
    got = _batches(paths, labels)
    assert len(got) == 6
    explicit = _batches(paths, labels, augmentation=Augmentation())
    np.testing.assert_array_equal(np.stack([x for x, _ in got]), np.stack([x for x, _ in explicit]))
    order = np.concatenate([epoch_batches(labels, 2, 2, 4, e, 3) for e in range(2)]).reshape(-1)
    flips = 0
    for position, index in enumerate(order):
        decoded = decode_and_resize(tf.io.read_file(paths[index]), (H, W)).numpy()
        coin = tf.random.stateless_uniform([], seed=tf.constant([4, position], tf.int64)).numpy() < 0.5
        want = decoded[:, ::-1] if coin else decoded
        flips += coin
        np.testing.assert_array_equal(got[position // 4][0][position % 4], want)
    assert 0 < flips < len(order)


@pytest.mark.parametrize("start_epoch, start_step", [(0, 2), (1, 1)])
def test_resumed_pipeline_augments_like_the_uninterrupted_one(tiny_set, start_epoch, start_step):
    paths, labels = tiny_set
    aug = Augmentation(
        pad=10, brightness=0.2, contrast=0.15, saturation=0.3, hue=0.1, erasing_probability=0.5
    )
    whole = _batches(paths, labels, augmentation=aug)
    from mgn_tf.data.pipeline import train_dataset

    resumed = train_dataset(
        paths, labels, (H, W), p=2, k=2, seed=4, epochs=2, start_epoch=start_epoch, start_step=start_step,
        steps_per_epoch=3, augmentation=aug,
    )  # fmt: skip
    rest = [(x.numpy(), y.numpy()) for x, y in resumed]
    s = 3 * start_epoch + start_step
    assert len(rest) == 6 - s
    for (x, y), (wx, wy) in zip(rest, whole[s:], strict=True):
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)
    plain = _batches(paths, labels)
    assert not np.array_equal(whole[0][0], plain[0][0])  # the augmentations did something


def test_substituted_sample_gets_the_augmentation_of_its_position(tiny_set, tmp_path):
    """Identity 0 keeps two images, the first unreadable: its substitute is always the second, so the
    run must equal one whose first image is a readable copy of the second."""
    from mgn_tf.data.pipeline import BadFileLog

    paths, labels = tiny_set
    paths, labels = paths[:2] + paths[3:], np.concatenate([labels[:2], labels[3:]])
    bad, copy = tmp_path / "bad.png", tmp_path / "copy.png"
    bad.write_bytes(b"not an image")
    copy.write_bytes(open(paths[1], "rb").read())
    aug = Augmentation(pad=10, brightness=0.2, hue=0.1, erasing_probability=0.5, erasing_fill="random")
    log = BadFileLog()
    got = _batches([str(bad)] + paths[1:], labels, augmentation=aug, bad_files=log)
    want = _batches([str(copy)] + paths[1:], labels, augmentation=aug)
    replaced = log.replacements()
    assert replaced and {(r.original, r.replacement) for r in replaced} == {(str(bad), paths[1])}
    for (x, y), (wx, wy) in zip(got, want, strict=True):
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)
