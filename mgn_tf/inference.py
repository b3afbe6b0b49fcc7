"""One inference API over every format MGN is trained or exported in.

    embedder = load("runs/market")                 # run directory, checkpoint folder or any *.weights.h5
    embedder = load("exported/mgn/1")              # SavedModel (TF Serving layout, base or version dir)
    embedder = load("exported/mgn_fp16.tflite")    # TFLite (ai-edge-litert)
    embedder = load("exported/mgn.onnx")           # ONNX (onnxruntime)
    embedder = load("runs/market", runtime="openvino")  # a run or an .onnx file run by OpenVINO
    features = embedder.embed(["a.jpg", "b.png"])  # or a uint8/float array [N, H, W, 3], RGB 0..255

Every embedder returns float32 [N, 2048] embeddings of raw RGB 0..255 images: preprocessing is part of
the model. File paths are read and decoded in parallel by `mgn_tf.images` at the model's input size;
arrays must already have that size (they are never resized silently). This is the only place that runs a
model for embeddings: evaluation, training's final evaluation and the export parity check all use it.

Runtimes (`runtime=`): "native" runs each format with its own runtime (TensorFlow for Keras weights and
SavedModels, LiteRT for .tflite, onnxruntime for .onnx). "openvino" runs Keras weights (converted in
memory from the model's graph, in float32) or an .onnx file with OpenVINO, the fastest float32 CPU
runtime. "auto" (default) is "native", except that a Keras model embedding a large job (see
`KerasEmbedder`) runs it with OpenVINO (TensorFlow if OpenVINO was removed from the environment).
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

RUNTIMES = ("auto", "native", "openvino")


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class RuntimeChoiceError(ValueError):
    """A runtime that is unknown, not installed, or cannot run the given model format."""


def check_runtime(runtime: str) -> None:
    """RuntimeChoiceError for an unknown runtime, or "openvino" when OpenVINO is not installed."""
    if runtime not in RUNTIMES:
        raise RuntimeChoiceError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "openvino" and not openvino_available():
        raise RuntimeChoiceError("OpenVINO is not installed (pip install openvino, a dependency of mgn_tf)")


def openvino_function(model, num_threads: int | None = None):
    """An OpenVINO model (ov.Model, or a path it reads) compiled for this CPU in float32, as a function
    float32 batch -> numpy output. Float32 explicitly: on CPUs with AMX or AVX512-BF16 OpenVINO would
    otherwise infer in bfloat16. Threads: `num_threads`, else TensorFlow's intra-op setting when one is
    set (the budget TensorFlow would use), else OpenVINO's default (every core)."""
    import openvino as ov
    import tensorflow as tf

    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    threads = num_threads or tf.config.threading.get_intra_op_parallelism_threads()
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    # copy: the output array may be the request's own buffer, overwritten by the next call.
    return lambda batch: np.array(request.infer({0: batch})[0], np.float32, copy=True)


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
      engine: the runtime that runs it ("tensorflow", "litert", "onnxruntime", "openvino", ...).
      path: what was loaded. load_seconds: how long `load` took (None when built directly).
    """

    format: str = ""
    engine: str = ""

    def __init__(self, path: Path, input_size: Sequence[int], baked_flip_norm: bool, flip_norm: bool):
        self.path = path
        self.input_size: InputSize = (int(input_size[0]), int(input_size[1]))
        self.baked_flip_norm = baked_flip_norm
        self.flip_norm = baked_flip_norm or flip_norm
        self.load_seconds: float | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(format={self.format!r}, engine={self.engine!r}, path='{self.path}', "
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

    Frozen, it runs a snapshot of the weights, either as a TensorFlow graph with the weights as
    constants (which lets TensorFlow's graph optimizer fuse BatchNorm and ReLU into the kernels) or,
    with OpenVINO (`runtime`), as that graph converted in memory and compiled in float32; on variables
    TensorFlow can do neither and runs markedly slower. Freezing costs a fixed time (converting the
    graph, optimising it on the first call) that only pays off over many images, so `frozen=None`
    (default) freezes once one `embed` call, or the count announced with `expect`, has at least
    `FREEZE_MIN_IMAGES` images to run (flipped copies counted). A frozen embedder does not see weights
    changed later (build a new one). `frozen=False` always runs on the variables, exactly as Keras does
    (the export's parity reference); `frozen=True` freezes at once.

    `runtime`: "auto" freezes with OpenVINO when it is installed, else with TensorFlow; "native" always
    with TensorFlow; "openvino" with OpenVINO, at once. `engine` says what runs the model now.
    """

    format = "keras"
    FREEZE_MIN_IMAGES = 2000

    def __init__(
        self, model, path: Path, flip_norm: bool = False, frozen: bool | None = None, runtime: str = "auto"
    ):
        import tensorflow as tf

        from mgn_tf.model import embedding_model

        check_runtime(runtime)
        if runtime == "openvino" and frozen is False:
            raise RuntimeChoiceError("OpenVINO runs a frozen snapshot of the weights, not frozen=False")
        super().__init__(path, model.input_shape[1:3], False, flip_norm)
        self.model = embedding_model(model) if isinstance(model.output, dict) else model
        self.runtime = runtime
        self._freeze_allowed = frozen is not False
        spec = tf.TensorSpec([None, *self.input_size, 3], tf.float32)
        self._function = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        self._fn = lambda batch: self._function(batch).numpy()
        self.frozen = False
        self.engine = "tensorflow"
        if frozen or runtime == "openvino":
            self.freeze()

    def freeze(self) -> None:
        """From now on, run on a snapshot of the current weights (TensorFlow constants or OpenVINO)."""
        if self.frozen:
            return
        import tensorflow as tf

        if self.runtime == "openvino" or (self.runtime == "auto" and openvino_available()):
            import openvino as ov

            self._fn = openvino_function(ov.convert_model(self._function.get_concrete_function()))
            self.engine = "openvino"
        else:
            # TensorFlow's way to freeze a function (what the TFLite and ONNX converters use); not exported.
            from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

            constant = convert_variables_to_constants_v2(self._function.get_concrete_function())
            self._fn = lambda batch: tf.nest.flatten(constant(tf.constant(batch)))[0].numpy()
            self.engine = "tensorflow frozen"
        self.frozen = True

    def expect(self, num_runs: int) -> None:
        if self._freeze_allowed and num_runs >= self.FREEZE_MIN_IMAGES:
            self.freeze()

    def embed(self, images, batch_size: int = 32, **kwargs) -> np.ndarray:
        flip = self.flip_norm if kwargs.get("flip") is None else kwargs["flip"]
        self.expect(len(images) * (2 if flip else 1))
        return super().embed(images, batch_size, **kwargs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch)


# ------------------------------------------------------------------------------------------ savedmodel


class SavedModelEmbedder(Embedder):
    """A SavedModel's `embed` signature (float32 [N, H, W, 3] -> {"embedding": [N, D]})."""

    format = "savedmodel"
    engine = "tensorflow"

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
    engine = "litert"

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
    """An .onnx model run with onnxruntime (CPU), or with OpenVINO (`openvino=True`); `num_threads`
    holds either to that many threads (default: the runtime's, every core)."""

    format = "onnx"

    def __init__(
        self, path: Path, flip_norm: bool = False, openvino: bool = False, num_threads: int | None = None
    ):
        if openvino:
            shape, meta = self._open_openvino(path, num_threads)
        else:
            shape, meta = self._open_onnxruntime(path, num_threads)
        height, width = shape[1:3]
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(f"{path}: the input has no fixed height/width ({shape})")
        baked = json.loads(meta or "{}").get("flip_norm", False)
        super().__init__(path, (height, width), bool(baked), flip_norm)

    def _open_onnxruntime(self, path: Path, num_threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or 0
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (model_input,) = session.get_inputs()
        output_name = session.get_outputs()[0].name
        self._run_batch = lambda batch: session.run([output_name], {model_input.name: batch})[0]
        self.engine = "onnxruntime"
        return model_input.shape, session.get_modelmeta().custom_metadata_map.get(EXPORT_INFO_NAME)

    def _open_openvino(self, path: Path, num_threads: int | None):
        import openvino as ov

        model = ov.Core().read_model(str(path))
        shape = [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()]
        # OpenVINO keeps the ONNX metadata_props under "framework".
        key = ["framework", EXPORT_INFO_NAME]
        meta = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
        self._run_batch = openvino_function(model, num_threads)
        self.engine = "openvino"
        return shape, meta

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._run_batch(batch)


# ------------------------------------------------------------------------------------------------ load


def load(
    path: str | os.PathLike,
    input_size: Sequence[int] | None = None,
    flip_norm: bool = False,
    runtime: str = "auto",
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
      runtime: "auto", "native" or "openvino" (module docstring); RuntimeChoiceError for "openvino"
        with a SavedModel or a .tflite file, or when OpenVINO is not installed.
    """
    started = time.perf_counter()
    check_runtime(runtime)
    path = Path(path)
    fmt = detect_format(path)
    if runtime == "openvino" and fmt not in ("keras", "onnx"):
        raise RuntimeChoiceError(
            f"OpenVINO runs run directories, checkpoints, weights files and .onnx files, not a {fmt} "
            f"model ({path}); export it to ONNX or use runtime auto"
        )
    if fmt == "keras":
        model, _ = load_training_model(path, input_size)
        embedder: Embedder = KerasEmbedder(model, path, flip_norm, runtime=runtime)
    elif fmt == "savedmodel":
        embedder = SavedModelEmbedder(find_saved_model(path), flip_norm)
    elif fmt == "tflite":
        embedder = TFLiteEmbedder(path, flip_norm)
    else:
        embedder = OnnxEmbedder(path, flip_norm, openvino=runtime == "openvino")
    if input_size is not None and tuple(int(d) for d in input_size) != embedder.input_size:
        raise InputSizeError(path, embedder.input_size, (int(input_size[0]), int(input_size[1])))
    embedder.load_seconds = round(time.perf_counter() - started, 3)
    return embedder
