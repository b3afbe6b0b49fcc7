"""Export benchmark: the full 384x128 MGN with distinct branch weights to every format.

    .venv/bin/python benchmarks/bench_export.py [--out /tmp/mgn_bench_export] [--onnx_default_route]

Prints the parity table (max abs diff, min cosine, pairwise spread vs Keras; file size; images/s at batch 8
for Keras and each runtime), the SavedModel size against the weights' bytes, and the peak RSS of the
tf2onnx child; writes all of it to docs/results/bench_export.json and .md (artefacts stay in --out).
A fresh model's three equal branches would be merged by the converters, so the branches are perturbed
(tests/helpers/perturb.py): sizes and speeds are those of a trained model.
  --onnx_default_route  also convert with the default protobuf backend to measure its peak RSS
                        (~20 GB: waits for that much free memory, skipped after --memory_wait_s).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # results.py beside this file; tests/helpers/perturb.py

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "/tmp/mgn_bench_export", "Output directory (artefacts and bench_export.json).")
flags.DEFINE_integer("num_classes", 751, "Classifier width of the benchmark model (Market-1501 train ids).")
flags.DEFINE_string("parity_images", None, "Image folder for the parity batch (default: generated images).")
flags.DEFINE_string("calibration_images", None, "Static int8 calibration folder (default: generated).")
flags.DEFINE_float("speed_seconds", 3.0, "Minimum seconds to time each runtime.")
flags.DEFINE_bool("onnx_default_route", False, "Also measure tf2onnx's peak RSS with the default protobuf.")
flags.DEFINE_float("memory_wait_s", 600, "How long to wait for free memory before each ONNX conversion.")


def _calibration(size):
    """The static int8 calibration images: a seeded sample of --calibration_images, else generated."""
    from mgn_tf.export import quantize

    if FLAGS.calibration_images:
        return quantize.calibration_from_folder(FLAGS.calibration_images, size, 64, seed=0)
    return quantize.generated_calibration(size, 32)


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger().setLevel(logging.INFO)
    import results
    from helpers.perturb import distinct_fresh_model

    from mgn_tf.export import exporter, onnx_model, saved_model
    from mgn_tf.model import embedding_model

    out = Path(FLAGS.out)
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    model = embedding_model(distinct_fresh_model(FLAGS.num_classes, (384, 128), seed=0))
    report = exporter.export_all(
        model,
        out,
        calibration=_calibration((384, 128)),
        parity_images=FLAGS.parity_images,
        parity_count=8,
        speed_seconds=FLAGS.speed_seconds,
        onnx_min_free_bytes=onnx_model.DEFAULT_MIN_FREE_BYTES,
        info={"benchmark": "distinct_fresh_model(seed=0)"},
    )
    record = report.to_dict()
    sm_bytes = saved_model.directory_size(report.artefacts["savedmodel"])
    record.update(
        savedmodel_bytes=sm_bytes,
        savedmodel_over_weights=sm_bytes / report.weights_bytes,
    )
    print(f"\nParity on {report.parity_source}, batch 8, 384x128:\n{report.table()}")
    print(
        f"SavedModel {sm_bytes / 1e6:.1f} MB for {report.weights_bytes / 1e6:.1f} MB of weights "
        f"({sm_bytes / report.weights_bytes:.3f}x)"
    )
    print("Conversion seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report.seconds.items()))
    print(f"ONNX (lean route: pure-Python protobuf) child peak RSS {report.onnx_peak_rss_bytes / 1e9:.2f} GB")

    if FLAGS.onnx_default_route:
        needed = 21 * 2**30
        onnx_model.wait_for_memory(needed, timeout_s=FLAGS.memory_wait_s)
        free = onnx_model.available_memory_bytes() or 0
        if free < needed:
            print(f"default-route ONNX conversion skipped: {free / 2**30:.1f} GiB available")
        else:
            conversion = onnx_model.start_conversion(
                report.artefacts["savedmodel"], out / "default_route.onnx", lean=False
            )
            conversion.wait()
            record["onnx_default_route"] = {
                "peak_rss_bytes": conversion.peak_rss_bytes,
                "seconds": conversion.seconds,
            }
            print(
                f"ONNX default route child peak RSS {conversion.peak_rss_bytes / 1e9:.2f} GB "
                f"({conversion.seconds:.0f} s)"
            )
            (out / "default_route.onnx").unlink()

    record["total_seconds"] = time.perf_counter() - started
    notes = (
        f"Full 384x128 model with distinct branch weights, batch 8, parity on {report.parity_source}. "
        f"SavedModel {sm_bytes / 1e6:.1f} MB for {report.weights_bytes / 1e6:.1f} MB of weights; "
        f"tf2onnx child peak RSS {report.onnx_peak_rss_bytes / 1e9:.2f} GB (pure-Python protobuf)."
    )
    path = results.write(
        "bench_export",
        "Export: parity, size and speed of every artefact",
        record,
        f"```\n{report.table()}\n```",
        notes,
    )
    print(f"\nResults: {path} ({record['total_seconds']:.0f} s)")


if __name__ == "__main__":
    app.run(main)
