"""The contract between training, loading and export: file names, signature keys, export info, discovery.

Training writes a run directory; `mgn_tf.inference` and `mgn_tf.export` read it; export writes artefacts
that `mgn_tf.inference` loads again. Every name either side relies on is defined here once, and so is
the logic that turns a path a user gives (a run directory, any checkpoint of it, a weights file, a
SavedModel base directory) into the files behind it. No TensorFlow here.

Run directory (``--run_dir``)::

    config.json                       the run's TrainConfig + num_classes, steps_per_epoch, ...
    checkpoints/step_NNNNNNNN/        trainer.weights.h5 (model + optimizer state) and state.json
    checkpoints/rejected/             checkpoints whose weights gave a non-finite loss (kept, not resumed)
    final.weights.h5                  the trained `build_mgn` model's weights
    eval/results.json, eval/*.png     the final evaluation (the same files `python -m mgn_tf.evaluate` writes)
    history.csv, logs/                per-epoch loss terms (and evaluation during training), TensorBoard
    validation.json, validation/epoch_NNN/   --eval_every_epochs: every evaluation during training
    best.weights.h5, best.json        the weights of the best mAP during training, and which epoch it was
    data_scan.json, skipped_images.txt, converted_images/   what the pre-training data scan found
    replaced_images.json              images unreadable during training and the substitutes trained instead
    workers/worker_i/                 resume state of worker i > 0 under MultiWorkerMirroredStrategy

Exported artefacts: a SavedModel in TF Serving's layout ``<name>/<version>/`` with the signatures
``serving_default`` (encoded image bytes) and ``embed`` (float32 pixels), input key ``images``, output
key ``embedding``; TFLite files; an ONNX file. Each carries the export info (`EXPORT_INFO_NAME`): the
input size, whether flip-averaging and L2 normalisation are baked in, and where the weights came from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mgn_tf.geometry import InputSize

# --- run directory -------------------------------------------------------------------------------------
CONFIG_NAME = "config.json"
FINAL_WEIGHTS = "final.weights.h5"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step_"
CHECKPOINT_WEIGHTS = "trainer.weights.h5"
CHECKPOINT_STATE = "state.json"
REJECTED_DIR = "rejected"  # checkpoints/rejected/: set aside after a non-finite loss (their weights gave it)
HISTORY_CSV = "history.csv"
VALIDATION_JSON = "validation.json"
VALIDATION_DIR = "validation"
BEST_WEIGHTS = "best.weights.h5"
BEST_JSON = "best.json"
LOGS_DIR = "logs"
EVAL_DIR = "eval"
RESULTS_JSON = "results.json"
SCAN_JSON = "data_scan.json"
SKIPPED_TXT = "skipped_images.txt"
CONVERTED_DIR = "converted_images"
REPLACED_JSON = "replaced_images.json"  # training images unreadable mid-run and what replaced them
WORKERS_DIR = "workers"
REQUIRED_CONFIG_KEYS = ("num_classes", "input_height", "input_width")
WEIGHTS_SUFFIX = ".weights.h5"

# --- exported artefacts --------------------------------------------------------------------------------
SERVING_SIGNATURE = "serving_default"
EMBED_SIGNATURE = "embed"
INPUT_KEY = "images"
OUTPUT_KEY = "embedding"
EXPORT_INFO_NAME = (
    "mgn_export.json"  # SavedModel assets.extra/<name>, <file>.json beside TFLite, ONNX metadata
)
EXPORT_REPORT = "export_report.json"
MODEL_FORMATS: tuple[str, ...] = ("keras", "savedmodel", "tflite", "onnx", "openvino")  # what inference loads
EXPORT_FORMATS: tuple[str, ...] = ("savedmodel", "tflite", "onnx", "openvino")  # what export writes
# TFLite variant (file <model_name>_<variant>.tflite) -> the precision its parity bound applies to
# int8: dynamic-range (int8 weights, float activations); int8_static: full integer, calibrated activations.
TFLITE_VARIANTS: dict[str, str] = {
    "fp32": "float32", "fp16": "float16", "int8": "int8", "int8_static": "int8 static"
}  # fmt: skip
# ONNX variant -> its precision; file <model_name>.onnx for fp32, <model_name>_<variant>.onnx otherwise.
ONNX_VARIANTS: dict[str, str] = {"fp32": "float32", "int8_static": "int8 static"}
# OpenVINO IR variant -> its precision; files <model_name>_<variant>.xml and .bin (NNCF's static int8: the
# int8 artefact that is fast on AVX2-only CPUs too). OpenVINO runs the float32 .onnx file as it is.
OPENVINO_VARIANTS: dict[str, str] = {"int8_static": "int8 static"}
STATIC_VARIANT = "int8_static"  # the variants that need calibration images


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(folder: Path) -> int | None:
    """The step of a `checkpoints/step_N` folder name, or None for any other name."""
    digits = folder.name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if folder.name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def published_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders (state.json written last, then published by a rename), oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    done = [
        p
        for p in checkpoint_dir.iterdir()
        if p.is_dir() and checkpoint_step(p) is not None and (p / CHECKPOINT_STATE).is_file()
    ]
    return sorted(done, key=checkpoint_step)


@dataclass(frozen=True)
class RunFiles:
    """What a path into a training run resolves to.

    weights: the weights file to load. trainer_checkpoint: True for a resume checkpoint's
    `trainer.weights.h5` (the training wrapper's weights, optimizer state included), False for a
    `build_mgn` weights file such as `final.weights.h5`. config: the run's config.json.
    """

    weights: Path
    config: dict
    config_path: Path
    trainer_checkpoint: bool

    @property
    def run_dir(self) -> Path:
        return self.config_path.parent

    @property
    def input_size(self) -> InputSize:
        return int(self.config["input_height"]), int(self.config["input_width"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])


def _weights_of(path: Path) -> tuple[Path, bool]:
    """(weights file, is a trainer checkpoint) for a run directory, checkpoint folder or weights file."""
    if path.is_dir():
        if (path / CHECKPOINT_WEIGHTS).is_file() and (path / CHECKPOINT_STATE).is_file():
            return path / CHECKPOINT_WEIGHTS, True
        if (path / FINAL_WEIGHTS).is_file():
            return path / FINAL_WEIGHTS, False
        latest = published_checkpoints(path / CHECKPOINTS_DIR)
        hint = (
            f"; pass a checkpoint instead, e.g. {latest[-1]}"
            if latest
            else f" and no checkpoint under {path / CHECKPOINTS_DIR}"
        )
        raise FileNotFoundError(f"run directory {path} has no {FINAL_WEIGHTS} (training not finished?){hint}")
    if path.is_file() and path.name.endswith(WEIGHTS_SUFFIX):
        return path, path.name == CHECKPOINT_WEIGHTS and (path.parent / CHECKPOINT_STATE).is_file()
    raise FileNotFoundError(
        f"{path} is neither a run directory, a checkpoint folder ({CHECKPOINTS_DIR}/{CHECKPOINT_PREFIX}N) "
        f"nor a *{WEIGHTS_SUFFIX} file"
    )


def find_run_files(path: str | os.PathLike) -> RunFiles:
    """Resolves a path into a training run to its weights and config.json.

    Accepted: the run directory (its `final.weights.h5`), a checkpoint folder `checkpoints/step_N/` or its
    `trainer.weights.h5`, or any `*.weights.h5` of a `build_mgn` model. config.json is looked up in the
    folder of the weights file and up to two folders above it (a checkpoint sits two levels below
    the run directory).
    """
    path = Path(path)
    weights, trainer_checkpoint = _weights_of(path)
    folders = [weights.parent, *list(weights.parent.parents)[:2]]
    for folder in folders:
        config_path = folder / CONFIG_NAME
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except ValueError as exc:
                raise ValueError(f"{config_path} is not valid JSON ({exc})") from exc
            missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
            if missing:
                raise ValueError(f"{config_path} lacks {', '.join(missing)}")
            return RunFiles(weights, config, config_path, trainer_checkpoint)
    searched = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(f"no {CONFIG_NAME} for {weights} (looked in {searched})")


# --- exported artefacts --------------------------------------------------------------------------------


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


def detect_format(path: str | os.PathLike) -> str:
    """The format of `path`, one of MODEL_FORMATS: keras for anything `find_run_files` takes."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        kinds = ((WEIGHTS_SUFFIX, "keras"), (".tflite", "tflite"), (".onnx", "onnx"), (".xml", "openvino"))
        for suffix, name in kinds:
            if path.name.endswith(suffix):
                return name
        raise ValueError(
            f"{path}: unknown model file type "
            f"(expected *{WEIGHTS_SUFFIX}, *.tflite, *.onnx or an OpenVINO *.xml)"
        )
    run_markers = (FINAL_WEIGHTS, CONFIG_NAME, CHECKPOINT_WEIGHTS)
    if any((path / name).is_file() for name in run_markers) or (path / CHECKPOINTS_DIR).is_dir():
        return "keras"
    find_saved_model(path)
    return "savedmodel"


def export_info_path(artefact: str | os.PathLike) -> Path:
    """Where the export info of a SavedModel directory or a TFLite file lives (ONNX keeps it inside)."""
    artefact = Path(artefact)
    if artefact.is_dir():
        return artefact / "assets.extra" / EXPORT_INFO_NAME
    return artefact.with_name(artefact.name + ".json")


def read_export_info(artefact: str | os.PathLike) -> dict:
    """The exporter's metadata of a SavedModel directory or TFLite file ({} if it has none)."""
    info = export_info_path(artefact)
    return json.loads(info.read_text()) if info.is_file() else {}
