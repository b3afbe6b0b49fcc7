"""The export's parity bounds (mgn_tf.export.parity) and its parity batch.

float32: max |diff| over max |Keras embedding| and a per-image cosine, so the verdict does not depend on the
embeddings' scale (raw features in the thousands, or unit vectors with --bake_flip_norm). Array tests,
and one real MGN whose embeddings are in the thousands, exported to TFLite fp32 (no session export).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers.exported import INPUT_SIZE
from helpers.perturb import distinct_fresh_model

from mgn_tf.evaluation.metrics import l2_normalize
from mgn_tf.export import parity
from mgn_tf.export.parity import FLOAT32_MAX_REL_DIFF
from mgn_tf.model import FEATURE_NAMES, REDUCTION_DIM, embedding_model

# The absolute bound parity used before (max |diff| <= 1e-4): what the scale-aware bound is tested against.
FORMER_MAX_ABS_DIFF = 1e-4


def _embeddings(n: int = 6, seed: int = 0, dim: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, dim)).astype(np.float32)


def _rounding_noise(x: np.ndarray, relative: float = 1e-6, seed: int = 1) -> np.ndarray:
    """`x` with the relative error of a float32 computation done in another order (a few ulps)."""
    noise = np.random.default_rng(seed).normal(0, relative, x.shape)
    return (x.astype(np.float64) * (1 + noise)).astype(np.float32)


# ------------------------------------------------------------------------------------------- arrays


def test_compare_passes_identical_and_breaks_float32_bound():
    reference = _embeddings()
    assert parity.compare("x", "float32", reference, reference.copy()).ok
    off = reference.copy()
    off[2, 5] += 2e-4  # relative to max |reference| ~1
    result = parity.compare("x", "float32", reference, off)
    assert not result.ok and "max rel diff" in result.failures[0]
    assert parity.compare("x", "int8", reference, off).ok  # cosine bound only


def test_float32_bound_scales_with_the_embeddings():
    """The same float32 rounding error passes at every scale, though it is > 1e-4 on entries ~1000."""
    unit = l2_normalize(_embeddings(8, dim=2048))
    results = {}
    for largest in (None, 1e3, 1e5):  # unit vectors, then scaled copies whose largest entry is `largest`
        reference = unit if largest is None else (unit * (largest / unit.max())).astype(np.float32)
        results[largest] = parity.compare("x", "float32", reference, _rounding_noise(reference))
        assert results[largest].ok, results[largest].failures
    assert results[1e3].max_abs_diff > 10 * FORMER_MAX_ABS_DIFF  # the absolute bound failed it
    assert results[None].max_rel_diff == pytest.approx(results[1e5].max_rel_diff, rel=0.02)
    assert results[None].max_rel_diff < FLOAT32_MAX_REL_DIFF / 10


def test_float32_bound_catches_a_small_absolute_error_on_unit_vectors():
    """What --bake_flip_norm outputs: entries ~0.02, where an error of 5e-5 is real but passed 1e-4."""
    reference = l2_normalize(_embeddings(8, dim=2048))
    broken = reference.copy()
    broken[3, ::10] += 5e-5
    result = parity.compare("x", "float32", reference, broken)
    assert result.max_abs_diff < FORMER_MAX_ABS_DIFF
    assert not result.ok and "max rel diff" in result.failures[0], result.failures
    assert result.to_dict()["max_rel_diff"] > 10 * FLOAT32_MAX_REL_DIFF


def test_float32_cosine_catches_an_error_on_an_image_with_small_embeddings():
    """The relative bound is over the batch's largest entry: the per-image cosine guards smaller images."""
    reference = _embeddings(4, dim=256)
    reference[0] *= 1000  # the batch's scale
    broken = reference.copy()
    broken[1] += np.random.default_rng(2).normal(0, 0.03, 256).astype(np.float32)  # ~6% of image 1
    result = parity.compare("x", "float32", reference, broken)
    assert result.max_rel_diff < FLOAT32_MAX_REL_DIFF
    assert not result.ok and result.failures == [
        f"min cosine {result.min_cosine:.9f} < {parity.FLOAT32_MIN_COSINE:.9f}"
    ]


def test_compare_breaks_cosine_bound_for_reduced_precision():
    reference = _embeddings()
    noisy = reference + np.random.default_rng(1).normal(0, 0.05, reference.shape).astype(np.float32)
    result = parity.compare("x", "float16", reference, noisy)
    assert not result.ok and "min cosine" in result.failures[0]


def test_compare_flags_nearly_identical_outputs_for_different_inputs():
    # All embeddings alike (cosine ~0.99 to one another), and an export that outputs their mean for every
    # image: cosine to Keras still > 0.999, but the images are no longer told apart.
    base = np.ones((1, 64), np.float32)
    reference = base + 0.01 * _embeddings()
    constant = np.repeat(reference.mean(0, keepdims=True), len(reference), axis=0)
    assert parity.cosine_similarities(constant, reference).min() > 0.999
    result = parity.compare("x", "int8", reference, constant)
    assert not result.ok and "identical embeddings" in result.failures[0]
    degenerate = parity.compare("x", "float32", constant, constant)
    assert not degenerate.ok and "Keras embeddings" in degenerate.failures[0]


def test_compare_flags_non_finite_and_wrong_shape():
    reference = _embeddings()
    broken = reference.copy()
    broken[0, 0] = np.nan
    assert "non-finite outputs" in parity.compare("x", "float32", reference, broken).failures
    assert "shape" in parity.compare("x", "float32", reference, reference[:3]).failures[0]


def test_result_report_and_table_show_absolute_and_relative_diff():
    reference = _embeddings() * 1000
    result = parity.compare("tflite/fp32", "float32", reference, _rounding_noise(reference), 10**6, 2.5)
    row = result.to_dict()
    assert {"max_abs_diff", "max_rel_diff", "min_cosine", "ok"} <= set(row)
    assert row["max_rel_diff"] == pytest.approx(row["max_abs_diff"] / np.abs(reference).max())
    header, _, line = parity.format_table([result]).splitlines()
    assert "max|diff|" in header and "rel diff" in header
    assert line.startswith("tflite/fp32") and line.endswith("ok")


# -------------------------------------------------------------------------------------- parity batch


def test_parity_batch_generated_is_deterministic_and_lossless():
    a, b = parity.parity_batch(INPUT_SIZE, count=4), parity.parity_batch(INPUT_SIZE, count=4)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.pixels.shape == (4, *INPUT_SIZE, 3) and parity.min_pairwise_distance(a.pixels.reshape(4, -1)) > 0
    decoded = np.stack([tf.io.decode_png(data).numpy() for data in a.encoded]).astype(np.float32)
    np.testing.assert_array_equal(decoded, a.pixels)


def test_parity_batch_from_folder_skips_duplicate_files(tmp_path, mini_market_dir):
    files = sorted((mini_market_dir / "query").glob("*.jpg"))[:3]
    for i, path in enumerate(files):
        (tmp_path / f"{i}.jpg").write_bytes(path.read_bytes())
        (tmp_path / f"{i}_copy.jpg").write_bytes(path.read_bytes())
    batch = parity.parity_batch(INPUT_SIZE, tmp_path, count=3)
    assert len(batch.encoded) == 3 and len(set(batch.encoded)) == 3
    with pytest.raises(ValueError, match="3 distinct images"):
        parity.parity_batch(INPUT_SIZE, tmp_path, count=4)


# ------------------------------------------------------------------------------------- a real model


def large_embedding_model():
    """An MGN embedding model at 96x32 whose embeddings reach ~2e3: the reduction BatchNorms' moving
    variance (1e-4) is far below the variance of their inputs, as after a short or unstable training."""
    model = embedding_model(distinct_fresh_model(2, INPUT_SIZE, seed=0))
    for feature in FEATURE_NAMES:
        bn = model.get_layer(f"reduce_{feature}_bn")
        bn.moving_variance.assign(np.full(bn.moving_variance.shape, 1e-4, np.float32))
    return model


def test_large_embeddings_pass_when_exported_and_fail_with_one_changed_beta(tmp_path):
    """TFLite fp32 of a model with embeddings ~1e3 passes (its max |diff| > 1e-4 is float32 rounding);
    the Keras model with one BatchNorm beta changed fails, unbaked and with flip/normalisation."""
    from mgn_tf.export import saved_model, tflite_model
    from mgn_tf.inference import KerasEmbedder, load

    model = large_embedding_model()
    pixels = parity.parity_batch(INPUT_SIZE, count=8).pixels
    keras_embedder = KerasEmbedder(model, tmp_path / "keras")
    reference = keras_embedder.embed(pixels)
    baked_reference = keras_embedder.embed(pixels, flip=True, normalize=True)
    assert np.abs(reference).max() > 1e3

    sm_dir = saved_model.export_saved_model(model, tmp_path, "large", 1)
    info = {"input_height": INPUT_SIZE[0], "input_width": INPUT_SIZE[1], "flip_norm": False}
    tflite = tflite_model.export_tflite(sm_dir, tmp_path / "large_fp32.tflite", "fp32", info)
    result = parity.compare("tflite/fp32", "float32", reference, load(tflite).embed(pixels))
    assert result.ok, parity.format_table([result])
    assert result.max_abs_diff > FORMER_MAX_ABS_DIFF, "no float32 rounding to tell the bounds apart"

    # One channel of the first reduced feature, active (after its ReLU) for every image and its mirror, its
    # BatchNorm beta raised by delta: that entry moves by delta, the unit vectors' entry by <= 5e-5.
    unbaked_flipped = keras_embedder.embed(pixels[:, :, ::-1])
    active = np.minimum(reference, unbaked_flipped)[:, :REDUCTION_DIM].min(0)
    channel = int(active.argmax())
    flip_averaged = keras_embedder.embed(pixels, flip=True)
    delta = 5e-5 * float(np.linalg.norm(flip_averaged, axis=1).min())
    assert active[channel] > 10 * delta
    bn = model.get_layer(f"reduce_{FEATURE_NAMES[0]}_bn")
    beta = bn.beta.numpy()
    beta[channel] += delta  # added after the normalisation: the entry moves by delta
    bn.beta.assign(beta)
    broken = KerasEmbedder(model, tmp_path / "broken")
    unbaked = parity.compare("broken", "float32", reference, broken.embed(pixels))
    baked = parity.compare(
        "broken baked", "float32", baked_reference, broken.embed(pixels, flip=True, normalize=True)
    )
    np.testing.assert_allclose(unbaked.max_abs_diff, delta, rtol=1e-2)
    assert baked.max_abs_diff < FORMER_MAX_ABS_DIFF  # the absolute bound let it through
    for case in (unbaked, baked):
        assert not case.ok and "max rel diff" in case.failures[0], parity.format_table([case])
