"""SavedModel export in TF Serving's layout `<out>/<model_name>/<version>/`, and its session-loader check.

The module saved is a plain `tf.Module` that tracks the embedding model's raw `tf.Variable`s (not the Keras
model) and two `tf.function` signatures that close over the model:

  serving_default: images tf.string [N] (encoded JPEG/PNG/BMP/GIF) -> {"embedding": float32 [N, D]}
                   decoded and resized in the graph by mgn_tf.images.decode_and_resize, as in training;
  embed:           images float32 [N, H, W, 3] RGB 0..255      -> {"embedding": float32 [N, D]}.

Tracking the raw variables (instead of the Keras model) stores every weight once, and gives a SavedModel the
session-based loader of `saved_model_cli run` and TF Serving can restore; `keras.Model.export` stores them
twice (keras-team/keras#23553).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mgn_tf.artifacts import EMBED_SIGNATURE, INPUT_KEY, OUTPUT_KEY, SERVING_SIGNATURE, export_info_path
from mgn_tf.files import atomic_write_json
from mgn_tf.images import decode_and_resize


def flip_norm_embedding(model: keras.Model, images: tf.Tensor) -> tf.Tensor:
    """L2-normalised mean of the embeddings of `images` and their horizontal mirror (one 2N pass)."""
    n = tf.shape(images)[0]
    features = model(tf.concat([images, tf.reverse(images, axis=[2])], axis=0), training=False)
    return tf.math.l2_normalize((features[:n] + features[n:]) / 2.0, axis=1, epsilon=1e-24)


class EmbeddingModule(tf.Module):
    """The exportable embedding model: raw variables plus the `embed` and `serving_default` functions."""

    def __init__(self, model: keras.Model, flip_norm: bool = False):
        super().__init__(name="mgn_embedding")
        height, width = (int(d) for d in model.input_shape[1:3])
        # The raw tf.Variables behind the Keras variables: the only tracked state, saved once.
        self.vars = [v.value for v in model.variables]

        def forward(images: tf.Tensor) -> dict[str, tf.Tensor]:
            features = flip_norm_embedding(model, images) if flip_norm else model(images, training=False)
            return {OUTPUT_KEY: tf.identity(features, name=OUTPUT_KEY)}

        def decode(image_bytes: tf.Tensor) -> tf.Tensor:
            return tf.map_fn(
                lambda data: decode_and_resize(data, (height, width)),
                image_bytes,
                fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
            )

        self.embed = tf.function(
            forward, input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=INPUT_KEY)]
        )
        self.serve_bytes = tf.function(
            lambda images: forward(decode(images)),
            input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)],
        )

    def signatures(self) -> dict[str, object]:
        return {SERVING_SIGNATURE: self.serve_bytes, EMBED_SIGNATURE: self.embed}


def export_saved_model(
    model: keras.Model,
    out_dir: str | Path,
    model_name: str = "mgn",
    version: int = 1,
    flip_norm: bool = False,
    info: dict | None = None,
) -> Path:
    """Saves `model` (the embedding model) to `<out_dir>/<model_name>/<version>/`; returns that directory.

    `info` (JSON-serialisable) is written to `assets.extra/mgn_export.json`, which TF Serving ignores and
    `mgn_tf.inference` reads (e.g. whether flip-averaging and L2 normalisation are baked in).
    """
    target = Path(out_dir) / model_name / str(int(version))
    if target.exists():
        shutil.rmtree(target)
    module = EmbeddingModule(model, flip_norm)
    tf.saved_model.save(module, str(target), signatures=module.signatures())
    info_path = export_info_path(target)
    info_path.parent.mkdir(exist_ok=True)
    atomic_write_json(info_path, {**(info or {}), "flip_norm": flip_norm})
    return target


def directory_size(path: str | Path) -> int:
    """Total bytes of the files under `path` (or of the file itself; an OpenVINO .xml with its .bin)."""
    path = Path(path)
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        return path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def saved_model_cli(*args: str, timeout: float = 600) -> str:
    """Runs `saved_model_cli` (the venv's) in a subprocess; returns stdout, raises RuntimeError on failure."""
    command = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"saved_model_cli {' '.join(args[:1])} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def run_with_session_loader(saved_model_dir: str | Path, signature: str, inputs: np.ndarray) -> np.ndarray:
    """Runs one signature with `saved_model_cli run`: TF1's session-based loader, the one TF Serving uses.

    `inputs` is the value of the signature's single input "images" (float32 images or an object array of
    encoded bytes). Returns the "embedding" output.
    """
    with tempfile.TemporaryDirectory(prefix="mgn_smcli_") as tmp:
        np.save(Path(tmp) / "inputs.npy", inputs, allow_pickle=inputs.dtype == object)
        saved_model_cli(
            "run",
            "--dir",
            str(saved_model_dir),
            "--tag_set",
            "serve",
            "--signature_def",
            signature,
            "--inputs",
            f"{INPUT_KEY}={Path(tmp) / 'inputs.npy'}",
            "--outdir",
            str(Path(tmp) / "out"),
        )
        return np.load(Path(tmp) / "out" / f"{OUTPUT_KEY}.npy")
