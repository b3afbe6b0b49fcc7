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
memory from the model's graph, in float32) or an .onnx file with OpenVINO. "auto" (default) is "native",
except that a Keras model or an .onnx file embedding a large job (at least `LARGE_JOB_RUNS` runs, see
`KerasEmbedder`) runs it on the fastest float32 runtime *measured on this machine*: for Keras weights
TensorFlow's frozen graph, OpenVINO or (a run opened with `load`) LiteRT on a TFLite conversion cached
per weights (`litert_conversion`); for an .onnx file onnxruntime or OpenVINO. No runtime is fastest
everywhere (OpenVINO leads on AVX-512/AMX Xeons, LiteRT's XNNPACK and onnxruntime on AVX2 EPYCs), so
`choose_runtime` times each candidate on seeded synthetic images at the job's input size and batch size,
drops one whose embeddings leave the float32 parity bounds of `mgn_tf.export.parity` (reason printed),
and caches the choice per machine and job in `runtime_cache_file()` ($MGN_TF_CACHE_DIR, else
$XDG_CACHE_HOME/mgn_tf, else ~/.cache/mgn_tf: runtime_choice.json), keyed by `runtime_key` (CPU model
and flags, ISA caps in the environment, library versions, format, input size, batch size, threads) and
the candidates. The embedder's `engine` and `runtime_choice` say what runs and why; one line "Loaded ...
on ..., fastest of ..." says it when the choice is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from mgn_tf.files import atomic_write_json
from mgn_tf.geometry import InputSize, check_input_size
from mgn_tf.runtime import cpu_flags

RUNTIMES = ("auto", "native", "openvino")
# A job this large (images, flipped copies counted) pays for freezing a Keras model and, with runtime
# auto, for choosing its runtime: converting a graph or compiling a model takes seconds.
LARGE_JOB_RUNS = 2000
RunFunction = Callable[[np.ndarray], np.ndarray]


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
      format: one of `mgn_tf.artifacts.MODEL_FORMATS` ("keras", "savedmodel", "tflite", "onnx", "openvino").
      input_size: (height, width) the model takes.
      flip_norm: whether `embed` returns flip-averaged, L2-normalised embeddings by default (done by the
        artefact itself when it was exported with --bake_flip_norm, else on the host when
        `load(..., flip_norm=True)`).
      baked_flip_norm: whether the artefact flip-averages and normalises inside (cannot be undone).
      engine: the runtime that runs it ("tensorflow", "litert", "onnxruntime", "openvino", ...).
      runtime_choice: with runtime "auto", once chosen, why `engine` runs it (`choose_runtime`): "chosen",
        "candidates" {engine: images/s}, "excluded" {engine: reason}, "cached", "measured_at", "key".
      path: what was loaded. load_seconds: how long `load` took (None when built directly).
    """

    format: str = ""
    engine: str = ""
    runtime_choice: dict | None = None

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
        self.expect(len(images) * (2 if flip else 1), max(1, min(batch_size, len(images))))
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

    def expect(self, num_runs: int, batch_size: int | None = None) -> None:
        """Told that about `num_runs` images (flipped copies counted) are coming, in one or many calls
        (`embed` says so itself, with its `batch_size`): an embedder with a fixed start-up cost that pays
        off only over many images may pay it now, or at the next `embed` when it needs the batch size."""

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


# ------------------------------------------------------------------------ runtime auto: the measured choice

CACHE_DIR_ENV = "MGN_TF_CACHE_DIR"
RUNTIME_CACHE_NAME = "runtime_choice.json"
# Environment variables that change which kernels run (the ISA caps of `mgn_tf.runtime.isa_environment`,
# oneDNN on or off in TensorFlow), so a choice measured under other values does not hold.
SPEED_ENVIRONMENT = ("XLA_FLAGS", "ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS")
KEY_LIBRARIES = ("tensorflow", "openvino", "onnxruntime", "ai_edge_litert")
MEASURE_SECONDS = 1.0  # timing per candidate after its warm-up call...
MEASURE_MIN_CALLS = 2  # ...but at least this many timed calls (one call of a large batch can take seconds)
MEASURE_MAX_CALLS = 10  # ...and at most this many (a small model would otherwise run hundreds)
MEASURE_SEED = 0
LITERT_FOLDER = "litert"  # runtime auto's TFLite conversions of run weights, beside runtime_choice.json...
LITERT_KEEP = 4  # ...the most recently used this many (one is ~270 MB at 384x128)


def runtime_cache_file() -> Path:
    """Where measured runtime choices are kept: $MGN_TF_CACHE_DIR, else $XDG_CACHE_HOME/mgn_tf, else
    ~/.cache/mgn_tf; the file runtime_choice.json in it."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]) / RUNTIME_CACHE_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mgn_tf" / RUNTIME_CACHE_NAME


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows (e.g. on macOS)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def library_versions() -> dict[str, str | None]:
    """The installed distributions of the libraries whose kernels are measured, "name==version" (None: not
    installed), from their metadata: the same whether or not the module is imported yet (a module's own
    __version__ may say more, e.g. OpenVINO's build hash), and the name tells tensorflow-cpu apart."""
    from importlib import metadata

    distributions = metadata.packages_distributions()
    versions: dict[str, str | None] = {}
    for module in KEY_LIBRARIES:
        names = sorted(set(distributions.get(module, [])))
        versions[module] = " ".join(f"{name}=={metadata.version(name)}" for name in names) or None
    return versions


def runtime_key(fmt: str, input_size: Sequence[int], batch_size: int, threads: int) -> dict:
    """What a measured choice holds for: this machine (CPU model and instruction-set flags, the environment
    variables that cap them, library versions) and the job (model format, input size, batch size, threads)."""
    return {
        "cpu": cpu_model_name(),
        "cpu_flags": " ".join(sorted(cpu_flags())),
        "environment": {name: os.environ.get(name, "") for name in SPEED_ENVIRONMENT},
        "versions": library_versions(),
        "format": fmt,
        "input_size": [int(d) for d in input_size],
        "batch_size": int(batch_size),
        "threads": int(threads),
    }


def key_id(key: dict) -> str:
    """The cache's name for `key` (a hash: the key itself, long CPU flags included, is stored beside it)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _read_choices(path: Path) -> tuple[dict[str, dict], str | None]:
    """The cached choices by key id, and what is wrong with the file if it cannot be used."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8 or not JSON (e.g. a truncated copy)
        return {}, summary(exc)
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, dict):
        return {}, 'no "choices" object in it'
    return choices, None


def read_runtime_cache(path: Path) -> dict[str, dict]:
    """The cached choices by key id; an unreadable file is said in one line and counts as empty."""
    choices, problem = _read_choices(path)
    if problem:
        print(f"Runtime choice cache {path} is unreadable ({problem}): measuring again", flush=True)
    return choices


def save_runtime_choice(path: Path, entry: dict) -> None:
    """Adds `entry` to the cache file, written atomically: a concurrent reader sees the old file or the
    new one, and of two processes saving at once the last rename wins (the other one's entry is then
    measured again next time, never corrupted). A cache that cannot be written is said, not fatal."""
    choices, _ = _read_choices(path)  # again: another process may have added its choice since
    choices[key_id(entry["key"])] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"choices": choices})
    except OSError as exc:
        print(f"Could not save the runtime choice in {path} ({summary(exc)}): measured again next time")


def synthetic_images(batch_size: int, input_size: Sequence[int], seed: int = MEASURE_SEED) -> np.ndarray:
    """Seeded RGB 0..255 noise [batch_size, H, W, 3] as float32: runtime speed does not depend on content,
    and noise exercises every channel for the parity check."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch_size, *input_size, 3)).astype(np.float32)


def float32_parity_failure(reference: np.ndarray, outputs: np.ndarray) -> str | None:
    """Why `outputs` leave the export's float32 bounds around `reference` (`mgn_tf.export.parity`: max |diff|
    over max |reference|, and every row's cosine), or None when they are within them."""
    from mgn_tf.export.parity import FLOAT32_MAX_REL_DIFF, FLOAT32_MIN_COSINE, cosine_similarities

    if outputs.shape != reference.shape:
        return f"output shape {outputs.shape} != {reference.shape}"
    if not np.isfinite(outputs).all():
        return "non-finite outputs"
    scale = float(np.abs(reference).max())
    max_abs = float(np.abs(outputs.astype(np.float64) - reference).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    if not max_rel <= FLOAT32_MAX_REL_DIFF:
        return f"max rel diff {max_rel:.3g} > {FLOAT32_MAX_REL_DIFF:g}"
    min_cos = float(cosine_similarities(outputs, reference).min())
    if not min_cos >= FLOAT32_MIN_COSINE:
        return f"min cosine {min_cos:.9f} < {FLOAT32_MIN_COSINE:.9f}"
    return None


def _checked_functions(
    candidates: dict[str, Callable[[], RunFunction]], pixels: np.ndarray
) -> tuple[dict[str, RunFunction], dict[str, str]]:
    """Builds each candidate and makes its warm-up call on `pixels`; returns those within the float32 bounds
    of the first that runs (the reference), and the reason for each one excluded (printed)."""
    functions: dict[str, RunFunction] = {}
    excluded: dict[str, str] = {}
    reference, reference_name = None, ""
    for name, build in candidates.items():
        try:
            run = build()
            outputs = np.asarray(run(pixels), np.float32)  # the warm-up: graph optimisation, allocation
        except Exception as exc:  # a runtime that cannot convert or run this model is not a candidate
            excluded[name] = f"failed: {summary(exc)}"
        else:
            if reference is None:
                reference, reference_name = outputs, name
            failure = float32_parity_failure(reference, outputs)
            if failure is None:
                functions[name] = run
                continue
            excluded[name] = f"{failure} against {reference_name}"
        print(f"Runtime {name} excluded from the choice: {excluded[name]}", flush=True)
    return functions, excluded


def _images_per_second(functions: dict[str, RunFunction], pixels: np.ndarray) -> dict[str, float]:
    """Each function's speed on `pixels`, calls taken in turn so that another process's burst of load
    slows every candidate alike; the fastest call counts (load only ever slows a call down)."""
    best = dict.fromkeys(functions, np.inf)
    calls, start, budget = 0, time.perf_counter(), MEASURE_SECONDS * len(functions)
    while calls < MEASURE_MIN_CALLS or (calls < MEASURE_MAX_CALLS and time.perf_counter() - start < budget):
        for name, run in functions.items():
            began = time.perf_counter()
            run(pixels)
            best[name] = min(best[name], time.perf_counter() - began)
        calls += 1
    return {name: round(len(pixels) / seconds, 2) for name, seconds in best.items()}


@dataclass
class RuntimeChoice:
    """What `choose_runtime` chose: the engine's name, its run function, and the report behind it."""

    engine: str
    run: RunFunction
    report: dict


def _measure(key: dict, candidates: dict[str, Callable[[], RunFunction]]) -> RuntimeChoice:
    pixels = synthetic_images(key["batch_size"], key["input_size"])
    functions, excluded = _checked_functions(candidates, pixels)
    if not functions:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in excluded.items())
        raise RuntimeChoiceError(f"no float32 runtime can run this model ({reasons})")
    speeds = _images_per_second(functions, pixels) if len(functions) > 1 else dict.fromkeys(functions)
    chosen = max(functions, key=lambda name: speeds[name] or 0.0)
    report = {
        "chosen": chosen,
        "candidates": speeds,
        "excluded": excluded,
        "cached": False,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "key": key,
    }
    return RuntimeChoice(chosen, functions[chosen], report)


def choice_line(path: Path, report: dict) -> str:
    """The line saying a choice: Loaded <path> on <engine>, fastest of <a> (x img/s), <b> (y img/s) (...)."""
    speeds = report["candidates"]
    if len(speeds) == 1:
        line = f"Loaded {path} on {report['chosen']}, the only float32 runtime that can run it here"
    else:
        ranked = sorted(speeds, key=lambda name: -speeds[name])
        listed = ", ".join(f"{name} ({speeds[name]:.1f} img/s)" for name in ranked)
        when = f"cached from {report['measured_at']}" if report["cached"] else "measured now"
        size = "x".join(str(d) for d in report["key"]["input_size"])
        line = (
            f"Loaded {path} on {report['chosen']}, fastest of {listed} "
            f"({when}, batch {report['key']['batch_size']} at {size})"
        )
    excluded = "; ".join(f"{name} {reason}" for name, reason in report["excluded"].items())
    return f"{line}; excluded: {excluded}" if excluded else line


def choose_runtime(path: Path, key: dict, candidates: dict[str, Callable[[], RunFunction]]) -> RuntimeChoice:
    """The fastest of `candidates` (engine name -> builder of its float32 run function; the first is the
    parity reference) for the job `key` describes (`runtime_key`), from the cache when it holds a choice
    for that key, else measured on synthetic images and cached. Says the choice in one line."""
    cache = runtime_cache_file()
    key = {**key, "candidates": list(candidates)}  # a choice among other runtimes does not hold
    entry = read_runtime_cache(cache).get(key_id(key))
    if isinstance(entry, dict) and entry.get("key") == key and entry.get("chosen") in candidates:
        report = {**entry, "cached": True}
        choice = RuntimeChoice(entry["chosen"], candidates[entry["chosen"]](), report)
    else:
        choice = _measure(key, candidates)
        if len(choice.report["candidates"]) > 1:  # a single runtime is no measurement to keep
            save_runtime_choice(cache, {k: v for k, v in choice.report.items() if k != "cached"})
    choice.report["cache_file"] = str(cache)
    print(choice_line(path, choice.report), flush=True)
    return choice


# ----------------------------------------------------------------------------------------------- keras


def weights_digest(model) -> str:
    """A digest of `model`'s weights (names, shapes, dtypes, values), its input shape and the TensorFlow
    version: what a conversion of the model depends on."""
    import tensorflow as tf

    digest = hashlib.sha256(f"{tf.__version__} {model.input_shape}".encode())
    for variable in model.weights:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{variable.path} {value.shape} {value.dtype}".encode())
        digest.update(value.data)
    return digest.hexdigest()[:16]


def litert_conversion(model) -> Path:
    """The TFLite float32 conversion of the embedding model `model`, for runtime auto: made the export's
    way (a SavedModel, then `mgn_tf.export.tflite_model.convert`; tens of seconds and a few GB at 384x128,
    said in a line) once per weights and input size, and kept in the folder `litert/` beside
    runtime_choice.json as mgn_fp32_<H>x<W>_<weights_digest>.tflite. The `LITERT_KEEP` most recently used
    are kept; an older one removed is said. Written atomically: two processes converting the same weights
    write the same file."""
    from mgn_tf.export.saved_model import export_saved_model
    from mgn_tf.export.tflite_model import convert
    from mgn_tf.files import atomic_write_bytes

    folder = runtime_cache_file().parent / LITERT_FOLDER
    height, width = (int(d) for d in model.input_shape[1:3])
    path = folder / f"mgn_fp32_{height}x{width}_{weights_digest(model)}.tflite"
    if path.is_file():
        os.utime(path)  # used now: the last to be removed
        return path
    print(
        f"Converting the weights to TFLite float32 for runtime auto, once for these weights: {path}",
        flush=True,
    )
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saved_model_") as scratch:  # not a small /tmp
        flatbuffer = convert(export_saved_model(model, scratch), "fp32")
    atomic_write_bytes(path, flatbuffer)
    print(f"Converted in {time.perf_counter() - started:.0f} s", flush=True)
    older = sorted(folder.glob("mgn_fp32_*.tflite"), key=_mtime, reverse=True)[LITERT_KEEP:]
    for stale in older:
        stale.unlink(missing_ok=True)  # another process may have removed it first
        print(f"Removed {stale} (runtime auto keeps the {LITERT_KEEP} most recently used conversions)")
    return path


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by another process since the listing
        return 0.0


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

    `runtime`: "auto" freezes with the fastest of TensorFlow and OpenVINO (and LiteRT with `litert`) on this
    machine at the batch size `embed` is called with (`choose_runtime`: measured, or read from the
    cache), so a freeze that is due before that size is known (`expect`, `frozen=True`) happens at the
    next `embed` call; "native" always with TensorFlow; "openvino" with OpenVINO, at once. `engine` says
    what runs the model now.

    `litert`: runtime auto also considers LiteRT (XNNPACK, the fastest float32 runtime on AVX2 CPUs) on a
    TFLite conversion of the weights, which costs tens of seconds the first time and is then cached
    (`litert_conversion`). `load` sets it: a run's weights are embedded again and again (evaluate,
    search). Training's evaluations do not: their weights change every time.
    """

    format = "keras"
    FREEZE_MIN_IMAGES = LARGE_JOB_RUNS
    PENDING_ENGINE = "the fastest float32 runtime (measured at the next embed call)"

    def __init__(
        self,
        model,
        path: Path,
        flip_norm: bool = False,
        frozen: bool | None = None,
        runtime: str = "auto",
        litert: bool = False,
    ):
        import tensorflow as tf

        from mgn_tf.model import embedding_model

        check_runtime(runtime)
        if runtime == "openvino" and frozen is False:
            raise RuntimeChoiceError("OpenVINO runs a frozen snapshot of the weights, not frozen=False")
        super().__init__(path, model.input_shape[1:3], False, flip_norm)
        self.model = embedding_model(model) if isinstance(model.output, dict) else model
        self.runtime, self.litert = runtime, litert
        self._freeze_allowed = frozen is not False
        spec = tf.TensorSpec([None, *self.input_size, 3], tf.float32)
        self._function = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        self._fn = lambda batch: self._function(batch).numpy()
        self.frozen = False
        self.engine = "tensorflow"
        self._freeze_due = False
        if frozen or runtime == "openvino":
            self._freeze_due = True  # runtime auto: at the first embed call, which brings the batch size
            self.expect(0)

    def freeze(self, batch_size: int = 32) -> None:
        """From now on, run on a snapshot of the current weights (TensorFlow constants or OpenVINO);
        runtime auto chooses between them for batches of `batch_size` (the size `embed` is called with)."""
        if self.frozen:
            return
        if self.runtime == "auto":
            candidates = {"tensorflow frozen": self._tensorflow_frozen}
            if openvino_available():
                candidates["openvino"] = self._openvino
            if self.litert:
                candidates["litert"] = self._litert
            key = runtime_key(self.format, self.input_size, batch_size, self._threads())
            choice = choose_runtime(self.path, key, candidates)
            self._fn, self.engine, self.runtime_choice = choice.run, choice.engine, choice.report
        elif self.runtime == "openvino":
            self._fn, self.engine = self._openvino(), "openvino"
        else:
            self._fn, self.engine = self._tensorflow_frozen(), "tensorflow frozen"
        self.frozen, self._freeze_due = True, False

    def _tensorflow_frozen(self) -> RunFunction:
        import tensorflow as tf

        # TensorFlow's way to freeze a function (what the TFLite and ONNX converters use); not exported.
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        constant = convert_variables_to_constants_v2(self._function.get_concrete_function())
        return lambda batch: tf.nest.flatten(constant(tf.constant(batch)))[0].numpy()

    def _openvino(self) -> RunFunction:
        import openvino as ov

        return openvino_function(ov.convert_model(self._function.get_concrete_function()))

    def _litert(self) -> RunFunction:
        return TFLiteEmbedder(litert_conversion(self.model), num_threads=self._threads())._run

    @staticmethod
    def _threads() -> int:
        """The threads every candidate gets: TensorFlow's intra-op setting (`openvino_function` follows it),
        else every core."""
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or available_cores()

    def expect(self, num_runs: int, batch_size: int | None = None) -> None:
        if self._freeze_allowed and num_runs >= self.FREEZE_MIN_IMAGES and not self.frozen:
            self._freeze_due = True
        if not self._freeze_due:
            return
        if batch_size or self.runtime != "auto":
            self.freeze(batch_size or 32)
        else:  # what features.py and the gallery print before embedding: not TensorFlow on variables
            self.engine = self.PENDING_ENGINE

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
    """An .onnx model run with onnxruntime (CPU, `runtime` "native") or OpenVINO ("openvino"); "auto" runs
    onnxruntime until a job of at least `CHOOSE_MIN_IMAGES` runs (flipped copies counted) makes it worth
    compiling the model a second time, then the faster of the two at that job's batch size
    (`choose_runtime`: measured, or read from the cache). `num_threads` holds either to that many threads
    (default: the runtime's, every core)."""

    format = "onnx"
    CHOOSE_MIN_IMAGES = LARGE_JOB_RUNS

    def __init__(
        self, path: Path, flip_norm: bool = False, runtime: str = "native", num_threads: int | None = None
    ):
        check_runtime(runtime)
        self.runtime, self.num_threads = runtime, num_threads
        self._choice_due = False
        if runtime == "openvino":
            shape, meta = self._open_openvino(path, num_threads)
        else:
            shape, meta = self._open_onnxruntime(path, num_threads)
        info = json.loads(meta or "{}")
        if info.get("profile") == "boxmot":  # NCHW, ImageNet-normalised: another input contract
            raise ValueError(
                f"{path} is a boxmot-profile export (NCHW input, normalised as boxmot does): run it in "
                "boxmot; mgn_tf loads the default profile's .onnx"
            )
        height, width = shape[1:3]
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(f"{path}: the input has no fixed height/width ({shape})")
        baked = info.get("flip_norm", False)
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
        # An .onnx file's metadata_props are under "framework"; mgn_tf's IRs keep it under "mgn_tf".
        keys = (["framework", EXPORT_INFO_NAME], ["mgn_tf", EXPORT_INFO_NAME])
        meta = next((model.get_rt_info(k).astype(str) for k in keys if model.has_rt_info(k)), None)
        self._run_batch = openvino_function(model, num_threads)
        self.engine = "openvino"
        return shape, meta

    def expect(self, num_runs: int, batch_size: int | None = None) -> None:
        if self.runtime == "auto" and self.runtime_choice is None and num_runs >= self.CHOOSE_MIN_IMAGES:
            self._choice_due = True
        if self._choice_due and batch_size:  # announced ahead: chosen at the next embed call
            self._choose(batch_size)

    def _choose(self, batch_size: int) -> None:
        candidates = {"onnxruntime": lambda: self._run_batch}  # the session this embedder opened
        if openvino_available():
            candidates["openvino"] = self._compile_openvino
        key = runtime_key(self.format, self.input_size, batch_size, self.num_threads or available_cores())
        choice = choose_runtime(self.path, key, candidates)
        self._run_batch, self.engine, self.runtime_choice = choice.run, choice.engine, choice.report
        self._choice_due = False

    def _compile_openvino(self) -> RunFunction:
        import openvino as ov

        return openvino_function(ov.Core().read_model(str(self.path)), self.num_threads)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._run_batch(batch)


class OpenVinoEmbedder(OnnxEmbedder):
    """An OpenVINO IR (.xml beside its .bin: the export's openvino int8_static variant), run with OpenVINO,
    its one runtime. Its int8 convolutions stay int8: the float32 hint applies to the unquantized ops."""

    format = "openvino"

    def __init__(self, path: Path, flip_norm: bool = False, num_threads: int | None = None):
        super().__init__(path, flip_norm, runtime="openvino", num_threads=num_threads)


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
        used), a `.tflite`, an `.onnx` file or an OpenVINO IR `.xml` (run by OpenVINO whatever `runtime`).
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
    if runtime == "openvino" and fmt not in ("keras", "onnx", "openvino"):
        raise RuntimeChoiceError(
            f"OpenVINO runs run directories, checkpoints, weights files, .onnx and .xml files, not a {fmt} "
            f"model ({path}); export it to ONNX or use runtime auto"
        )
    if fmt == "keras":
        model, _ = load_training_model(path, input_size)
        embedder: Embedder = KerasEmbedder(model, path, flip_norm, runtime=runtime, litert=True)
    elif fmt == "savedmodel":
        embedder = SavedModelEmbedder(find_saved_model(path), flip_norm)
    elif fmt == "tflite":
        embedder = TFLiteEmbedder(path, flip_norm)
    elif fmt == "openvino":
        check_runtime("openvino")  # not installed: one line saying so
        embedder = OpenVinoEmbedder(path, flip_norm)
    else:
        embedder = OnnxEmbedder(path, flip_norm, runtime=runtime)
    if input_size is not None and tuple(int(d) for d in input_size) != embedder.input_size:
        raise InputSizeError(path, embedder.input_size, (int(input_size[0]), int(input_size[1])))
    embedder.load_seconds = round(time.perf_counter() - started, 3)
    return embedder
