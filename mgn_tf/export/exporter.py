"""Exports an MGN embedding model to every format and checks each artefact against Keras.

Layout of `out_dir`:

    <model_name>/<version>/            SavedModel (TF Serving: mount <out_dir>/<model_name> as the base path)
    <model_name>_<variant>.tflite      TFLite variants (+ .json export info beside each)
    <model_name>.onnx                  ONNX
    <model_name>_int8_static.onnx      ONNX, static int8 (QDQ), calibrated on real images
    export_report.json                 parity table, sizes, speeds, conversion memory, accuracy table

and with the boxmot profile (`profiles` holding "boxmot"; mgn_tf.export.boxmot), an ONNX file and an
OpenVINO IR taking boxmot's NCHW ImageNet-normalised input, their sidecars and reference embeddings.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mgn_tf.artifacts import (
    EMBED_SIGNATURE,
    EXPORT_FORMATS,
    EXPORT_REPORT,
    ONNX_VARIANTS,
    OPENVINO_VARIANTS,
    OUTPUT_KEY,
    SERVING_SIGNATURE,
    STATIC_VARIANT,
    TFLITE_VARIANTS,
)
from mgn_tf.data.datasets import Split
from mgn_tf.export import accuracy, boxmot, onnx_model, parity, quantize, saved_model, tflite_model
from mgn_tf.files import atomic_write_json
from mgn_tf.inference import KerasEmbedder, load
from mgn_tf.model import embedding_model
from mgn_tf.runtime import cpu_class

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    """What an export produced and how each artefact compares with Keras."""

    out_dir: Path
    artefacts: dict[str, Path] = field(default_factory=dict)
    results: list[parity.ParityResult] = field(default_factory=list)
    weights_bytes: int = 0
    parity_source: str = ""
    onnx_peak_rss_bytes: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    calibration: dict | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # artefact key -> why it was not exported
    accuracy_split: dict | None = None
    accuracy_reference: accuracy.Accuracy | None = None
    accuracy: list[accuracy.Accuracy] = field(default_factory=list)
    max_map_drop: float | None = None
    boxmot: dict | None = None  # the boxmot profile's input contract and reference file

    @property
    def ok(self) -> bool:
        return self.parity_ok and self.accuracy_ok

    @property
    def parity_ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def accuracy_ok(self) -> bool:
        return all(r.ok for r in self.accuracy)

    def table(self) -> str:
        return parity.format_table(self.results)

    def deployment(self) -> dict:
        """What to deploy on CPUs of this one's class: per precision (float32, float16, int8), the
        fastest artefact here that kept its parity bound and the accuracy gate, at this export's speeds.
        int8 gains depend on the CPU class (docs/export.md): without VNNI, TFLite's int8 kernels are
        barely faster than its float32 ones while onnxruntime's and OpenVINO's int8 kernels are."""
        names = {_artefact_name(k): k for k in self.artefacts if not k.startswith(BOXMOT_PREFIX)}
        failed = {a.name for a in self.accuracy if not a.ok}
        fastest: dict[str, dict] = {}
        for r in self.results:
            if r.name not in names or r.name in failed or not r.ok or not r.images_per_s:
                continue
            kind = "int8" if r.precision.startswith("int8") else r.precision
            if kind not in fastest or r.images_per_s > fastest[kind]["images_per_s"]:
                path = self.artefacts[names[r.name]]
                fastest[kind] = {"name": r.name, "path": str(path), "images_per_s": r.images_per_s}
        return {"cpu_class": cpu_class(), "fastest": fastest}

    def deployment_line(self) -> str | None:
        deployment = self.deployment()
        picks = deployment["fastest"]
        if not picks:
            return None
        parts = [
            f"{kind}: {p['name']} ({Path(p['path']).name}, {p['images_per_s']:.1f} img/s)"
            for kind, p in sorted(picks.items(), key=lambda item: -item[1]["images_per_s"])
        ]
        where = f"Fastest on this CPU ({deployment['cpu_class']}), measured by this export: "
        return where + "; ".join(parts)

    def accuracy_table(self) -> str | None:
        if self.accuracy_reference is None:
            return None
        return accuracy.format_table(self.accuracy, self.accuracy_reference)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "artefacts": {k: str(v) for k, v in self.artefacts.items()},
            "weights_bytes": self.weights_bytes,
            "parity_images": self.parity_source,
            "onnx_peak_rss_bytes": self.onnx_peak_rss_bytes,
            "seconds": self.seconds,
            "results": [r.to_dict() for r in self.results],
            "calibration": self.calibration,
            "skipped": self.skipped,
            "boxmot": self.boxmot,
            "deployment": self.deployment(),
            "accuracy": None
            if self.accuracy_reference is None
            else {
                "split": self.accuracy_split,
                "max_map_drop": self.max_map_drop,
                "keras": self.accuracy_reference.to_dict(),
                "artefacts": [r.to_dict() for r in self.accuracy],
            },
        }


def export_all(
    model: keras.Model,
    out_dir: str | Path,
    formats: Sequence[str] = EXPORT_FORMATS,
    model_name: str = "mgn",
    version: int = 1,
    flip_norm: bool = False,
    tflite_variants: Sequence[str] = tuple(TFLITE_VARIANTS),
    onnx_variants: Sequence[str] = tuple(ONNX_VARIANTS),
    openvino_variants: Sequence[str] = tuple(OPENVINO_VARIANTS),
    calibration: quantize.Calibration | None = None,
    accuracy_split: Split | None = None,
    max_map_drop: float = accuracy.DEFAULT_MAX_MAP_DROP,
    opset: int = onnx_model.DEFAULT_OPSET,
    parity_images: str | Path | None = None,
    parity_count: int = 8,
    session_loader_check: bool = True,
    speed_seconds: float = 1.0,
    onnx_min_free_bytes: int = onnx_model.DEFAULT_MIN_FREE_BYTES,
    info: dict | None = None,
    skipped: dict[str, str] | None = None,
    profiles: Sequence[str] = ("default",),
) -> ExportReport:
    """Exports `model` (a build_mgn model or its embedding model) and checks parity of every artefact.

    The ONNX conversion runs in a child process while the TFLite variants convert. Parity: the artefact
    (loaded with mgn_tf.inference.load, the API users get) and Keras embed the same `parity_count` images
    (from `parity_images`, else generated); the SavedModel is also run through its image-bytes signature
    and, when `session_loader_check`, through `saved_model_cli run` (TF Serving's session loader).
    Speeds are images/s at batch `parity_count`. The `int8_static` variants are calibrated on
    `calibration` (required for them). With `accuracy_split` (a labelled query/gallery split), every
    artefact and the Keras model are also evaluated on it (rank-1, mAP) and an artefact more than
    `max_map_drop` points of mAP below Keras fails. Check `report.ok`; nothing raises for a broken bound.
    `skipped` ({artefact key: reason}) goes into the report as the artefacts the caller left out.
    `profiles`: "default" exports `formats`; "boxmot" exports the boxmot-profile ONNX and OpenVINO IR
    (`mgn_tf.export.boxmot`), checked against Keras on the parity images normalised as boxmot normalises
    its crops; without "default", `formats` and the variants are not used (nor the accuracy split, which
    ranks with `mgn_tf.inference`, which does not read boxmot's input).
    """
    bad_profiles = sorted(set(profiles) - set(boxmot.PROFILES))
    if bad_profiles or not profiles:
        raise ValueError(f"profiles must be a non-empty subset of {boxmot.PROFILES}, got {list(profiles)}")
    wants_boxmot = boxmot.PROFILE in profiles
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {EXPORT_FORMATS}, got {list(formats)}")
    bad_variants = sorted(set(tflite_variants) - set(TFLITE_VARIANTS))
    if bad_variants:
        raise ValueError(f"unknown TFLite variants {bad_variants}; choose from {list(TFLITE_VARIANTS)}")
    bad_variants = sorted(set(onnx_variants) - set(ONNX_VARIANTS))
    if bad_variants or ("onnx" in formats and not onnx_variants):
        raise ValueError(f"ONNX variants: a non-empty subset of {list(ONNX_VARIANTS)}, got {bad_variants}")
    bad_variants = sorted(set(openvino_variants) - set(OPENVINO_VARIANTS))
    if bad_variants:
        raise ValueError(f"unknown OpenVINO variants {bad_variants}; choose from {list(OPENVINO_VARIANTS)}")
    variants_of = {"tflite": tflite_variants, "onnx": onnx_variants, "openvino": openvino_variants}
    wants_static = any(STATIC_VARIANT in variants_of.get(fmt, ()) for fmt in formats)
    if "default" not in profiles:
        formats, accuracy_split, wants_static = (), None, False
    if wants_static and calibration is None:
        raise ValueError(f"the {STATIC_VARIANT} variants need calibration images (calibration=...)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model.output, dict):
        model = embedding_model(model)
    size = tuple(int(d) for d in model.input_shape[1:3])
    info = {**(info or {}), "input_height": size[0], "input_width": size[1], "flip_norm": flip_norm}
    weights_bytes = sum(int(np.prod(v.shape)) * v.value.dtype.size for v in model.variables)
    report = ExportReport(out_dir, weights_bytes=weights_bytes, skipped=dict(skipped or {}))
    if wants_static:
        report.calibration = calibration.describe()

    batch = parity.parity_batch(size, parity_images, parity_count)
    report.parity_source = batch.source
    # The reference is the model on its variables, exactly as Keras runs it (not the frozen fast path).
    keras_embedder = KerasEmbedder(model, Path("<keras>"), flip_norm=flip_norm, frozen=False)
    reference = keras_embedder.embed(batch.pixels, batch_size=len(batch.pixels))
    report.results.append(
        parity.compare(
            "keras",
            "float32",
            reference,
            reference,
            report.weights_bytes,
            parity.images_per_second(_embed_fn(keras_embedder), batch.pixels, speed_seconds),
        )
    )

    # The SavedModel and ONNX files that are only steps to other artefacts.
    scratch = Path(tempfile.mkdtemp(prefix="mgn_export_"))
    started = time.perf_counter()
    sm_dir = saved_model.export_saved_model(
        model, out_dir if "savedmodel" in formats else scratch, model_name, version, flip_norm, info
    )
    report.seconds["savedmodel"] = time.perf_counter() - started
    if "savedmodel" in formats:
        report.artefacts["savedmodel"] = sm_dir
    log.info("SavedModel written to %s (%.0f s)", sm_dir, report.seconds["savedmodel"])
    conversion = None
    try:
        if "onnx" in formats or "openvino" in formats or wants_boxmot:  # the IRs are made from the ONNX
            onnx_dir = out_dir if "onnx" in formats else scratch
            onnx_model.wait_for_memory(onnx_min_free_bytes)
            conversion = onnx_model.start_conversion(sm_dir, onnx_dir / f"{model_name}.onnx", opset, info)
            log.info("tf2onnx started in child process %d", conversion.process.pid)
        if "tflite" in formats:
            for variant in tflite_variants:
                started = time.perf_counter()
                path = out_dir / f"{model_name}_{variant}.tflite"
                report.artefacts[f"tflite_{variant}"] = tflite_model.export_tflite(
                    sm_dir, path, variant, info, calibration if variant == STATIC_VARIANT else None
                )
                report.seconds[f"tflite_{variant}"] = time.perf_counter() - started
                log.info(
                    "TFLite %s written to %s (%.0f s)", variant, path, report.seconds[f"tflite_{variant}"]
                )
                gc.collect()
        if conversion is not None:
            fp32_onnx = conversion.wait()
            report.onnx_peak_rss_bytes = conversion.peak_rss_bytes
            report.seconds["onnx"] = conversion.seconds
            log.info(
                "ONNX written to %s (%.0f s, child peak RSS %.2f GB)",
                conversion.out_path,
                conversion.seconds,
                conversion.peak_rss_bytes / 1e9,
            )
            # Static int8 from the fp32 ONNX: onnxruntime's QDQ file and NNCF's OpenVINO IR.
            for fmt, variants, suffix, quantizer in (
                ("onnx", onnx_variants, ".onnx", quantize.quantize_onnx),
                ("openvino", openvino_variants, ".xml", quantize.quantize_openvino),
            ):
                if fmt in formats and STATIC_VARIANT in variants:
                    key, started = f"{fmt}_{STATIC_VARIANT}", time.perf_counter()
                    path = out_dir / f"{model_name}_{STATIC_VARIANT}{suffix}"
                    report.artefacts[key] = quantizer(fp32_onnx, path, calibration, info)
                    report.seconds[key] = time.perf_counter() - started
                    log.info("%s written to %s", key, path)
            if wants_boxmot:
                report.boxmot = _export_boxmot(
                    report, fp32_onnx, model_name, info, size, batch, reference, keras_embedder
                )
            if "onnx" in formats and "fp32" in onnx_variants:
                report.artefacts["onnx"] = fp32_onnx
            else:
                fp32_onnx.unlink()

        if "savedmodel" in formats:
            report.results += _check_saved_model(
                sm_dir, batch, reference, flip_norm, session_loader_check, speed_seconds
            )
        precisions = {"tflite": TFLITE_VARIANTS, "onnx": ONNX_VARIANTS, "openvino": OPENVINO_VARIANTS}
        for key, path in report.artefacts.items():
            fmt, _, variant = key.partition("_")  # "onnx" alone is <model_name>.onnx, the fp32 variant
            if fmt in precisions:
                precision = precisions[fmt][variant or "fp32"]
                report.results.append(
                    _check(_artefact_name(key), precision, path, batch, reference, flip_norm, speed_seconds)
                )
        for key, path in report.artefacts.items():
            if key.startswith(BOXMOT_PREFIX):
                report.results.append(_check_boxmot(key, path, batch, reference, flip_norm, speed_seconds))
        if accuracy_split is not None:
            _check_accuracy(report, keras_embedder, accuracy_split, max_map_drop)
    finally:
        if conversion is not None:
            conversion.cancel()  # a no-op once finished
        shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_json(out_dir / EXPORT_REPORT, report.to_dict())
    return report


BOXMOT_PREFIX = "boxmot_"  # artefact keys of the boxmot profile: boxmot_onnx, boxmot_openvino


def _export_boxmot(report, fp32_onnx: Path, model_name: str, info, size, batch, reference, keras_embedder):
    """Writes the boxmot-profile ONNX and IR beside the other artefacts (from the fp32 ONNX), and the
    Keras embeddings of the parity images when they are files (through mgn_tf's decoding and, with
    OpenCV installed, made into crops as boxmot makes them); returns the report's `boxmot` entry."""
    out_dir = report.out_dir
    contract = boxmot.boxmot_info(info, size)
    started = time.perf_counter()
    onnx_path = boxmot.write_onnx(fp32_onnx, out_dir / boxmot.onnx_name(model_name), contract)
    report.artefacts["boxmot_onnx"] = onnx_path
    report.seconds["boxmot_onnx"] = time.perf_counter() - started
    started = time.perf_counter()
    xml = boxmot.write_openvino(onnx_path, out_dir / boxmot.openvino_dir_name(model_name), contract)
    report.artefacts["boxmot_openvino"] = xml
    report.seconds["boxmot_openvino"] = time.perf_counter() - started
    log.info("boxmot profile written: %s, %s", onnx_path, xml)
    entry = {"input": contract, "reference": None}
    if batch.files:  # real image files: a check without TensorFlow can read them again
        crops = boxmot.opencv_crops(batch.files, size)
        on_crops = None
        if crops is None:
            entry["reference_note"] = "no embeddings of boxmot-made crops: OpenCV is not installed"
        else:
            on_crops = keras_embedder.embed(crops.astype(np.float32), batch_size=len(crops))
        path = out_dir / boxmot.reference_name(model_name)
        written = boxmot.write_reference(path, batch.files, batch.root, reference, contract, on_crops)
        entry["reference"], entry["reference_images"] = str(written), str(batch.root)
    else:
        entry["reference_note"] = "none: the parity images were generated (pass --parity_images)"
    return entry


def _check_boxmot(key, path, batch, reference, flip_norm, speed_seconds) -> parity.ParityResult:
    """A boxmot-profile artefact on the parity images normalised as boxmot normalises its crops."""
    runner = boxmot.OnnxRunner(path) if key == "boxmot_onnx" else boxmot.OpenVinoRunner(path)
    inputs = boxmot.boxmot_inputs(batch.pixels)
    outputs = runner(inputs)
    speed = parity.images_per_second(runner, inputs, speed_seconds)
    size = saved_model.directory_size(path if path.suffix == ".onnx" else path.parent)
    result = parity.compare(_artefact_name(key), "float32", reference, outputs, size, speed)
    if runner.info.get("flip_norm") != flip_norm or runner.info.get("input_layout") != "NCHW":
        result.failures.append(f"artefact's export info {runner.info} does not describe this export")
    del runner
    gc.collect()
    return result


def _embed_fn(embedder):
    return lambda images: embedder.embed(images, batch_size=len(images))


def _check(name, precision, path, batch, reference, flip_norm, speed_seconds) -> parity.ParityResult:
    embedder = load(path)
    outputs = embedder.embed(batch.pixels, batch_size=len(batch.pixels))
    speed = parity.images_per_second(_embed_fn(embedder), batch.pixels, speed_seconds)
    result = parity.compare(name, precision, reference, outputs, saved_model.directory_size(path), speed)
    if embedder.flip_norm != flip_norm:
        result.failures.append(f"artefact reports flip_norm={embedder.flip_norm}, exported with {flip_norm}")
    del embedder
    gc.collect()
    return result


def _artefact_name(key: str) -> str:
    """The parity table's name of an artefact key: tflite_fp32 -> tflite/fp32, onnx_int8_static -> ..."""
    if key == "savedmodel":
        return f"savedmodel/{EMBED_SIGNATURE}"
    kind, _, variant = key.partition("_")
    return f"{kind}/{variant}" if variant else kind


def _check_accuracy(report: ExportReport, keras_embedder, split: Split, max_map_drop: float) -> None:
    """Rank-1 / mAP of Keras and of every artefact on `split`; the mAP gate."""
    report.accuracy_split = {
        "dataset": split.name,
        "root": split.root,
        "num_query": len(split.query),
        "num_gallery": len(split.gallery),
        "num_query_ids": len({pid for _, pid, _ in split.query}),
    }
    report.max_map_drop = max_map_drop
    log.info("Accuracy on %s: %d queries, %d gallery", split.name, len(split.query), len(split.gallery))
    report.accuracy_reference = accuracy.retrieval_accuracy("keras", keras_embedder, split)
    for key, path in report.artefacts.items():
        if key.startswith(BOXMOT_PREFIX):  # NCHW ImageNet input: not an mgn_tf.inference artefact
            continue
        embedder = load(path)
        report.accuracy.append(accuracy.retrieval_accuracy(_artefact_name(key), embedder, split))
        log.info("Accuracy of %s: mAP %.2f%%", key, 100 * report.accuracy[-1].mAP)
        del embedder
        gc.collect()
    accuracy.apply_gate(report.accuracy, report.accuracy_reference, max_map_drop)


def _check_saved_model(sm_dir, batch, reference, flip_norm, session_loader_check, speed_seconds):
    results = [
        _check(f"savedmodel/{EMBED_SIGNATURE}", "float32", sm_dir, batch, reference, flip_norm, speed_seconds)
    ]
    results.append(_check_serving_signature(sm_dir, batch, reference, speed_seconds))
    if session_loader_check:
        for signature, inputs in (
            (EMBED_SIGNATURE, batch.pixels),
            (SERVING_SIGNATURE, np.array(batch.encoded, dtype=object)),
        ):
            outputs = saved_model.run_with_session_loader(sm_dir, signature, inputs)
            results.append(parity.compare(f"saved_model_cli run/{signature}", "float32", reference, outputs))
    gc.collect()
    return results


def _check_serving_signature(sm_dir, batch, reference, speed_seconds) -> parity.ParityResult:
    """The image-bytes signature in-process, fed the encoded parity images."""
    serving = tf.saved_model.load(str(sm_dir)).signatures[SERVING_SIGNATURE]
    encoded = tf.constant(batch.encoded)

    def serve(_pixels: np.ndarray) -> np.ndarray:
        return serving(images=encoded)[OUTPUT_KEY].numpy()

    name = f"savedmodel/{SERVING_SIGNATURE}"
    speed = parity.images_per_second(serve, batch.pixels, speed_seconds)
    return parity.compare(name, "float32", reference, serve(batch.pixels), None, speed)
