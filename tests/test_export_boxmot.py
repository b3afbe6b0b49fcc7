"""The boxmot export profile: an ONNX file and an OpenVINO IR that boxmot's ReID backends load as they are.

The session's one export (`exported`, tests/helpers/exported.py) writes them with --profile=default,boxmot
(flip-averaging and L2 normalisation baked in). Here they run on real crops preprocessed the way boxmot
25 preprocesses detections (boxmot/reid/core/crops.py: resize to (W, H) bilinear, RGB, / 255, minus the
ImageNet mean, over its std, HWC -> CHW), written below in numpy from that description, and are compared
with the Keras model rebuilt from the run's weights. boxmot itself is not a test dependency: the check
through its own backend classes runs when it is importable here, or in the interpreter named by
$MGN_BOXMOT_PYTHON (a separate environment with boxmot and without TensorFlow), else it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.exported import EMBEDDING_DIM, ENV, INPUT_SIZE, REPO, assert_close
from PIL import Image

from mgn_tf.images import load_images

pytestmark = pytest.mark.xdist_group("export")  # the session's one export, with test_export.py

# boxmot's BaseModelBackend constants, copied from its source (not from mgn_tf.export.boxmot).
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
MIN_COSINE = 0.9999  # boxmot's embeddings to mgn_tf's model on the same crops (issue 30)


def _axis(size_out: int, size_in: int):
    """Source rows (or columns) and weights of a half-pixel-centred bilinear resize without antialias,
    the sampling of cv2.resize(INTER_LINEAR) that boxmot calls."""
    x = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    low = np.floor(x).astype(int)
    return low, np.minimum(low + 1, size_in - 1), x - low


def boxmot_crop(path, size: tuple[int, int]) -> np.ndarray:
    """An image file as boxmot hands a detection crop to its model, up to normalisation: decoded by PIL
    (libjpeg's accurate IDCT, as OpenCV), resized to `size` (height, width) and rounded to uint8, RGB."""
    image = np.asarray(Image.open(path).convert("RGB"), np.float64)
    low, high, w = _axis(size[0], image.shape[0])
    image = image[low] * (1 - w)[:, None, None] + image[high] * w[:, None, None]
    low, high, w = _axis(size[1], image.shape[1])
    image = image[:, low] * (1 - w)[None, :, None] + image[:, high] * w[None, :, None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def boxmot_normalise(crops: np.ndarray) -> np.ndarray:
    """uint8 RGB crops [N, H, W, 3] -> boxmot's model input [N, 3, H, W]: / 255, minus mean, over std."""
    return ((crops / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _onnxruntime(exported):
    """The ONNX file read as boxmot's ONNX backend reads it: the input's rank, channels and fixed size
    from the graph (it refuses a dimension 1 other than 3 and takes H, W from dimensions 2 and 3)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.out / "mgn_boxmot.onnx"), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.type == "tensor(float)"
    assert model_input.shape == ["batch", 3, *INPUT_SIZE]  # dynamic batch, fixed size
    assert session.get_outputs()[0].shape == ["batch", EMBEDDING_DIM]
    return lambda batch: session.run(None, {model_input.name: batch})[0]


def _openvino(exported):
    """The IR compiled as boxmot's OpenVINO backend compiles it (float32 inference precision)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(exported.out / "mgn_boxmot_openvino_model" / "mgn_boxmot.xml"))
    parameter = model.get_parameters()[0]
    assert str(parameter.get_layout()) == "[N,C,H,W]"
    assert str(parameter.get_partial_shape()) == f"[?,3,{INPUT_SIZE[0]},{INPUT_SIZE[1]}]"
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda batch: np.array(compiled([batch])[compiled.outputs[0]], np.float32)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_boxmot_artefact_on_real_crops_matches_keras(runtime, exported, truth, query_files):
    """Real crops preprocessed the boxmot way: within the float32 parity bounds (so within cosine 0.9999)
    of the Keras model on the same crops: the graph undoes boxmot's normalisation exactly. (Against
    mgn_tf's embeddings of the files, through its own decoding and resizing, a trained model is further
    off; benchmarks/check_boxmot.py reports both.)"""
    run = _onnxruntime(exported) if runtime == "onnxruntime" else _openvino(exported)
    crops = np.stack([boxmot_crop(path, INPUT_SIZE) for path in query_files])
    outputs = run(boxmot_normalise(crops))
    expected = truth(crops.astype(np.float32), flip_norm=True)
    assert_close(outputs, expected)
    assert cosines(outputs, expected).min() >= MIN_COSINE
    one = run(boxmot_normalise(crops[:1]))  # batch 1, as for a frame with one detection
    np.testing.assert_allclose(one, outputs[:1], rtol=0, atol=1e-4 * np.abs(outputs).max())


def test_boxmot_artefacts_describe_their_input(exported, truth, mini_market_dir):
    """Parity rows in the report; the input contract in the ONNX metadata, the IR's rt_info and boxmot's
    sidecars (its OpenVINO backend takes the crop size from them); float32 weights in the IR; reference
    embeddings of the parity images for checks without TensorFlow."""
    import openvino as ov

    rows = {r["name"]: r for r in exported.report["results"]}
    for name in ("boxmot/onnx", "boxmot/openvino"):
        assert rows[name]["ok"] and rows[name]["precision"] == "float32", rows[name]
        assert rows[name]["max_rel_diff"] <= 1e-4 and rows[name]["min_cosine"] >= 1 - 1e-6
    import onnx

    model = onnx.load(str(exported.out / "mgn_boxmot.onnx"), load_external_data=False)
    info = json.loads({p.key: p.value for p in model.metadata_props}["mgn_export.json"])
    assert info["profile"] == "boxmot" and info["flip_norm"] is True
    assert (info["input_layout"], info["channel_order"], info["input_shape"]) == (
        "NCHW", "RGB", ["batch", 3, *INPUT_SIZE]
    )  # fmt: skip
    assert (info["mean"], info["std"]) == (MEAN.tolist(), STD.tolist())
    assert exported.report["boxmot"]["input"] == info

    ir_dir = exported.out / "mgn_boxmot_openvino_model"
    for sidecar in (
        exported.out / "mgn_boxmot.onnx.metadata.json",
        ir_dir / "manifest.json",
        ir_dir / "mgn_boxmot.xml.metadata.json",
    ):
        data = json.loads(sidecar.read_text())
        assert data["model_kwargs"] == {"img_size": list(INPUT_SIZE)} and data["preprocess"] == "resize"
        assert data["schema_version"] == 1 and data["mgn_tf"] == info
    assert (ir_dir / "mgn_boxmot.bin").stat().st_size > 0.99 * exported.report["weights_bytes"]  # not fp16
    ir = ov.Core().read_model(str(ir_dir / "mgn_boxmot.xml"))
    assert ir.get_rt_info(["model_info", "mean_values"]).astype(str) == "123.675 116.28 103.53"
    assert ir.get_rt_info(["model_info", "scale_values"]).astype(str) == "58.395 57.12 57.375"
    assert ir.get_rt_info(["model_info", "reverse_input_channels"]).astype(str) == "True"
    assert json.loads(ir.get_rt_info(["mgn_tf", "mgn_export.json"]).astype(str)) == info

    parity_images = mini_market_dir / "bounding_box_test"  # the export's --parity_images
    with np.load(exported.out / "mgn_boxmot_reference.npz") as reference:
        files = [parity_images / name for name in reference["files"]]
        assert len(files) == 8 and all(f.is_file() for f in files)
        assert json.loads(str(reference["info"])) == info
        assert_close(reference["embeddings"], truth(load_images(files, INPUT_SIZE), flip_norm=True))
        # of the crops as boxmot makes them (OpenCV decoding and resizing), when the export had OpenCV
        has_opencv = importlib.util.find_spec("cv2") is not None
        assert ("embeddings_opencv" in reference) == has_opencv
        if has_opencv:
            assert reference["embeddings_opencv"].shape == (8, EMBEDDING_DIM)
    from mgn_tf import inference  # another input contract: refused in one line, not a shape error

    for path in (exported.out / "mgn_boxmot.onnx", exported.out / "mgn_boxmot_openvino_model/mgn_boxmot.xml"):
        with pytest.raises(ValueError, match="is a boxmot-profile export"):
            inference.load(path)


def _boxmot_python() -> str:
    """A Python that has boxmot: $MGN_BOXMOT_PYTHON, else this one if boxmot is importable; else skip."""
    if os.environ.get("MGN_BOXMOT_PYTHON"):
        return os.environ["MGN_BOXMOT_PYTHON"]
    if importlib.util.find_spec("boxmot") is not None:
        return sys.executable
    pytest.skip(
        "boxmot is not installed (pip install 'mgn_tf[tracking]', or set MGN_BOXMOT_PYTHON to a Python "
        "that has it); benchmarks/check_boxmot.py runs this check"
    )


def test_boxmot_loads_the_export_through_its_own_backends(tmp_path, exported, mini_market_dir):
    """boxmot's ReID runtime picks its ONNX backend for the .onnx file and its OpenVINO backend for the IR
    folder, reads the crop size, embeds the parity crops within cosine 0.9999 of mgn_tf's model on the
    same crops; BoT-SORT given only reid_weights builds the ONNX backend itself and starts one track per
    crop with those features."""
    python = _boxmot_python()
    out = tmp_path / "check"
    command = [
        python, str(REPO / "benchmarks" / "check_boxmot.py"), "--exported", str(exported.out),
        "--crops", str(mini_market_dir / "bounding_box_test"), "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if result.returncode == 2 and "would pip-install" in result.stderr:  # boxmot's runtime pin unmet
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    has_opencv = importlib.util.find_spec("cv2") is not None  # where the export ran: this interpreter
    assert data["reference"] == ("same crops" if has_opencv else "files")
    checks = data["checks"]
    backends = [(c["check"], c["format"], c["backend"], tuple(c["input_shape"]), c["crops"]) for c in checks]
    assert backends == [
        ("onnx through boxmot's ReID backend", "onnx", "ONNXBackend", INPUT_SIZE, 8),
        ("openvino through boxmot's ReID backend", "openvino", "OpenVinoBackend", INPUT_SIZE, 8),
        ("onnx inside BotSort(reid_weights=...)", "onnx", "ONNXBackend", INPUT_SIZE, 8),
    ]
    assert all(c["ok"] and c["min_cosine"] >= MIN_COSINE for c in checks), checks
    assert checks[2]["tracks"] == 8
