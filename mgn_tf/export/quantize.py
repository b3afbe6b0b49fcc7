"""Static int8 quantization of exported models, calibrated on real images.

Static int8 quantizes activations with ranges fixed from calibration images, so every convolution runs
in int8 (dynamic-range quantization keeps float activations and float kernels wherever the runtime has no
dynamically quantized kernel). The ranges come from images like those the model will see: by default a
seeded sample of the run's training images.

ONNX: onnxruntime's `quantize_static`, QDQ format (QuantizeLinear/DequantizeLinear pairs that the CPU
provider fuses into int8 kernels), int8 weights per output channel, uint8 activations, min/max
calibration. TFLite: full-integer conversion (every op int8, float32 input and output at the edges) with
the calibration images as the representative dataset. OpenVINO: NNCF's post-training quantization of the
fp32 ONNX graph (FakeQuantize on the inputs of convolutions and matmuls, int8 weights per output channel,
fast bias correction), saved as an IR (.xml + .bin) whose int8 kernels OpenVINO's CPU plugin runs on
AVX2 as well as on AVX-512 VNNI / AMX; without VNNI, TFLite's int8 kernels are barely faster than its
float32 ones (docs/export.md, "Which artefact on which CPU").
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgn_tf.files import image_files

DEFAULT_CALIBRATION_COUNT = 256
CALIBRATION_BATCH = 8


@dataclass
class Calibration:
    """Calibration images: float32 pixels [N, H, W, 3] and where they came from."""

    pixels: np.ndarray
    files: list[str]
    source: str

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self.files), "first_files": self.files[:3]}


def sample_files(files: Sequence[str | Path], count: int, seed: int = 0) -> list[Path]:
    """A seeded sample of `count` distinct paths (all of them when there are fewer), in sorted order."""
    unique = sorted({str(f) for f in files})
    if count >= len(unique):
        return [Path(f) for f in unique]
    chosen = np.random.default_rng(seed).choice(len(unique), size=count, replace=False)
    return [Path(unique[i]) for i in sorted(chosen)]


def calibration_from_files(
    files: Sequence[str | Path], size: tuple[int, int], count: int, seed: int, source: str
) -> Calibration:
    """Reads a seeded sample of `count` of `files` at `size`; ValueError naming a file that cannot be read."""
    from mgn_tf.images import load_images

    chosen = sample_files(files, count, seed)
    if not chosen:
        raise ValueError(f"{source}: no images to calibrate on")
    return Calibration(load_images(chosen, size), [str(p) for p in chosen], source)


def calibration_from_folder(folder: str | Path, size: tuple[int, int], count: int, seed: int) -> Calibration:
    """A seeded sample of the images under `folder` (searched recursively)."""
    return calibration_from_files(image_files(folder), size, count, seed, str(folder))


def generated_calibration(size: tuple[int, int], count: int, seed: int = 1) -> Calibration:
    """Generated images (the parity check's smooth colour fields), for speed checks without real images:
    the resulting ranges say nothing about accuracy."""
    from mgn_tf.export.parity import parity_batch

    pixels = np.asarray(parity_batch(size, None, count, seed=seed).pixels, np.float32)
    files = [f"<generated {i}>" for i in range(count)]
    return Calibration(pixels, files, f"{count} generated images (seed {seed})")


# ------------------------------------------------------------------------------------------------ ONNX


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Calibration,
    info: dict,
    nodes_to_exclude: Sequence[str] = (),
) -> Path:
    """Writes the static int8 (QDQ, per-channel) version of the fp32 ONNX model `fp32_path` to `out_path`.

    `nodes_to_exclude`: ONNX node names kept in float. The export info is stored in the metadata as for
    the fp32 file (with the variant and the calibration added).
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from mgn_tf.artifacts import EXPORT_INFO_NAME
    from mgn_tf.export.onnx_model import add_metadata

    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    pixels = calibration.pixels

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.starts = iter(range(0, len(pixels), CALIBRATION_BATCH))

        def get_next(self):
            start = next(self.starts, None)
            return None if start is None else {input_name: pixels[start : start + CALIBRATION_BATCH]}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix=".mgn_quantize_", dir=out_path.parent) as scratch:
        staged = Path(scratch) / out_path.name
        quantize_static(
            str(fp32_path),
            str(staged),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(nodes_to_exclude),
        )
        add_metadata(staged, {EXPORT_INFO_NAME: json.dumps(static_info(info, calibration))})
        staged.replace(out_path)
    return out_path


def quantize_openvino(
    fp32_onnx: str | Path, out_xml: str | Path, calibration: Calibration, info: dict
) -> Path:
    """Writes NNCF's static int8 OpenVINO IR of the fp32 ONNX model to `out_xml` (+ its .bin); returns it.

    The export info goes into the IR's rt_info (["mgn_tf", EXPORT_INFO_NAME]), as the boxmot IR carries
    it. Written to a scratch folder and moved into place .bin first, .xml last: a reader that finds the
    .xml finds its weights.
    """
    import nncf
    import openvino as ov

    from mgn_tf.artifacts import EXPORT_INFO_NAME

    model = ov.Core().read_model(str(fp32_onnx))
    pixels = calibration.pixels
    batches = [pixels[i : i + CALIBRATION_BATCH] for i in range(0, len(pixels), CALIBRATION_BATCH)]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(batches),
        preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric int8: what the CPU plugin's kernels take
        subset_size=len(batches),  # every calibration image (NNCF counts dataset items: batches here)
    )
    quantized.set_rt_info(json.dumps(static_info(info, calibration)), ["mgn_tf", EXPORT_INFO_NAME])
    out_xml = Path(out_xml)
    with tempfile.TemporaryDirectory(prefix=".mgn_quantize_", dir=out_xml.parent) as scratch:
        staged = Path(scratch) / out_xml.name
        ov.save_model(quantized, str(staged), compress_to_fp16=False)
        staged.with_suffix(".bin").replace(out_xml.with_suffix(".bin"))
        staged.replace(out_xml)
    return out_xml


def static_info(info: dict, calibration: Calibration) -> dict:
    return {**info, "variant": "int8_static", "calibration": calibration.describe()}


# ---------------------------------------------------------------------------------------------- TFLite


def representative_dataset(calibration: Calibration):
    """The converter's representative dataset: one image per call, as the converter calibrates."""

    def images():
        for image in calibration.pixels:
            yield [image[None]]

    return images
