"""One inference API over every format MGN is trained or exported in.

    embedder = load("runs/market")                 # run directory, or any *.weights.h5 in it
    embedder = load("export/mgn/1")                # SavedModel (TF Serving layout, base or version dir)
    embedder = load("export/mgn_fp16.tflite")      # TFLite (ai-edge-litert)
    embedder = load("export/mgn.onnx")             # ONNX (onnxruntime)
    features = embedder.embed(["a.jpg", "b.png"])  # or a uint8/float array [N, H, W, 3], RGB 0..255

Every embedder returns float32 [N, 2048] embeddings of raw RGB 0..255 images: preprocessing is part of
the model. File paths are decoded and resized with `mgn_tf.images` at the model's input size; arrays must
already have that size (they are never resized silently).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mgn_tf.images import load_images

FORMATS: tuple[str, ...] = ("keras", "savedmodel", "tflite", "onnx")
CONFIG_NAME = "config.json"
FINAL_WEIGHTS = "final.weights.h5"
# Written by the exporter: SavedModel `assets.extra/<name>`, `<file>.json` beside TFLite, ONNX metadata_props.
EXPORT_INFO_NAME = "mgn_export.json"
EMBED_SIGNATURE = "embed"
OUTPUT_KEY = "embedding"


class Embedder:
    """Embeds images with one loaded model; subclasses implement `_run` on a float32 batch.

    Attributes:
      format: one of FORMATS ("keras", "savedmodel", "tflite", "onnx").
      input_size: (height, width) the model takes.
      flip_norm: whether embeddings are flip-averaged and L2-normalised (by the artefact itself when it
        was exported with --bake_flip_norm, else on the host when `load(..., flip_norm=True)`).
      path: what was loaded.
    """

    format: str = ""

    def __init__(self, path: Path, input_size: tuple[int, int], baked_flip_norm: bool, flip_norm: bool):
        self.path = path
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.baked_flip_norm = baked_flip_norm
        self._host_flip_norm = flip_norm and not baked_flip_norm
        self.flip_norm = baked_flip_norm or flip_norm

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(format={self.format!r}, path='{self.path}', "
            f"input_size={self.input_size}, flip_norm={self.flip_norm})"
        )

    def embed(self, images: Sequence[str | os.PathLike] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Embeds a list of image files or an array [N, H, W, 3] (uint8 or float, RGB 0..255).

        Returns float32 [N, 2048]. Files are decoded and arrays converted one batch at a time. Raises
        ValueError for an input of the wrong kind, rank, size, channel count, dtype or value range, and
        mgn_tf.images.ImageReadError (a ValueError) naming an unreadable file.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(images, (str, bytes, os.PathLike)):
            raise ValueError(f"pass a list of image paths, not a single path ({images!r}): e.g. [{images!r}]")
        if isinstance(images, Sequence) and all(isinstance(p, (str, os.PathLike)) for p in images):
            paths = list(images)
            batches = (
                load_images(paths[i : i + batch_size], self.input_size)
                for i in range(0, len(paths), batch_size)
            )
        else:
            if isinstance(images, Sequence) and any(isinstance(p, (str, os.PathLike)) for p in images):
                raise ValueError("a list of images must hold only file paths (str or pathlib.Path)")
            array = check_array(np.asarray(images), self.input_size)
            batches = (array[i : i + batch_size].astype(np.float32) for i in range(0, len(array), batch_size))
        outputs = [self._embed_batch(batch) for batch in batches]
        if not outputs:
            return np.zeros((0, self._output_dim()), np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        if not self._host_flip_norm:
            return self._run(batch)
        features = (self._run(batch) + self._run(np.ascontiguousarray(batch[:, :, ::-1]))) / 2
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

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


def find_run_files(path: str | os.PathLike) -> tuple[Path, dict]:
    """Resolves a run directory or a `*.weights.h5` file to (weights file, run config).

    A run directory gives `final.weights.h5`; config.json is looked up beside the weights file and in its
    parent (for `checkpoints/epoch_NNN.weights.h5`).
    """
    path = Path(path)
    if path.is_dir():
        weights = path / FINAL_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(
                f"run directory {path} has no {FINAL_WEIGHTS} (pass a checkpoint *.weights.h5 instead)"
            )
    elif path.is_file() and path.name.endswith(".weights.h5"):
        weights = path
    else:
        raise FileNotFoundError(f"{path} is neither a run directory nor a *.weights.h5 file")
    for folder in (weights.parent, weights.parent.parent):
        config_path = folder / CONFIG_NAME
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            missing = [k for k in ("num_classes", "input_height", "input_width") if k not in config]
            if missing:
                raise ValueError(f"{config_path} lacks {', '.join(missing)}")
            return weights, config
    raise FileNotFoundError(f"no {CONFIG_NAME} beside {weights} or in {weights.parent.parent}")


def load_training_model(path: str | os.PathLike, input_size: tuple[int, int] | None = None):
    """Rebuilds the `build_mgn` model of a run directory or weights file and loads its weights.

    `input_size` (height, width) overrides the trained size (the weights do not depend on it).
    Returns (keras.Model, run config).
    """
    from mgn_tf.model import build_mgn

    weights, config = find_run_files(path)
    height, width = input_size or (config["input_height"], config["input_width"])
    model = build_mgn(int(config["num_classes"]), (int(height), int(width), 3))
    model.load_weights(weights)
    return model, config


class KerasEmbedder(Embedder):
    """The Keras embedding model of a training run, rebuilt with build_mgn."""

    format = "keras"

    def __init__(self, model, path: Path, flip_norm: bool = False):
        import tensorflow as tf

        from mgn_tf.model import embedding_model

        super().__init__(path, model.input_shape[1:3], False, flip_norm)
        self.model = embedding_model(model) if isinstance(model.output, dict) else model
        spec = tf.TensorSpec([None, *self.input_size, 3], tf.float32)
        self._fn = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch).numpy()


# ------------------------------------------------------------------------------------------ savedmodel


def find_saved_model(path: str | os.PathLike) -> Path:
    """The SavedModel directory of `path`: the directory itself or, in TF Serving's layout
    `<base>/<name>/<version>/`, the highest numeric version under `path` or under its only model."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    for candidate in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
        versions = [p for p in candidate.iterdir() if p.is_dir() and p.name.isdigit()]
        versions = [p for p in versions if (p / "saved_model.pb").is_file()]
        if versions:
            return max(versions, key=lambda p: int(p.name))
    raise FileNotFoundError(f"no SavedModel (saved_model.pb) in {path} or its numbered version folders")


def read_export_info(path: Path) -> dict:
    """The exporter's metadata for an artefact ({} if absent)."""
    if path.is_dir():
        info = path / "assets.extra" / EXPORT_INFO_NAME
    else:
        info = path.with_name(path.name + ".json")
    return json.loads(info.read_text()) if info.is_file() else {}


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


def detect_format(path: str | os.PathLike) -> str:
    """The format of `path`: keras (run dir / *.weights.h5), savedmodel, tflite or onnx."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        for suffix, name in ((".weights.h5", "keras"), (".tflite", "tflite"), (".onnx", "onnx")):
            if path.name.endswith(suffix):
                return name
        raise ValueError(f"{path}: unknown model file type (expected *.weights.h5, *.tflite or *.onnx)")
    if (path / FINAL_WEIGHTS).is_file() or (path / CONFIG_NAME).is_file():
        return "keras"
    find_saved_model(path)
    return "savedmodel"


def load(
    path: str | os.PathLike, input_size: tuple[int, int] | None = None, flip_norm: bool = False
) -> Embedder:
    """Loads a training run or an exported model for embedding; the format follows from `path`.

    Args:
      path: a run directory or `*.weights.h5` (config.json beside it or in its parent), a SavedModel
        directory (TF Serving base dir `<base>/<name>/`, `<base>/<name>/<version>/` or any SavedModel dir;
        the `embed` signature is used), a `.tflite` or an `.onnx` file.
      input_size: (height, width). For Keras weights it rebuilds the model at that size; for an exported
        model it must equal the exported size (ValueError otherwise). None: the trained/exported size.
      flip_norm: return flip-averaged, L2-normalised embeddings. Computed on the host (two passes) unless
        the artefact already does it (exported with --bake_flip_norm); `Embedder.flip_norm` says which.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "keras":
        model, _ = load_training_model(path, input_size)
        return KerasEmbedder(model, path, flip_norm)
    if fmt == "savedmodel":
        embedder: Embedder = SavedModelEmbedder(find_saved_model(path), flip_norm)
    elif fmt == "tflite":
        embedder = TFLiteEmbedder(path, flip_norm)
    else:
        embedder = OnnxEmbedder(path, flip_norm)
    if input_size is not None and tuple(input_size) != embedder.input_size:
        raise ValueError(
            f"{path} was exported for {embedder.input_size[0]}x{embedder.input_size[1]} images, not "
            f"{input_size[0]}x{input_size[1]}; re-export at that size or pass input_size=None"
        )
    return embedder
