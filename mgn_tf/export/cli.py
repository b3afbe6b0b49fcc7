"""Export a trained MGN:  python -m export --weights RUN --out DIR [--flag=value ...]  (or mgn-export)

    python -m export --weights runs/market --out exported
    python -m export --weights runs/market/checkpoints/step_00012345 --out exported \\
        --formats savedmodel,onnx --bake_flip_norm --parity_images ../shared/data/mini_market1501
    python -m export --weights runs/market --out exported --profile boxmot \\
        --parity_images ../shared/data/mini_market1501 --parity_count 32

Writes a SavedModel (TF Serving layout), TFLite and ONNX files (static int8 ones calibrated on a seeded
sample of --calibration_images, default the run's training images) and checks each against the Keras
model: prints a parity table (max |diff|, max |diff| over max |Keras embedding|, min cosine vs Keras,
pairwise spread, size, images/s) and an accuracy table (rank-1 and mAP of Keras and of every artefact on
a labelled split: --accuracy_dataset/--accuracy_data_dir, default the run's test split) and writes both
to <out>/export_report.json. The input size is the run's unless --input_height/--input_width are set.
--profile boxmot writes <model_name>_boxmot.onnx and an OpenVINO IR (<model_name>_boxmot_openvino_model/)
that boxmot's ReID backends load as they are (NCHW input, ImageNet mean/std; mgn_tf.export.boxmot),
checked the same way; --profile default,boxmot writes both sets from one conversion.
Exit codes: 0 ok; 1 a bound is broken: for float32 artefacts max |diff| over max |Keras embedding|
> 1e-4 or a cosine to Keras < 1 - 1e-6, for float16/int8 ones a cosine < 0.999, for static int8 ones a
cosine < 0.95, different images giving (nearly) equal embeddings (the same bounds with and without
--bake_flip_norm), or an artefact whose mAP is more than --max_map_drop points below Keras's; 2 a bad
flag, or a --weights, --out, --parity_images, --calibration_images or accuracy data path that cannot be
used (one line `error: ...`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import flags

from mgn_tf import cli, locks
from mgn_tf.artifacts import (
    EXPORT_FORMATS,
    EXPORT_REPORT,
    ONNX_VARIANTS,
    OPENVINO_VARIANTS,
    STATIC_VARIANT,
    TFLITE_VARIANTS,
    RunFiles,
    find_run_files,
)
from mgn_tf.errors import ConfigError, summary
from mgn_tf.export import boxmot, onnx_model
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
    flags.DEFINE_list(
        "profile",
        ["default"],
        "What to export, from default,boxmot: default is --formats (SavedModel, TFLite, ONNX taking NHWC "
        "RGB 0..255); boxmot is an ONNX file and an OpenVINO IR taking boxmot's NCHW ImageNet-normalised "
        "crops (docs/export.md).",
    )
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
        "TFLite variants: fp32, fp16 (float16 weights), int8 (dynamic-range quantization), int8_static "
        "(full-integer quantization calibrated on --calibration_images).",
    )
    flags.DEFINE_list(
        "onnx_variants",
        list(ONNX_VARIANTS),
        "ONNX variants: fp32 (<model_name>.onnx), int8_static (QDQ, per-channel int8 weights, calibrated on "
        "--calibration_images).",
    )
    flags.DEFINE_list(
        "openvino_variants",
        list(OPENVINO_VARIANTS),
        "OpenVINO IR variants (--formats openvino): int8_static (<model_name>_int8_static.xml/.bin, NNCF's "
        "post-training int8 calibrated on --calibration_images; the fast int8 artefact on AVX2-only CPUs).",
    )
    flags.DEFINE_string(
        "calibration_images",
        None,
        "Image folder (searched recursively) to calibrate the int8_static variants on. Default: the run's "
        "training images (its config.json's --dataset and --data_dir).",
    )
    flags.DEFINE_integer(
        "calibration_count", 256, "Calibrate on a seeded sample of this many images (all if fewer)."
    )
    flags.DEFINE_integer("calibration_seed", 0, "Seed of the calibration sample.")
    flags.DEFINE_bool(
        "accuracy",
        True,
        "Evaluate Keras and every artefact (rank-1, mAP) on a labelled split and fail an artefact whose mAP "
        "is more than --max_map_drop points below Keras's. Skipped, with a line saying so, when the default "
        "split (the run's test split) is not on this machine.",
    )
    flags.DEFINE_string(
        "accuracy_dataset", None, "Dataset of the accuracy split (a --dataset name). Default: the run's."
    )
    flags.DEFINE_string(
        "accuracy_data_dir", None, "Root folder of the accuracy split. Default: the run's --data_dir."
    )
    flags.DEFINE_integer(
        "accuracy_identities",
        0,
        "Evaluate on a seeded sample of this many query identities (their query and gallery images); 0: all.",
    )
    flags.DEFINE_float(
        "max_map_drop", 1.0, "Largest drop of mAP (points) below Keras's that an artefact may have."
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


# Flags that only the default profile uses: given explicitly with --profile=boxmot alone, they are a mistake.
_DEFAULT_PROFILE_FLAGS = (
    "formats", "tflite_variants", "onnx_variants", "openvino_variants", "calibration_images",
    "calibration_count",
    "calibration_seed", "accuracy_dataset", "accuracy_data_dir", "accuracy_identities", "max_map_drop",
    "version", "session_loader_check",
)  # fmt: skip


def _check_flags() -> None:
    """Raises ConfigError naming the first bad flag."""
    for name in ("weights", "out"):
        if not FLAGS[name].value:
            raise ConfigError(f"--{name}: required")
    if not FLAGS.profile or set(FLAGS.profile) - set(boxmot.PROFILES):
        raise ConfigError(
            f"--profile={','.join(FLAGS.profile)}: a comma-separated subset of {','.join(boxmot.PROFILES)}"
        )
    if "default" not in FLAGS.profile:
        for name in _DEFAULT_PROFILE_FLAGS:
            if FLAGS[name].present:
                raise ConfigError(
                    f"--{name}: used by the default profile only; pass --profile=default,"
                    f"{','.join(FLAGS.profile)} to export both"
                )
    for name, values, allowed in (
        ("formats", FLAGS.formats, EXPORT_FORMATS),
        ("tflite_variants", FLAGS.tflite_variants, tuple(TFLITE_VARIANTS)),
        ("onnx_variants", FLAGS.onnx_variants, tuple(ONNX_VARIANTS)),
        ("openvino_variants", FLAGS.openvino_variants, tuple(OPENVINO_VARIANTS)),
    ):
        if not values or set(values) - set(allowed):
            raise ConfigError(f"--{name}={','.join(values)}: a comma-separated subset of {','.join(allowed)}")
    for name, low in (
        ("version", 1), ("parity_count", 2), ("opset", 17),
        ("calibration_count", 1), ("accuracy_identities", 0),
    ):  # fmt: skip
        if FLAGS[name].value < low:
            raise ConfigError(f"--{name}={FLAGS[name].value}: must be >= {low}")
    for name in ("speed_seconds", "onnx_min_free_gib", "max_map_drop"):
        if FLAGS[name].value < 0:
            raise ConfigError(f"--{name}={FLAGS[name].value}: must be >= 0")
    _check_out_dir(Path(FLAGS.out))
    for name in ("parity_images", "calibration_images", "accuracy_data_dir"):
        if FLAGS[name].value and not Path(FLAGS[name].value).is_dir():
            raise ConfigError(f"--{name}={FLAGS[name].value}: not a directory")


def wants_static() -> bool:
    return "default" in FLAGS.profile and (
        ("tflite" in FLAGS.formats and STATIC_VARIANT in FLAGS.tflite_variants)
        or ("onnx" in FLAGS.formats and STATIC_VARIANT in FLAGS.onnx_variants)
        or ("openvino" in FLAGS.formats and STATIC_VARIANT in FLAGS.openvino_variants)
    )


_SPLITS: dict = {}  # (dataset, root, options) -> Split, read once per command


def _run_split(run: RunFiles, dataset: str | None, data_dir: str | None):
    """The Split of `dataset` at `data_dir` (default: the run's); raises ConfigError naming the flags."""
    from mgn_tf.data.datasets import DatasetLayoutError, dataset_options, load_dataset

    name = (dataset or str(run.config.get("dataset", ""))).strip().lower()
    root = data_dir or run.config.get("data_dir")
    where = f"--dataset={name} --data_dir={root}"
    if not name or not root or "," in name:
        raise ConfigError(f"{run.config_path} records no single --dataset/--data_dir")
    recorded = run.config.get("dataset_options") or {}
    try:
        options = {k: v for k, v in recorded.items() if k in dataset_options(name)}
        key = (name, str(root), tuple(sorted(options.items())))
        if key not in _SPLITS:  # calibration and the accuracy check both default to the run's dataset
            _SPLITS[key] = load_dataset(name, root, **options)
        return _SPLITS[key]
    except (DatasetLayoutError, ValueError, OSError) as exc:
        raise ConfigError(f"{where}: {summary(exc)}") from exc


def static_variants_asked() -> bool:
    """Whether the command line names int8_static itself (not only through the default variant lists)."""
    return any(FLAGS[name].present and STATIC_VARIANT in FLAGS[name].value for name in _VARIANT_FLAGS)


_VARIANT_FLAGS = ("tflite_variants", "onnx_variants", "openvino_variants")


def calibration_for(run: RunFiles, size):
    """The calibration images: --calibration_images, else the run's training images, else (a run copied
    from another machine) --parity_images. None when there are none and int8_static was only asked for by
    default: the caller skips it and says why. ConfigError when a folder given cannot be used, or when
    int8_static was asked for explicitly and nothing can calibrate it."""
    from mgn_tf.export import quantize

    count, seed = FLAGS.calibration_count, FLAGS.calibration_seed
    try:
        if FLAGS.calibration_images:
            return quantize.calibration_from_folder(FLAGS.calibration_images, size, count, seed)
    except ValueError as exc:
        raise ConfigError(f"--calibration_images={FLAGS.calibration_images}: {summary(exc)}") from exc
    try:
        split = _run_split(run, None, None)
    except ConfigError as exc:
        if FLAGS.parity_images:
            print(f"The run's training images cannot be read ({exc}): calibrating on --parity_images")
            try:
                return quantize.calibration_from_folder(FLAGS.parity_images, size, count, seed)
            except ValueError as bad:
                raise ConfigError(f"--parity_images={FLAGS.parity_images}: {summary(bad)}") from bad
        if not static_variants_asked():
            return None
        raise ConfigError(
            f"--calibration_images: needed for {STATIC_VARIANT} and the run's training images cannot be read "
            f"({exc}); pass --calibration_images=DIR or leave {STATIC_VARIANT} out of --tflite_variants and "
            "--onnx_variants"
        ) from exc
    files = [path for path, _, _ in split.train]
    source = f"the training images of {split.name} at {split.root}"
    try:
        return quantize.calibration_from_files(files, size, count, seed, source)
    except ValueError as exc:
        raise ConfigError(f"--calibration_images (default: {source}): {summary(exc)}") from exc


def accuracy_split_for(run: RunFiles):
    """The labelled split of the accuracy check, or None (with a printed line) when it is not asked for or
    the run's default split is not on this machine; ConfigError for explicit flags that do not work."""
    from mgn_tf.export.accuracy import subset_identities

    if not FLAGS.accuracy or "default" not in FLAGS.profile:  # it ranks with the default artefacts
        return None
    explicit = bool(FLAGS.accuracy_dataset or FLAGS.accuracy_data_dir)
    try:
        split = _run_split(run, FLAGS.accuracy_dataset, FLAGS.accuracy_data_dir)
    except ConfigError as exc:
        if explicit:
            raise ConfigError(f"--accuracy_dataset/--accuracy_data_dir: {exc}") from exc
        print(
            f"accuracy check skipped: the run's test split cannot be read ({exc}); pass --accuracy_dataset "
            "and --accuracy_data_dir to check rank-1 and mAP of every artefact",
            flush=True,
        )
        return None
    if not split.query or not split.gallery:
        raise ConfigError(f"--accuracy_data_dir={split.root}: {split.name} has no query or no gallery images")
    return subset_identities(split, FLAGS.accuracy_identities, seed=0)


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
    try:
        calibration = calibration_for(run, export_size) if wants_static() else None
        accuracy_split = accuracy_split_for(run)
    except ConfigError as exc:
        return cli.error(exc)
    tflite_variants, onnx_variants = list(FLAGS.tflite_variants), list(FLAGS.onnx_variants)
    openvino_variants, skipped = list(FLAGS.openvino_variants), {}
    if calibration is not None:
        print(f"Calibrating {STATIC_VARIANT} on {len(calibration.files)} images from {calibration.source}")
    elif wants_static():  # asked for by default only, and nothing to calibrate it on
        reason = (
            "no calibration images: the run's training images cannot be read here "
            f"({run.config_path} records --dataset={run.config.get('dataset')} "
            f"--data_dir={run.config.get('data_dir')}); pass "
            "--calibration_images=DIR (or --parity_images=DIR) to export it"
        )
        tflite_variants = [v for v in tflite_variants if v != STATIC_VARIANT]
        onnx_variants = [v for v in onnx_variants if v != STATIC_VARIANT]
        openvino_variants = [v for v in openvino_variants if v != STATIC_VARIANT]
        static_formats = [fmt for fmt in ("tflite", "onnx", "openvino") if fmt in FLAGS.formats]
        skipped = {f"{fmt}_{STATIC_VARIANT}": reason for fmt in static_formats}
        print(f"Skipping {', '.join(skipped)}: {reason}", flush=True)
    try:
        with locks.hold(FLAGS.out, f"--out={FLAGS.out}"):  # one export writes a folder
            report = exporter.export_all(
                model,
                FLAGS.out,
                formats=FLAGS.formats,
                model_name=FLAGS.model_name,
                version=FLAGS.version,
                flip_norm=FLAGS.bake_flip_norm,
                tflite_variants=tflite_variants,
                onnx_variants=onnx_variants,
                openvino_variants=openvino_variants,
                calibration=calibration,
                skipped=skipped,
                accuracy_split=accuracy_split,
                max_map_drop=FLAGS.max_map_drop,
                opset=FLAGS.opset,
                parity_images=FLAGS.parity_images,
                parity_count=FLAGS.parity_count,
                session_loader_check=FLAGS.session_loader_check,
                speed_seconds=FLAGS.speed_seconds,
                onnx_min_free_bytes=int(FLAGS.onnx_min_free_gib * 2**30),
                info={"weights": str(run.weights), "num_classes": run.num_classes},
                profiles=FLAGS.profile,
            )
    except locks.LockBusy as exc:
        return cli.error(exc)
    print(f"\nParity on {report.parity_source}:\n{report.table()}")
    if "savedmodel" in report.artefacts:
        size = saved_model.directory_size(report.artefacts["savedmodel"])
        print(f"SavedModel {size / 1e6:.1f} MB for {report.weights_bytes / 1e6:.1f} MB of weights")
    if report.onnx_peak_rss_bytes:
        print(f"ONNX conversion peak RSS {report.onnx_peak_rss_bytes / 1e9:.2f} GB")
    if report.boxmot:
        onnx_path, xml = report.artefacts["boxmot_onnx"], report.artefacts["boxmot_openvino"]
        print(f"boxmot: reid_weights={onnx_path} (or the OpenVINO IR {xml.parent})")
        if report.boxmot["reference"]:
            print(f"boxmot reference embeddings: {report.boxmot['reference']} (benchmarks/check_boxmot.py)")
    accuracy_table = report.accuracy_table()
    if accuracy_table:
        split = report.accuracy_split
        print(
            f"\nAccuracy on {split['dataset']} ({split['num_query']} queries, {split['num_gallery']} gallery "
            f"images; flip-averaged, normalised Euclidean, no re-ranking):\n{accuracy_table}"
        )
    deployment_line = report.deployment_line()
    if deployment_line:
        print(deployment_line)
    print(f"Report: {report.out_dir / EXPORT_REPORT}")
    if not report.ok:
        for result in report.results:
            if not result.ok:
                print(
                    f"EXPORT FAILED: {result.name} ({result.precision}) breaks a parity bound: "
                    + "; ".join(result.failures),
                    file=sys.stderr,
                )
        for result in report.accuracy:
            if not result.ok:
                failures = "; ".join(result.failures)
                print(f"EXPORT FAILED: {result.name} loses accuracy: {failures}", file=sys.stderr)
        return EXIT_PARITY
    return 0


def run() -> None:
    cli.run(main, define_flags, __doc__)


if __name__ == "__main__":
    run()
