"""Exports a trained MGN to SavedModel (TF Serving layout), TFLite and ONNX, each checked against Keras.

    python -m export --weights runs/market --out exported
    python -m export --weights runs/market/checkpoints/epoch_080.weights.h5 --out exported \\
        --formats savedmodel,onnx --bake_flip_norm --parity_images ../shared/data/mini_market1501

Prints a parity table (max abs diff and min cosine vs Keras, pairwise spread, size, images/s) and writes
it to <out>/export_report.json. Exit status 1 when a bound is broken: max abs diff > 1e-4 for float32
artefacts, min cosine < 0.999 for float16/int8 ones, or different images giving (nearly) equal embeddings.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from export import exporter, onnx_model, saved_model, tflite_model

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "weights",
    None,
    "Run directory (uses final.weights.h5 and config.json) or a *.weights.h5 "
    "file with config.json beside it or in its parent.",
)
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_list("formats", list(exporter.FORMATS), f"Formats to export, from {','.join(exporter.FORMATS)}.")
flags.DEFINE_string(
    "model_name",
    "mgn",
    "Model name: SavedModel goes to <out>/<model_name>/<version>/, files "
    "are named <model_name>[_<variant>].<ext>.",
)
flags.DEFINE_integer(
    "version", 1, "SavedModel version directory (TF Serving serves the highest).", lower_bound=1
)
flags.DEFINE_bool(
    "bake_flip_norm",
    False,
    "Bake flip-averaging (mean of the image's and its mirror's features) "
    "and L2 normalisation into every artefact.",
)
flags.DEFINE_list(
    "input_size", None, "H,W to export at instead of the run's input size (H a multiple of 96, W of 16)."
)
flags.DEFINE_string(
    "parity_images",
    None,
    "Image folder (searched recursively) for the parity batch; default: generated images.",
)
flags.DEFINE_integer(
    "parity_count", 8, "Images in the parity batch (also the batch size for images/s).", lower_bound=2
)
flags.DEFINE_list(
    "tflite_variants",
    list(tflite_model.VARIANTS),
    "TFLite variants: fp32, fp16 (float16 weights), int8 (dynamic-range quantization).",
)
flags.DEFINE_integer("opset", onnx_model.DEFAULT_OPSET, "ONNX opset (>= 17).", lower_bound=17)
flags.DEFINE_bool(
    "session_loader_check",
    True,
    "Also run both SavedModel signatures with `saved_model_cli run` "
    "(TF Serving's session-based loader) in a subprocess.",
)
flags.DEFINE_float("speed_seconds", 1.0, "Minimum seconds to time each runtime for images/s.", lower_bound=0)
flags.DEFINE_float(
    "onnx_min_free_gib",
    onnx_model.DEFAULT_MIN_FREE_BYTES / 2**30,
    "Wait until this much memory is available before starting the ONNX conversion (it peaks near 6 GB).",
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger().setLevel(logging.INFO)
    from mgn_tf.inference import load_training_model

    input_size = None
    if FLAGS.input_size:
        if len(FLAGS.input_size) != 2 or not all(s.strip().isdigit() for s in FLAGS.input_size):
            raise app.UsageError(f"--input_size must be H,W, got {','.join(FLAGS.input_size)}")
        input_size = tuple(int(s) for s in FLAGS.input_size)
    for name, values, allowed in (
        ("formats", FLAGS.formats, exporter.FORMATS),
        ("tflite_variants", FLAGS.tflite_variants, tuple(tflite_model.VARIANTS)),
    ):
        if not values or set(values) - set(allowed):
            raise app.UsageError(f"--{name} takes a comma-separated subset of {','.join(allowed)}")
    model, config = load_training_model(FLAGS.weights, input_size)
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
        info={"weights": str(FLAGS.weights), "num_classes": config["num_classes"]},
    )
    print(f"\nParity on {report.parity_source}:\n{report.table()}")
    if "savedmodel" in report.artefacts:
        size = saved_model.directory_size(report.artefacts["savedmodel"])
        print(f"SavedModel {size / 1e6:.1f} MB for {report.weights_bytes / 1e6:.1f} MB of weights")
    if report.onnx_peak_rss_bytes:
        print(f"ONNX conversion peak RSS {report.onnx_peak_rss_bytes / 1e9:.2f} GB")
    print(f"Report: {report.out_dir / exporter.REPORT_NAME}")
    if not report.ok:
        print("EXPORT FAILED: a parity bound is broken (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Required only for the command: importing this module (tests do) must not add validators that
    # break parsing of other commands' flags in the same process.
    flags.mark_flags_as_required(["weights", "out"])
    app.run(main)
