"""One inference API over every format MGN is trained or exported in.

    embedder = load("runs/market")                 # run directory, checkpoint folder or any *.weights.h5
    embedder = load("exported/mgn/1")              # SavedModel (TF Serving layout, base or version dir)
    embedder = load("exported/mgn_fp16.tflite")    # TFLite (ai-edge-litert)
    embedder = load("exported/mgn.onnx")           # ONNX (onnxruntime)
    features = embedder.embed(["a.jpg", "b.png"])  # or a uint8/float array [N, H, W, 3], RGB 0..255

Every embedder returns float32 [N, 2048] embeddings of raw RGB 0..255 images: preprocessing is part of
the model. File paths are read and decoded in parallel by `mgn_tf.images` at the model's input size;
arrays must already have that size (they are never resized silently). This is the only place that runs a
model for embeddings: evaluation, training's final evaluation and the export parity check all use it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mgn_tf.artifacts import (
    EMBED_SIGNATURE,
    EXPORT_INFO_NAME,
    OUTPUT_KEY,
    detect_format,
    find_run_files,
    find_saved_model,
    read_export_info,
)
from mgn_tf.errors import summary
from mgn_tf.evaluation.metrics import l2_normalize
from mgn_tf.geometry import InputSize, check_input_size


class InputSizeError(ValueError):
    """An exported model was asked to run at another input size than the one it was exported for."""

    def __init__(self, path: Path, exported: InputSize, requested: InputSize):
        self.exported, self.requested = exported, requested
        super().__init__(
            f"{path} was exported for {exported[0]}x{exported[1]} images, not {requested[0]}x{requested[1]}; "
            "re-export at that size or leave the input size to the artefact"
        )


class Embedder:
    """Embeds images with one loaded model; subclasses implement `_run` on a float32 batch.

    Attributes:
      format: one of `mgn_tf.artifacts.MODEL_FORMATS` ("keras", "savedmodel", "tflite", "onnx").
      input_size: (height, width) the model takes.
      flip_norm: whether `embed` returns flip-averaged, L2-normalised embeddings by default (done by the
        artefact itself when it was exported with --bake_flip_norm, else on the host when
        `load(..., flip_norm=True)`).
      baked_flip_norm: whether the artefact flip-averages and normalises inside (cannot be undone).
      path: what was loaded. load_seconds: how long `load` took (None when built directly).
    """

    format: str = ""

    def __init__(self, path: Path, input_size: Sequence[int], baked_flip_norm: bool, flip_norm: bool):
        self.path = path
        self.input_size: InputSize = (int(input_size[0]), int(input_size[1]))
        self.baked_flip_norm = baked_flip_norm
        self.flip_norm = baked_flip_norm or flip_norm
        self.load_seconds: float | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(format={self.format!r}, path='{self.path}', "
            f"input_size={self.input_size}, flip_norm={self.flip_norm})"
        )

    def embed(
        self,
        images: Sequence[str | os.PathLike] | np.ndarray,
        batch_size: int = 32,
        *,
        flip: bool | None = None,
        normalize: bool | None = None,
        progress: bool = False,
        description: str = "embedding",
    ) -> np.ndarray:
        """Embeds a list of image files or an array [N, H, W, 3] (uint8 or float, RGB 0..255).

        Returns float32 [N, 2048]. `flip`: average each image's embedding with its mirror image's (paper
        §4.1); `normalize`: L2-normalise the result; both default to `self.flip_norm` and are done on the
        host unless the artefact already does them. `progress` shows a progress bar. Raises ValueError
        for an input of the wrong kind, rank, size, channel count, dtype or value range, and
        mgn_tf.images.ImageReadError (a ValueError) naming an unreadable file.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        flip = self.flip_norm if flip is None else flip
        normalize = self.flip_norm if normalize is None else normalize
        if self.baked_flip_norm:  # the artefact did both already
            flip = normalize = False
        if isinstance(images, (str, bytes, os.PathLike)):
            raise ValueError(f"pass a list of image paths, not a single path ({images!r}): e.g. [{images!r}]")
        is_path = [isinstance(p, (str, os.PathLike)) for p in images] if isinstance(images, Sequence) else []
        if is_path and all(is_path):
            return self._embed_files(list(images), batch_size, flip, normalize, progress, description)
        if any(is_path):
            raise ValueError("a list of images must hold only file paths (str or pathlib.Path)")
        array = check_array(np.asarray(images), self.input_size)
        outputs = []
        with tqdm(total=len(array), desc=description, unit="img", disable=not progress) as bar:
            for i in range(0, len(array), batch_size):
                outputs.append(
                    self._embed_batch(array[i : i + batch_size].astype(np.float32), flip, normalize)
                )
                bar.update(len(outputs[-1]))
        return self._stack(outputs)

    def _embed_files(self, paths, batch_size, flip, normalize, progress, description) -> np.ndarray:
        import tensorflow as tf

        from mgn_tf.images import find_unreadable, image_batches

        outputs = []
        try:
            with tqdm(total=len(paths), desc=description, unit="img", disable=not progress) as bar:
                for batch in image_batches(paths, self.input_size, batch_size):
                    outputs.append(self._embed_batch(batch.numpy(), flip, normalize))
                    bar.update(len(outputs[-1]))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:  # which file? find it
            raise find_unreadable(paths, self.input_size) or exc from exc
        return self._stack(outputs)

    def _stack(self, outputs: list[np.ndarray]) -> np.ndarray:
        if not outputs:
            return np.zeros((0, self._output_dim()), np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def _embed_batch(self, batch: np.ndarray, flip: bool, normalize: bool) -> np.ndarray:
        features = np.asarray(self._run(batch), np.float32)
        if flip:
            mirrored = np.asarray(self._run(np.ascontiguousarray(batch[:, :, ::-1])), np.float32)
            features = (features + mirrored) / 2
        return l2_normalize(features) if normalize else features

    def expect(self, num_runs: int) -> None:
        """Told that about `num_runs` images (flipped copies counted) are coming, in one or many calls:
        an embedder with a fixed start-up cost that pays off only over many images may pay it now."""

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _output_dim(self) -> int:
        return int(self._run(np.zeros((1, *self.input_size, 3), np.float32)).shape[1])


def check_array(array: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Validates an image batch [N, H, W, 3] of RGB 0..255 at `input_size`; returns it unchanged."""
    height, width = input_size
    if array.dtype.kind not in "uif":
        raise ValueError(
            f"images must be a numeric (uint8 or float) array of RGB 0..255, got dtype {array.dtype}"
        )
    if array.ndim != 4:
        hint = " (a single image? pass images[None])" if array.ndim == 3 else ""
        raise ValueError(
            f"images must be a batch [N, {height}, {width}, 3], got an array of rank {array.ndim} with shape "
            f"{array.shape}{hint}"
        )
    if array.shape[3] != 3:
        raise ValueError(f"images must have 3 (RGB) channels, got {array.shape[3]} (shape {array.shape})")
    if tuple(array.shape[1:3]) != (height, width):
        raise ValueError(
            f"images must be {height}x{width} (height x width) for this model, got {array.shape[1]}x"
            f"{array.shape[2]}; resize them first (image files passed by path are resized automatically)"
        )
    if array.size:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError("images contain NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 255.0:
            raise ValueError(
                f"image values must be raw RGB in 0..255 (preprocessing is inside the model), got "
                f"{low:.4g}..{high:.4g}"
            )
    return array


# ----------------------------------------------------------------------------------------------- keras


class WeightsError(ValueError):
    """A weights file that is not the weights of the MGN its run's config.json describes (one line)."""


def load_training_model(path: str | os.PathLike, input_size: Sequence[int] | None = None):
    """Rebuilds the `build_mgn` model of a training run and loads its weights.

    `path`: anything `mgn_tf.artifacts.find_run_files` takes (run directory, checkpoint folder, weights
    file). `input_size` (height, width) overrides the trained size (the weights do not depend on it).
    Returns (keras.Model, mgn_tf.artifacts.RunFiles). Raises WeightsError when the file holds other
    weights; Keras's per-layer warnings before such a failure are dropped, a load that works keeps them.
    """
    import warnings

    from mgn_tf.model import build_mgn

    run = find_run_files(path)
    size = check_input_size(input_size or run.input_size)
    model = build_mgn(run.num_classes, size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            if run.trainer_checkpoint:  # the training wrapper's weights: load them through one
                from mgn_tf.trainer import MGNTrainer

                MGNTrainer(model).load_weights(run.weights)
            else:
                model.load_weights(run.weights)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # h5py raises OSError/KeyError for a damaged file or a missing group, Keras ValueError or
            # TypeError for weights of another model.
            raise WeightsError(
                f"cannot load {run.weights} as the weights of an MGN with {run.num_classes} classes "
                f"({run.config_path}): {summary(exc)}"
            ) from exc
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return model, run


class KerasEmbedder(Embedder):
    """A `build_mgn` model (or its embedding model) in this process, as one compiled function.

    Frozen, the function runs on a snapshot of the weights as graph constants, which lets TensorFlow's
    graph optimizer fold every inference BatchNorm into its convolution and fuse convolution, bias and
    ReLU into one kernel; on variables it can do neither and runs markedly slower. Freezing costs a
    fixed time (converting the graph, optimising it on the first call) that only pays off over a few
    thousand images, so `frozen=None` (default) freezes once one `embed` call, or the count announced
    with `expect`, has at least `FREEZE_MIN_IMAGES` images to run (flipped copies counted). A frozen
    embedder does not see weights changed later (build a new one). `frozen=False` always runs on the
    variables, exactly as Keras does (the export's parity reference); `frozen=True` freezes at once.
    """

    format = "keras"
    FREEZE_MIN_IMAGES = 2000

    def __init__(self, model, path: Path, flip_norm: bool = False, frozen: bool | None = None):
        import tensorflow as tf

        from mgn_tf.model import embedding_model

        super().__init__(path, model.input_shape[1:3], False, flip_norm)
        self.model = embedding_model(model) if isinstance(model.output, dict) else model
        self._freeze_allowed = frozen is not False
        spec = tf.TensorSpec([None, *self.input_size, 3], tf.float32)
        self._function = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        self._fn = self._function
        self.frozen = False
        if frozen:
            self.freeze()

    def freeze(self) -> None:
        """From now on, run on a snapshot of the current weights as constants."""
        if self.frozen:
            return
        import tensorflow as tf

        # TensorFlow's way to freeze a function (what the TFLite and ONNX converters use); not exported.
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        constant = convert_variables_to_constants_v2(self._function.get_concrete_function())
        self._fn = lambda batch: tf.nest.flatten(constant(tf.constant(batch)))[0]
        self.frozen = True

    def expect(self, num_runs: int) -> None:
        if self._freeze_allowed and num_runs >= self.FREEZE_MIN_IMAGES:
            self.freeze()

    def embed(self, images, batch_size: int = 32, **kwargs) -> np.ndarray:
        flip = self.flip_norm if kwargs.get("flip") is None else kwargs["flip"]
        self.expect(len(images) * (2 if flip else 1))
        return super().embed(images, batch_size, **kwargs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch).numpy()


# ------------------------------------------------------------------------------------------ savedmodel


class SavedModelEmbedder(Embedder):
    """A SavedModel's `embed` signature (float32 [N, H, W, 3] -> {"embedding": [N, D]})."""

    format = "savedmodel"

    def __init__(self, path: Path, flip_norm: bool = False):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(str(path))
        if EMBED_SIGNATURE not in self.loaded.signatures:
            raise ValueError(
                f"SavedModel {path} has no {EMBED_SIGNATURE!r} signature "
                f"(it has {sorted(self.loaded.signatures)})"
            )
        self._fn = self.loaded.signatures[EMBED_SIGNATURE]
        (spec,) = self._fn.structured_input_signature[1].values()
        self._input_name = spec.name
        baked = bool(read_export_info(path).get("flip_norm", False))
        super().__init__(path, tuple(spec.shape[1:3]), baked, flip_norm)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(**{self._input_name: batch})[OUTPUT_KEY].numpy()


# ---------------------------------------------------------------------------------------------- tflite


class TFLiteEmbedder(Embedder):
    """A .tflite model run with ai-edge-litert; a dynamic batch is resized, a fixed one padded."""

    format = "tflite"

    def __init__(self, path: Path, flip_norm: bool = False, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count())
        (self._input,) = self.interpreter.get_input_details()
        (self._output,) = self.interpreter.get_output_details()
        signature = self._input.get("shape_signature", self._input["shape"])
        self._dynamic = int(signature[0]) == -1
        self._batch = int(self._input["shape"][0])
        self.interpreter.allocate_tensors()
        baked = bool(read_export_info(path).get("flip_norm", False))
        super().__init__(path, tuple(int(d) for d in self._input["shape"][1:3]), baked, flip_norm)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if self._dynamic and n != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [n, *self.input_size, 3], strict=True)
            self.interpreter.allocate_tensors()
            self._batch = n
        if self._dynamic:
            return self._invoke(batch)
        chunks = []
        for i in range(0, n, self._batch):
            chunk = batch[i : i + self._batch]
            padded = np.zeros((self._batch, *chunk.shape[1:]), np.float32)
            padded[: len(chunk)] = chunk
            chunks.append(self._invoke(padded)[: len(chunk)])
        return np.concatenate(chunks)

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._input["index"], np.ascontiguousarray(batch, np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"]).copy()


# ------------------------------------------------------------------------------------------------ onnx


class OnnxEmbedder(Embedder):
    """An .onnx model run with onnxruntime (CPU)."""

    format = "onnx"

    def __init__(self, path: Path, flip_norm: bool = False):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (model_input,) = self.session.get_inputs()
        self._input_name = model_input.name
        self._output_name = self.session.get_outputs()[0].name
        height, width = model_input.shape[1:3]
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(
                f"{path}: input {model_input.name} has no fixed height/width ({model_input.shape})"
            )
        meta = self.session.get_modelmeta().custom_metadata_map
        baked = json.loads(meta.get(EXPORT_INFO_NAME, "{}")).get("flip_norm", False)
        super().__init__(path, (height, width), bool(baked), flip_norm)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self._output_name], {self._input_name: batch})[0]


# ------------------------------------------------------------------------------------------------ load


def load(
    path: str | os.PathLike, input_size: Sequence[int] | None = None, flip_norm: bool = False
) -> Embedder:
    """Loads a training run or an exported model for embedding; the format follows from `path`.

    Args:
      path: a run directory, a checkpoint folder `checkpoints/step_N/` or any `*.weights.h5` of a run (its
        config.json is found beside or above it), a SavedModel directory (TF Serving base dir
        `<base>/<name>/`, `<base>/<name>/<version>/` or any SavedModel dir; the `embed` signature is
        used), a `.tflite` or an `.onnx` file.
      input_size: (height, width). For Keras weights it rebuilds the model at that size; for an exported
        model it must equal the exported size (InputSizeError otherwise). None: the trained/exported size.
      flip_norm: return flip-averaged, L2-normalised embeddings by default. Computed on the host (two
        passes) unless the artefact already does it (exported with --bake_flip_norm).
    """
    started = time.perf_counter()
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "keras":
        model, _ = load_training_model(path, input_size)
        embedder: Embedder = KerasEmbedder(model, path, flip_norm)
    elif fmt == "savedmodel":
        embedder = SavedModelEmbedder(find_saved_model(path), flip_norm)
    elif fmt == "tflite":
        embedder = TFLiteEmbedder(path, flip_norm)
    else:
        embedder = OnnxEmbedder(path, flip_norm)
    if input_size is not None and tuple(int(d) for d in input_size) != embedder.input_size:
        raise InputSizeError(path, embedder.input_size, (int(input_size[0]), int(input_size[1])))
    embedder.load_seconds = round(time.perf_counter() - started, 3)
    return embedder
