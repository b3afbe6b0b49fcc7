"""Training augmentations, each a pure function of (seed, sample position): horizontal flip, zero padding
with a random crop, colour jitter and random erasing (Zhong et al. 2017, arXiv 1708.04896).

Images are float32 RGB 0..255 [H, W, 3], after decoding and resizing. Every draw uses TensorFlow's
stateless RNG seeded by the run's seed and the sample's position in the run, so a resumed run, and a
sample whose unreadable file was replaced, see exactly the augmentation an uninterrupted run would. Each
augmentation draws from its own stream (the (seed, position) pair folded with a per-augmentation salt),
so turning one on changes no other's draws; the flip draws from the pair itself, as before the others
existed, so a run with flip only is unchanged. Augmentations that are off add nothing to the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from mgn_tf.config import ERASING_FILLS
from mgn_tf.model import CAFFE_BGR_MEAN

MEAN_RGB = tuple(reversed(CAFFE_BGR_MEAN))  # the model subtracts it: erased pixels become 0 there
ERASING_ATTEMPTS = 100  # Zhong et al.'s Algorithm 1 tries up to 100 rectangles
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_SALT = {"crop": 1, "jitter": 2, "erasing": 3, "fill": 4}


@dataclass(frozen=True)
class Augmentation:
    """What to apply to each training sample (defaults: the paper's flip only).

    pad: zero-pad by `pad` pixels on every side, then crop back to the input size at a random offset.
    brightness / contrast / saturation: factors drawn uniformly in [max(0, 1 - b), 1 + b] (torchvision
    ColorJitter); hue: a shift drawn in [-hue, hue] of the hue circle. Applied in that order.
    erasing_probability: random erasing with this probability; the rectangle's area is a fraction of
    the image drawn in `erasing_area`, its aspect (height / width) drawn in `erasing_aspect` (used as
    given: Zhong et al. draw it in [r1, 1 / r1], which is (0.3, 3.33) for their r1 = 0.3); filled with
    the ImageNet mean pixel ("mean") or uniform noise 0..255 ("random").
    """

    flip: bool = True
    pad: int = 0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    erasing_probability: float = 0.0
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_aspect: tuple[float, float] = (0.3, 3.3)
    erasing_fill: str = "mean"

    def validate(self) -> Augmentation:
        """Raises ValueError naming the first invalid field; returns self."""

        def need(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ValueError(f"Augmentation.{field}={getattr(self, field)!r}: {message}")

        need(self.pad >= 0, "pad", "must be >= 0")
        for field in ("brightness", "contrast", "saturation"):
            need(getattr(self, field) >= 0, field, "must be >= 0")
        need(0 <= self.hue <= 0.5, "hue", "must be in [0, 0.5]")
        need(0 <= self.erasing_probability <= 1, "erasing_probability", "must be in [0, 1]")
        for field in ("erasing_area", "erasing_aspect"):
            lo, hi = getattr(self, field)
            need(0 < lo <= hi, field, "must be a range 0 < low <= high")
        need(self.erasing_area[1] <= 1, "erasing_area", "a fraction of the image: high <= 1")
        need(
            self.erasing_fill in ERASING_FILLS, "erasing_fill", f"accepted values: {', '.join(ERASING_FILLS)}"
        )
        return self

    @property
    def jitter(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation or self.hue)

    def enabled_names(self) -> list[str]:
        """The augmentations applied, in order (for logs)."""
        on = [("flip", self.flip), ("pad_crop", self.pad > 0), ("color_jitter", self.jitter)]
        on.append(("random_erasing", self.erasing_probability > 0))
        return [name for name, enabled in on if enabled]


def _seed(seed, position, salt: int) -> tf.Tensor:
    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
    return tf.random.experimental.stateless_fold_in(pair, salt)


def flip_coin(seed, position) -> tf.Tensor:
    """True where the sample is mirrored (the draw of runs before the other augmentations existed)."""
    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
    return tf.random.stateless_uniform([], seed=pair) < 0.5


def crop_offset(seed, position, pad: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(dy, dx) in [0, 2 * pad]: where the crop starts in the padded image."""
    offset = tf.random.stateless_uniform(
        [2], _seed(seed, position, _SALT["crop"]), minval=0, maxval=2 * pad + 1, dtype=tf.int32
    )
    return offset[0], offset[1]


def pad_crop(image: tf.Tensor, seed, position, pad: int) -> tf.Tensor:
    shape = tf.shape(image)
    dy, dx = crop_offset(seed, position, pad)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.slice(padded, tf.stack([dy, dx, 0]), shape)


def jitter_factors(seed, position, aug: Augmentation) -> tf.Tensor:
    """[brightness, contrast, saturation factors, hue shift] drawn for this sample."""
    u = tf.random.stateless_uniform([4], _seed(seed, position, _SALT["jitter"]))
    lows = tf.constant(
        [max(0.0, 1 - aug.brightness), max(0.0, 1 - aug.contrast), max(0.0, 1 - aug.saturation)]
    )
    highs = tf.constant([1 + aug.brightness, 1 + aug.contrast, 1 + aug.saturation])
    factors = lows + (highs - lows) * u[:3]
    return tf.concat([factors, [aug.hue * (2 * u[3] - 1)]], axis=0)


def grayscale(image: tf.Tensor) -> tf.Tensor:
    return tf.tensordot(image, tf.constant(GRAY_WEIGHTS, image.dtype), axes=[[2], [0]])


def color_jitter(image: tf.Tensor, seed, position, aug: Augmentation) -> tf.Tensor:
    """torchvision's ColorJitter on 0..255 images, in a fixed order; each result clipped to 0..255."""
    f = jitter_factors(seed, position, aug)
    x = image
    if aug.brightness:
        x = tf.clip_by_value(x * f[0], 0.0, 255.0)
    if aug.contrast:
        mean = tf.reduce_mean(grayscale(x))
        x = tf.clip_by_value(mean + f[1] * (x - mean), 0.0, 255.0)
    if aug.saturation:
        gray = grayscale(x)[..., None]
        x = tf.clip_by_value(gray + f[2] * (x - gray), 0.0, 255.0)
    if aug.hue:
        x = tf.clip_by_value(tf.image.adjust_hue(x / 255.0, f[3]) * 255.0, 0.0, 255.0)
    return x


def random_erasing_box(height, width, seed, position, aug: Augmentation) -> tuple[tf.Tensor, ...]:
    """(apply, y, x, h, w) of this sample's erased rectangle, int32 but `apply` (bool): the first of
    ERASING_ATTEMPTS drawn rectangles with h < height and w < width, at a uniform position; apply is
    False when the coin says no or no attempt fits."""
    n = ERASING_ATTEMPTS
    u = tf.random.stateless_uniform([1 + 4 * n], _seed(seed, position, _SALT["erasing"]), dtype=tf.float32)
    coin = u[0]
    area_u, aspect_u, y_u, x_u = (u[1 + i * n : 1 + (i + 1) * n] for i in range(4))
    size = tf.cast(height * width, tf.float32)
    area = (aug.erasing_area[0] + (aug.erasing_area[1] - aug.erasing_area[0]) * area_u) * size
    aspect = aug.erasing_aspect[0] + (aug.erasing_aspect[1] - aug.erasing_aspect[0]) * aspect_u
    h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    # Zhong et al. accept h < H and w < W; an empty rectangle (tiny images only) would erase nothing.
    fits = (h < height) & (w < width) & (h > 0) & (w > 0)
    # Every attempt is drawn at once and the first that fits taken: one graph, no loop. The smallest
    # fitting index, not argmax, whose choice among ties TensorFlow does not specify.
    first = tf.reduce_min(tf.where(fits, tf.range(n), n - 1))
    h, w = h[first], w[first]
    y = tf.cast(tf.floor(y_u[first] * tf.cast(height - h + 1, tf.float32)), tf.int32)
    x = tf.cast(tf.floor(x_u[first] * tf.cast(width - w + 1, tf.float32)), tf.int32)
    apply = (coin < aug.erasing_probability) & tf.reduce_any(fits)
    # u < 1, but u * (H - h + 1) can round up to H - h + 1 in float32.
    return apply, tf.minimum(y, height - h), tf.minimum(x, width - w), h, w


def random_erasing(image: tf.Tensor, seed, position, aug: Augmentation) -> tf.Tensor:
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    apply, y, x, h, w = random_erasing_box(height, width, seed, position, aug)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = apply & (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
    if aug.erasing_fill == "random":
        fill = tf.random.stateless_uniform(tf.shape(image), _seed(seed, position, _SALT["fill"]), 0.0, 255.0)
    else:
        fill = tf.broadcast_to(tf.constant(MEAN_RGB, image.dtype), tf.shape(image))
    return tf.where(inside[..., None], fill, image)


def augment(image: tf.Tensor, seed, position, aug: Augmentation) -> tf.Tensor:
    """flip -> pad and crop -> colour jitter -> random erasing (torchreid's order), the ones switched on."""
    if aug.flip:
        image = tf.cond(flip_coin(seed, position), lambda: tf.reverse(image, axis=[1]), lambda: image)
    if aug.pad:
        image = pad_crop(image, seed, position, aug.pad)
    if aug.jitter:
        image = color_jitter(image, seed, position, aug)
    if aug.erasing_probability:
        image = random_erasing(image, seed, position, aug)
    return image
