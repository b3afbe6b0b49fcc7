"""Image decoding and resizing shared by training, evaluation, inference and export.

Every path that turns encoded image bytes into network input goes through `decode_and_resize`, so the
training pipeline, the SavedModel's image-bytes signature, `image_batches` and `load_images` feed the
model identical numbers: RGB float32 in 0..255, bilinear resize (no antialias) to (height, width).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf


class ImageReadError(ValueError):
    """An image file that cannot be read or decoded; the message names the file."""


def decode_and_resize(image_bytes: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF bytes to RGB and resizes to `size` (height, width): float32 0..255.

    Grayscale and RGBA images are converted to 3 channels. Works eagerly and inside tf.function.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return _resize(image, size)


def _resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)
    return tf.clip_by_value(image, 0.0, 255.0)


def resize_pixels(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decoded RGB pixels [h, w, 3] (a crop of a video frame) resized exactly as `decode_and_resize`
    resizes image files, so a crop saved as PNG and read back embeds to the same numbers."""
    return _resize(tf.constant(pixels), size).numpy()


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Reads one image file as float32 [height, width, 3] RGB 0..255; raises ImageReadError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    if not data:
        raise ImageReadError(f"image file {path} is empty (0 bytes)")
    try:
        return decode_and_resize(tf.constant(data), size).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"cannot decode image file {path}: {message}") from exc


def image_batches(paths: Sequence[str | Path], size: tuple[int, int], batch_size: int) -> tf.data.Dataset:
    """float32 [B, H, W, 3] RGB 0..255 batches of `paths`, in order, read and decoded in parallel.

    A file that cannot be decoded fails the iteration with a tf.errors.InvalidArgumentError that does
    not name it; `find_unreadable` does.
    """

    def load(path):
        return decode_and_resize(tf.io.read_file(path), size)

    names = np.array([str(p) for p in paths], dtype=str) if len(paths) else np.zeros([0], dtype=str)
    dataset = tf.data.Dataset.from_tensor_slices(names)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def unreadable(paths: Sequence[str | Path], size: tuple[int, int]) -> list[tuple[str | Path, ImageReadError]]:
    """(path, ImageReadError naming it) of each file of `paths` that `load_image` cannot read or decode."""
    bad = []
    for path in paths:
        try:
            load_image(path, size)
        except ImageReadError as exc:
            bad.append((path, exc))
    return bad


def find_unreadable(paths: Sequence[str | Path], size: tuple[int, int]) -> ImageReadError | None:
    """An ImageReadError naming the first file `load_image` cannot decode (None if all can)."""
    bad = unreadable(paths, size)
    if not bad:
        return None
    more = f" (and {len(bad) - 1} more unreadable image(s))" if len(bad) > 1 else ""
    return ImageReadError(f"{bad[0][1]}{more}")


def load_images(paths: Sequence[str | Path], size: tuple[int, int]) -> np.ndarray:
    """Reads image files as one float32 batch [N, height, width, 3] RGB 0..255."""
    batch = np.empty((len(paths), size[0], size[1], 3), np.float32)
    for i, path in enumerate(paths):
        batch[i] = load_image(path, size)
    return batch
