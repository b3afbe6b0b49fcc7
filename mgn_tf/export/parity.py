"""Parity of exported models against the Keras model on one fixed batch of images.

Bounds (checked by every export, the same with and without baked flip-averaging and normalisation):

  float32 artefacts: max |artefact - Keras| over max |Keras| at most `FLOAT32_MAX_REL_DIFF` (both maxima over
    the whole batch), and cosine similarity to Keras at least `FLOAT32_MIN_COSINE` for every image;
  float16 and int8 (dynamic-range) artefacts: cosine similarity at least `REDUCED_MIN_COSINE` for every
    image;
  static int8 artefacts: cosine similarity at least `STATIC_INT8_MIN_COSINE` for every image. This only
    catches a broken artefact: quantized activations move embeddings by more than a fixed cosine can
    judge, so what decides whether a static int8 model is good enough is its retrieval accuracy on a
    labelled split (`mgn_tf.export.accuracy`).

The float32 bound is relative to the embeddings' scale because float32 rounding is: a correct export of a
model whose embeddings are in the thousands differs from Keras by ~1e-3, while on unit vectors (entries
~0.02) an error of 1e-4 is a real one, so no absolute bound fits both.

Every artefact must also keep different images apart: its smallest pairwise distance between embeddings must
be at least `MIN_SPREAD_RATIO` of Keras's (an export that ignores its input, e.g. lost weights giving a
constant output, can still be "close" in cosine to embeddings that are all alike).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from mgn_tf.files import IMAGE_EXTENSIONS, image_files
from mgn_tf.images import load_images

FLOAT32_MAX_REL_DIFF = 1e-4
FLOAT32_MIN_COSINE = 1 - 1e-6
REDUCED_MIN_COSINE = 0.999
STATIC_INT8_MIN_COSINE = 0.95
MIN_SPREAD_RATIO = 0.5
MIN_REFERENCE_SPREAD = 1e-6


@dataclass
class ParityBatch:
    """Images for the parity check: float32 pixels [N, H, W, 3] and their encoded bytes (same pixels);
    for images read from a folder, also the folder and the files (the boxmot profile's reference file
    names them so that a check without TensorFlow can read the same images)."""

    pixels: np.ndarray
    encoded: list[bytes]
    source: str
    root: Path | None = None
    files: list[Path] | None = None


def parity_batch(size: tuple[int, int], image_dir: str | Path | None = None, count: int = 8, seed: int = 0):
    """A fixed batch of `count` distinct images at `size` (height, width).

    From `image_dir` (searched recursively; the first `count` files with distinct content in sorted path
    order), else generated: seeded smooth colour fields with noise, PNG-encoded (lossless).
    """
    if count < 2:
        raise ValueError(f"the parity batch needs at least 2 images, got count={count}")
    if image_dir is None:
        return _generated_batch(size, count, seed)
    files = image_files(image_dir)
    chosen, encoded, seen = [], [], set()
    for path in files:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            chosen.append(path)
            encoded.append(data)
        if len(chosen) == count:
            break
    if len(chosen) < count:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"{image_dir} holds {len(chosen)} distinct images ({kinds}); need {count}")
    source = f"{len(chosen)} images from {image_dir}"
    return ParityBatch(load_images(chosen, size), encoded, source, Path(image_dir), chosen)


def _generated_batch(size: tuple[int, int], count: int, seed: int) -> ParityBatch:
    rng = np.random.default_rng(seed)
    height, width = size
    coarse = rng.uniform(0, 255, (count, 6, 3, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, (height, width), method="bilinear").numpy()
    noise = rng.normal(0, 12, (count, height, width, 3))
    pixels = np.clip(np.round(smooth + noise), 0, 255).astype(np.uint8)
    encoded = [tf.io.encode_png(image).numpy() for image in pixels]
    return ParityBatch(pixels.astype(np.float32), encoded, f"{count} generated images (seed {seed})")


def min_pairwise_distance(embeddings: np.ndarray) -> float:
    """The smallest Euclidean distance between two rows, relative to the mean row norm."""
    x = embeddings.astype(np.float64)
    squared = (x * x).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0.0))
    distances[np.diag_indices(len(x))] = np.inf
    return float(distances.min() / max(np.sqrt(squared).mean(), 1e-30))


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return (a * b).sum(1) / norms


@dataclass
class ParityResult:
    """One artefact (or signature) compared with Keras."""

    name: str
    precision: str  # "float32", "float16", "int8" (dynamic-range) or "int8 static"
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff over max |Keras embedding|
    min_cosine: float
    spread_ratio: float
    size_bytes: int | None = None
    images_per_s: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(
    name: str,
    precision: str,
    reference: np.ndarray,
    outputs: np.ndarray,
    size_bytes: int | None = None,
    images_per_s: float | None = None,
) -> ParityResult:
    """Checks `outputs` of an artefact against the Keras `reference` embeddings of the same images."""
    if outputs.shape != reference.shape:
        return ParityResult(
            name,
            precision,
            np.inf,
            np.inf,
            -1.0,
            0.0,
            size_bytes,
            images_per_s,
            [f"output shape {outputs.shape} != Keras {reference.shape}"],
        )
    failures = []
    max_abs = float(np.abs(outputs.astype(np.float64) - reference).max())
    scale = float(np.abs(reference).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    min_cos = float(cosine_similarities(outputs, reference).min())
    reference_spread = min_pairwise_distance(reference)
    spread_ratio = min_pairwise_distance(outputs) / max(reference_spread, 1e-30)
    if not np.isfinite(outputs).all():
        failures.append("non-finite outputs")
    if precision == "float32":
        if not max_rel <= FLOAT32_MAX_REL_DIFF:
            failures.append(
                f"max rel diff {max_rel:.3g} > {FLOAT32_MAX_REL_DIFF:g} (max |diff| {max_abs:.3g} over "
                f"max |Keras| {scale:.3g})"
            )
        if not min_cos >= FLOAT32_MIN_COSINE:
            failures.append(f"min cosine {min_cos:.9f} < {FLOAT32_MIN_COSINE:.9f}")
    else:
        bound = STATIC_INT8_MIN_COSINE if precision == "int8 static" else REDUCED_MIN_COSINE
        if not min_cos >= bound:
            failures.append(f"min cosine {min_cos:.6f} < {bound}")
    if reference_spread < MIN_REFERENCE_SPREAD:
        failures.append("the Keras embeddings of different parity images are (nearly) identical")
    elif not spread_ratio >= MIN_SPREAD_RATIO:
        failures.append(
            f"different images give (nearly) identical embeddings: pairwise spread {spread_ratio:.3g}× "
            f"Keras's (< {MIN_SPREAD_RATIO})"
        )
    return ParityResult(
        name, precision, max_abs, max_rel, min_cos, spread_ratio, size_bytes, images_per_s, failures
    )


def images_per_second(
    run: Callable[[np.ndarray], object], batch: np.ndarray, min_seconds: float = 1.0
) -> float:
    """Throughput of `run(batch)` after one warm-up call: repeats until `min_seconds` have passed."""
    run(batch)
    calls, start = 0, time.perf_counter()
    while True:
        run(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * len(batch) / elapsed


def format_table(results: Sequence[ParityResult]) -> str:
    """A fixed-width text table of parity results (rel diff: max |diff| over max |Keras embedding|)."""
    header = (
        f"{'artefact':36s} {'precision':11s} {'max|diff|':>10s} {'rel diff':>9s} {'min cos':>10s} "
        f"{'spread':>7s} {'size MB':>8s} {'img/s':>7s}  status"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        size = f"{r.size_bytes / 1e6:8.1f}" if r.size_bytes is not None else f"{'-':>8s}"
        speed = f"{r.images_per_s:7.2f}" if r.images_per_s is not None else f"{'-':>7s}"
        status = "ok" if r.ok else "FAIL: " + "; ".join(r.failures)
        lines.append(
            f"{r.name:36s} {r.precision:11s} {r.max_abs_diff:10.3g} {r.max_rel_diff:9.2g} "
            f"{r.min_cosine:10.7f} {r.spread_ratio:7.3f} {size} {speed}  {status}"
        )
    return "\n".join(lines)
