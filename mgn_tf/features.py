"""Feature extraction for evaluation: batched, with a progress bar, averaging each image with its flip."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from mgn_tf.images import decode_and_resize


def image_batches(paths: Sequence[str], size: tuple[int, int], batch_size: int) -> tf.data.Dataset:
    """float32 [B, H, W, 3] RGB 0..255 batches of `paths`, in order, decoded in parallel."""

    def load(path):
        return decode_and_resize(tf.io.read_file(path), size)

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=object).astype(str))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def extract_features(
    embed: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[str],
    size: tuple[int, int],
    batch_size: int = 64,
    flip: bool = True,
    description: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """[N, D] float32 features of `paths`; with `flip`, the mean of image and mirrored-image features
    (paper §4.1). `embed` maps float32 [B, H, W, 3] RGB 0..255 to [B, D]."""
    features = []
    with tqdm(total=len(paths), desc=description, unit="img", disable=not progress) as bar:
        for batch in image_batches(paths, size, batch_size):
            batch = batch.numpy()
            out = np.asarray(embed(batch), np.float32)
            if flip:
                out = (out + np.asarray(embed(batch[:, :, ::-1]), np.float32)) / 2.0
            features.append(out)
            bar.update(len(batch))
    if not features:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(features)


def l2_normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), eps)
