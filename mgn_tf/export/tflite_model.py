"""TFLite export of the SavedModel's `embed` signature: float32, float16 weights, dynamic-range int8,
static (full-integer) int8."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from mgn_tf.artifacts import EMBED_SIGNATURE, TFLITE_VARIANTS, export_info_path
from mgn_tf.export.quantize import Calibration, representative_dataset, static_info
from mgn_tf.files import atomic_write_bytes, atomic_write_json


def convert(
    saved_model_dir: str | Path, variant: str = "fp32", calibration: Calibration | None = None
) -> bytes:
    """Converts the `embed` signature of a SavedModel to a TFLite flatbuffer.

    fp32: float32 weights and kernels. fp16: float16 weights (dequantized to float32 at load on CPU).
    int8: dynamic-range quantization (int8 weights, activations quantized on the fly per batch).
    int8_static: full-integer quantization, activation ranges from `calibration` (required); every op
    runs in int8, the input and output stay float32.
    The input keeps a dynamic batch dimension ([-1, H, W, 3] in its shape signature).
    """
    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; choose from {', '.join(TFLITE_VARIANTS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir), signature_keys=[EMBED_SIGNATURE]
    )
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8_static":
        if calibration is None:
            raise ValueError("the int8_static TFLite variant needs calibration images")
        converter.representative_dataset = representative_dataset(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def export_tflite(
    saved_model_dir: str | Path,
    out_path: str | Path,
    variant: str,
    info: dict,
    calibration: Calibration | None = None,
) -> Path:
    """Writes the `variant` conversion to `out_path` and the export info to `<out_path>.json`."""
    out_path = Path(out_path)
    atomic_write_bytes(out_path, convert(saved_model_dir, variant, calibration))
    info = {**info, "variant": variant}
    if variant == "int8_static":
        info = static_info(info, calibration)
    atomic_write_json(export_info_path(out_path), info)
    return out_path
