"""Export a trained MGN:  python -m export --weights RUN --out DIR [--flag=value ...]  (or mgn-export)

    python -m export --weights runs/market --out exported
    python -m export --weights runs/market/checkpoints/step_00012345 --out exported \\
        --formats savedmodel,onnx --bake_flip_norm --parity_images ../shared/data/mini_market1501

Writes a SavedModel (TF Serving layout), TFLite and ONNX files and checks each against the Keras model:
prints a parity table (max |diff|, max |diff| over max |Keras embedding|, min cosine vs Keras, pairwise
spread, size, images/s) and writes it to <out>/export_report.json. The input size is the run's unless
--input_height/--input_width are set.
Exit codes: 0 ok; 1 a parity bound is broken: for float32 artefacts max |diff| over max |Keras embedding|
> 1e-4 or a cosine to Keras < 1 - 1e-6, for float16/int8 ones a cosine < 0.999, or different images giving
(nearly) equal embeddings (the same bounds with and without --bake_flip_norm); 2 a bad flag, or a
--weights, --out or --parity_images path that cannot be used (one line `error: ...`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import flags

from mgn_tf import cli
from mgn_tf.artifacts import EXPORT_FORMATS, EXPORT_REPORT, TFLITE_VARIANTS, find_run_files
from mgn_tf.errors import ConfigError, summary
from mgn_tf.export import onnx_model
from mgn_tf.flags import input_size_from_flags
from mgn_tf.geometry import check_input_size

FLAGS = flags.FLAGS
EXIT_PARITY = 1  # only for a broken parity bound; usage errors are cli.EXIT_USAGE


def define_flags() -> list[str]:
    names_before = set(FLAGS)
    flags.DEFINE_string(
        "weights",
        None,
        "The trained model: a run directory (its final.weights.h5), a checkpoint folder "
        "(<run>/checkpoints/step_N) or any *.weights.h5 of a run.",
    )
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_list("formats", list(EXPORT_FORMATS), f"Formats to export, from {','.join(EXPORT_FORMATS)}.")
    flags.DEFINE_string(
        "model_name",
        "mgn",
        "Model name: SavedModel goes to <out>/<model_name>/<version>/, files are named "
        "<model_name>[_<variant>].<ext>.",
    )
    flags.DEFINE_integer("version", 1, "SavedModel version directory (TF Serving serves the highest).")
    flags.DEFINE_bool(
        "bake_flip_norm",
        False,
        "Bake flip-averaging (mean of the image's and its mirror's features) and L2 normalisation into "
        "every artefact.",
    )
    flags.DEFINE_integer(
        "input_height", None, "Export at this input height (multiple of 96). Default: the run's."
    )
    flags.DEFINE_integer(
        "input_width", None, "Export at this input width (multiple of 16). Default: the run's."
    )
    flags.DEFINE_string(
        "parity_images", None, "Image folder (searched recursively) for the parity batch; default: generated."
    )
    flags.DEFINE_integer("parity_count", 8, "Images in the parity batch (also the batch size for images/s).")
    flags.DEFINE_list(
        "tflite_variants",
        list(TFLITE_VARIANTS),
        "TFLite variants: fp32, fp16 (float16 weights), int8 (dynamic-range quantization).",
    )
    flags.DEFINE_integer("opset", onnx_model.DEFAULT_OPSET, "ONNX opset (>= 17).")
    flags.DEFINE_bool(
        "session_loader_check",
        True,
        "Also run both SavedModel signatures with `saved_model_cli run` (TF Serving's session-based loader) "
        "in a subprocess.",
    )
    flags.DEFINE_float("speed_seconds", 1.0, "Minimum seconds to time each runtime for images/s.")
    flags.DEFINE_float(
        "onnx_min_free_gib",
        onnx_model.DEFAULT_MIN_FREE_BYTES / 2**30,
        "Wait until this much memory is available before starting the ONNX conversion (it peaks near 6 GB).",
    )
    return [name for name in FLAGS if name not in names_before]


def _check_flags() -> None:
    """Raises ConfigError naming the first bad flag."""
    for name in ("weights", "out"):
        if not FLAGS[name].value:
            raise ConfigError(f"--{name}: required")
    for name, values, allowed in (
        ("formats", FLAGS.formats, EXPORT_FORMATS),
        ("tflite_variants", FLAGS.tflite_variants, tuple(TFLITE_VARIANTS)),
    ):
        if not values or set(values) - set(allowed):
            raise ConfigError(f"--{name}={','.join(values)}: a comma-separated subset of {','.join(allowed)}")
    for name, low in (("version", 1), ("parity_count", 2), ("opset", 17)):
        if FLAGS[name].value < low:
            raise ConfigError(f"--{name}={FLAGS[name].value}: must be >= {low}")
    for name in ("speed_seconds", "onnx_min_free_gib"):
        if FLAGS[name].value < 0:
            raise ConfigError(f"--{name}={FLAGS[name].value}: must be >= 0")
    _check_out_dir(Path(FLAGS.out))
    if FLAGS.parity_images and not Path(FLAGS.parity_images).is_dir():
        raise ConfigError(f"--parity_images={FLAGS.parity_images}: not a directory")


def _check_out_dir(out: Path) -> None:
    """Raises ConfigError unless `out` is a directory or can be made one (nothing is created here)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={out}: exists and is not a directory")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out={out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out={out}: {existing} is not writable")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        _check_flags()
        input_size = input_size_from_flags()
    except ConfigError as exc:
        return cli.error(exc)
    try:
        run = find_run_files(FLAGS.weights)
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a config.json that is not an object
        return cli.error(f"--weights={FLAGS.weights}: {summary(exc)}")
    try:
        export_size = check_input_size(input_size or run.input_size)
        if run.num_classes < 1:
            raise ValueError(f"num_classes={run.num_classes}: must be >= 1")
    except (ValueError, TypeError) as exc:  # values of the wrong type or range
        return cli.error(f"--weights={FLAGS.weights}: {run.config_path}: {summary(exc)}")
    import h5py

    if not h5py.is_hdf5(run.weights):
        return cli.error(f"--weights={FLAGS.weights}: {run.weights} is not a weights file (not HDF5)")

    logging.getLogger().setLevel(logging.INFO)
    cli.import_tensorflow()
    from mgn_tf.export import exporter, parity, saved_model  # TensorFlow: only once the inputs are fine
    from mgn_tf.inference import load_training_model

    if FLAGS.parity_images:
        try:  # read here so that a bad folder is a usage error before any work; export_all reads it again
            parity.parity_batch(export_size, FLAGS.parity_images, FLAGS.parity_count)
        except ValueError as exc:  # too few distinct images, or one that cannot be decoded
            return cli.error(f"--parity_images={FLAGS.parity_images}: {summary(exc)}")

    try:
        model, _ = load_training_model(FLAGS.weights, input_size)
    except ValueError as exc:  # mgn_tf.inference.WeightsError: one line naming the file
        return cli.error(f"--weights={FLAGS.weights}: {exc}")
    report = exporter.export_all(
        model,
        FLAGS.out,
        formats=FLAGS.formats,
        model_name=FLAGS.model_name,
        version=FLAGS.version,
        flip_norm=FLAGS.bake_flip_norm,
        tflite_variants=FLAGS.tflite_variants,
        opset=FLAGS.opset,
        parity_images=FLAGS.parity_images,
        parity_count=FLAGS.parity_count,
        session_loader_check=FLAGS.session_loader_check,
        speed_seconds=FLAGS.speed_seconds,
        onnx_min_free_bytes=int(FLAGS.onnx_min_free_gib * 2**30),
        info={"weights": str(run.weights), "num_classes": run.num_classes},
    )
    print(f"\nParity on {report.parity_source}:\n{report.table()}")
    if "savedmodel" in report.artefacts:
        size = saved_model.directory_size(report.artefacts["savedmodel"])
        print(f"SavedModel {size / 1e6:.1f} MB for {report.weights_bytes / 1e6:.1f} MB of weights")
    if report.onnx_peak_rss_bytes:
        print(f"ONNX conversion peak RSS {report.onnx_peak_rss_bytes / 1e9:.2f} GB")
    print(f"Report: {report.out_dir / EXPORT_REPORT}")
    if not report.ok:
        for result in report.results:
            if not result.ok:
                print(
                    f"EXPORT FAILED: {result.name} ({result.precision}) breaks a parity bound: "
                    + "; ".join(result.failures),
                    file=sys.stderr,
                )
        return EXIT_PARITY
    return 0


def run() -> None:
    cli.run(main, define_flags, __doc__)


if __name__ == "__main__":
    run()
