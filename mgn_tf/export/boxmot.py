"""The boxmot export profile: an ONNX file and an OpenVINO IR that boxmot's ReID backends load as they are.

boxmot (25) feeds an ONNX or OpenVINO re-ID model one input, rank-4 NCHW float32 [N, 3, H, W], made from
each detection crop by: resize to the model's (W, H) (cv2 INTER_LINEAR), BGR -> RGB, / 255, minus the
ImageNet mean, over the ImageNet std. It reads (H, W) from a fixed-size ONNX graph and refuses an input
whose dimension 1 is not 3; it L2-normalises whatever [N, D] comes out. mgn_tf's own graphs take NHWC RGB
0..255 and preprocess inside, so this profile puts the inverse of boxmot's normalisation in front of the
unchanged graph:

    images [N, 3, H, W] -> x * (255 std) + 255 mean  (= (x * std + mean) * 255)  -> NCHW -> NHWC
                        -> the model (its caffe preprocessing, backbone, branches) -> embedding [N, D]

The adapter is spliced into the ONNX file tf2onnx wrote (`<model_name>.onnx`), so both files hold the
same weights and operations as the checked default ONNX and cost no second conversion. Flip-averaging
and L2 normalisation are inside only with --bake_flip_norm, as for every artefact: boxmot normalises
features itself, and a tracker embeds every detection of every frame, where a second (mirrored) pass
doubles the re-ID time for a small gain; the export info says which was chosen.

Files (beside the default artefacts in the export folder):

    <model_name>_boxmot.onnx                                  ONNX, input `images` [batch, 3, H, W]
    <model_name>_boxmot.onnx.metadata.json                    boxmot's sidecar: the crop size
    <model_name>_boxmot_openvino_model/<model_name>_boxmot.xml/.bin   OpenVINO IR, float32 weights
    <model_name>_boxmot_openvino_model/manifest.json          boxmot's sidecar for the folder, and
    <model_name>_boxmot_openvino_model/<model_name>_boxmot.xml.metadata.json   for the .xml itself
    <model_name>_boxmot_reference.npz                         Keras embeddings of the parity images
                                                              (mgn_tf's decoding; and boxmot's, with OpenCV)

boxmot's OpenVINO backend does not read the input size from the IR (its ONNX backend does): without the
sidecar it would feed 256x128 crops, so the sidecars carry `model_kwargs.img_size`. The IR also carries
OpenVINO's `model_info` (mean/scale values, RGB input, NCHW layout) for OpenVINO's own tools and demos.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mgn_tf.artifacts import EXPORT_INFO_NAME, OUTPUT_KEY
from mgn_tf.files import atomic_path, atomic_write_json

PROFILE = "boxmot"
PROFILES = ("default", PROFILE)  # mgn-export --profile: "default" is every format of --formats
# boxmot's BaseModelBackend normalisation (torchvision's ImageNet statistics), RGB order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NAME = "images"
# boxmot pins free ONNX dimensions named "batch" when it runs fixed-batch sessions (its CoreML buckets,
# BOXMOT_REID_ORT_BATCH); any other name would leave that override without effect.
BATCH_DIM = "batch"
# boxmot 25's artefact sidecar schema (boxmot/reid/core/artifacts.py, model_kwargs schema 1).
SIDECAR_SCHEMA_VERSION = 1


def onnx_name(model_name: str) -> str:
    return f"{model_name}_boxmot.onnx"


def openvino_dir_name(model_name: str) -> str:
    # boxmot recognises an OpenVINO artefact by a folder name ending in _openvino_model (or a .xml path).
    return f"{model_name}_boxmot_openvino_model"


def reference_name(model_name: str) -> str:
    return f"{model_name}_boxmot_reference.npz"


def boxmot_info(info: dict, size: tuple[int, int]) -> dict:
    """The export info of a boxmot-profile artefact: the input contract in words and numbers."""
    height, width = size
    return {
        **info,
        "profile": PROFILE,
        "input_name": INPUT_NAME,
        "input_layout": "NCHW",
        "input_shape": [BATCH_DIM, 3, height, width],
        "input_dtype": "float32",
        "channel_order": "RGB",
        "resize": f"each crop to width {width}, height {height} (boxmot: cv2.resize, INTER_LINEAR)",
        "normalisation": "(rgb / 255 - mean) / std",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "output_name": OUTPUT_KEY,
        "output": "embedding [N, D] float32"
        + (", flip-averaged and L2-normalised" if info.get("flip_norm") else ", not normalised"),
    }


def boxmot_inputs(pixels: np.ndarray) -> np.ndarray:
    """NHWC RGB 0..255 pixels (already at the model's size) -> boxmot's input: NCHW, / 255, ImageNet-
    normalised, float32. Written from boxmot's description, not from the graph, so that parity checks the
    graph's inverse against an independent forward."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    normalised = (np.asarray(pixels, np.float32) / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), dtype=np.float32)


def write_onnx(source: Path, target: Path, info: dict) -> Path:
    """Writes `target`: the NHWC 0..255 ONNX `source` with boxmot's input adapter spliced in front, `info`
    (`boxmot_info` of the export) as its export info, and boxmot's sidecar.

    The graph's input `images` [N, H, W, 3] becomes an internal tensor fed by
    Mul(255 std) -> Add(255 mean) -> Transpose(NCHW -> NHWC) from a new input `images` [batch, 3, H, W].
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    (old_input,) = graph.input
    dims = old_input.type.tensor_type.shape.dim
    height, width, channels = (d.dim_value for d in dims[1:])
    if channels != 3 or [BATCH_DIM, 3, height, width] != info["input_shape"]:
        expected = f"[N, {info['input_shape'][2]}, {info['input_shape'][3]}, 3]"
        raise ValueError(f"{source}: expected an input {expected}, got {old_input.type}")
    nhwc = f"{INPUT_NAME}_nhwc_0to255"
    for node in graph.node:
        node.input[:] = [nhwc if name == old_input.name else name for name in node.input]
    # (x * std + mean) * 255 folded into one multiply and one add per channel.
    scale = (255.0 * np.asarray(IMAGENET_STD, np.float64)).astype(np.float32).reshape(1, 3, 1, 1)
    offset = (255.0 * np.asarray(IMAGENET_MEAN, np.float64)).astype(np.float32).reshape(1, 3, 1, 1)
    graph.initializer.extend(
        [numpy_helper.from_array(scale, "boxmot_std_255"), numpy_helper.from_array(offset, "boxmot_mean_255")]
    )
    adapter = [
        helper.make_node("Mul", [INPUT_NAME, "boxmot_std_255"], ["boxmot_scaled"], name="boxmot_std"),
        helper.make_node("Add", ["boxmot_scaled", "boxmot_mean_255"], ["boxmot_nchw"], name="boxmot_mean"),
        helper.make_node("Transpose", ["boxmot_nchw"], [nhwc], perm=[0, 2, 3, 1], name="boxmot_to_nhwc"),
    ]
    nodes = adapter + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, [BATCH_DIM, 3, height, width])
    )
    for output in graph.output:  # the same symbolic batch on both ends
        output.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    props = [p for p in model.metadata_props if p.key != EXPORT_INFO_NAME]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=EXPORT_INFO_NAME, value=json.dumps(info))
    onnx.checker.check_model(model)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    write_sidecar(target, info, (height, width))
    return target


def write_openvino(onnx_path: Path, out_dir: Path, info: dict) -> Path:
    """Converts the boxmot-profile ONNX to an OpenVINO IR (float32 weights) in `out_dir`; returns the .xml.

    The input is labelled NCHW (boxmot labels an unlabelled one NCHW too; OpenVINO's preprocessing and
    demos read the label), and `model_info` says how to make the input from 0..255 pixels.
    """
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"{onnx_path.stem}.xml"
    model = ov.convert_model(str(onnx_path))
    model.inputs[0].get_node().set_layout(ov.Layout("NCHW"))
    height, width = (int(d) for d in info["input_shape"][2:])
    model_info = {
        "mean_values": " ".join(f"{255 * m:g}" for m in IMAGENET_MEAN),
        "scale_values": " ".join(f"{255 * s:g}" for s in IMAGENET_STD),
        # OpenVINO's tools read frames as BGR: reverse them to the RGB this model takes.
        "reverse_input_channels": "True",
        "resize_type": "standard",
        "layout": "NCHW",
    }
    for key, value in model_info.items():
        model.set_rt_info(value, ["model_info", key])
    model.set_rt_info(json.dumps(info), ["mgn_tf", EXPORT_INFO_NAME])
    for stale in (xml, xml.with_suffix(".bin")):
        stale.unlink(missing_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    write_sidecar(xml, info, (height, width))
    write_sidecar(out_dir, info, (height, width))
    return xml


def sidecar_path(artefact: Path) -> Path:
    """Where boxmot looks for an artefact's metadata: `<folder>/manifest.json` for a folder,
    `<file>.metadata.json` beside a file (boxmot.reid.core.artifacts.artifact_metadata_path)."""
    if artefact.is_dir():
        return artefact / "manifest.json"
    return artefact.with_name(artefact.name + ".metadata.json")


def write_sidecar(artefact: Path, info: dict, size: tuple[int, int]) -> Path:
    """boxmot's metadata for `artefact`: the crop size its backends resize to, and boxmot's default
    preprocessing (plain resize, no letterbox), plus mgn_tf's export info under its own key."""
    return atomic_write_json(
        sidecar_path(artefact),
        {
            "schema_version": SIDECAR_SCHEMA_VERSION,
            "model_kwargs_schema_version": SIDECAR_SCHEMA_VERSION,
            "model_kwargs": {"img_size": [int(size[0]), int(size[1])]},
            "preprocess": "resize",
            "mgn_tf": info,
        },
    )


def opencv_crops(files: list[Path], size: tuple[int, int]) -> np.ndarray | None:
    """Image files as boxmot makes crops of them, RGB uint8 [N, H, W, 3]: decoded by OpenCV (BGR; libjpeg's
    accurate IDCT), `cv2.resize` to (W, H) with INTER_LINEAR (to uint8), BGR -> RGB
    (boxmot/reid/core/crops.py, preprocessing.py). None when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    crops = []
    for path in files:
        image = cv2.imread(str(path))
        if image is None:
            raise ValueError(f"OpenCV cannot decode {path}")
        resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        crops.append(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
    return np.stack(crops)


def write_reference(
    path: Path,
    files: list[Path],
    root: Path,
    embeddings: np.ndarray,
    info: dict,
    opencv_embeddings: np.ndarray | None = None,
) -> Path:
    """Keras embeddings of image files for checks that run without TensorFlow (benchmarks/check_boxmot.py):
    file paths relative to `root` and their sha256; `embeddings` of the files through mgn_tf's own decoding
    and resizing, and `opencv_embeddings` (when given) of the same files made into crops the way boxmot
    makes them (`opencv_crops`), the very pixels boxmot feeds the exported graph."""
    relative = [str(Path(f).resolve().relative_to(Path(root).resolve())) for f in files]
    digests = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]
    arrays = {
        "files": np.array(relative),
        "sha256": np.array(digests),
        "embeddings": np.asarray(embeddings, np.float32),
        "info": np.array(json.dumps(info)),
    }
    if opencv_embeddings is not None:
        arrays["embeddings_opencv"] = np.asarray(opencv_embeddings, np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


class OnnxRunner:
    """A boxmot-profile ONNX file run by onnxruntime (CPU) on boxmot-normalised NCHW batches."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.info = json.loads(self.session.get_modelmeta().custom_metadata_map.get(EXPORT_INFO_NAME, "{}"))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoRunner:
    """A boxmot-profile IR run by OpenVINO in float32 (`mgn_tf.inference.openvino_function`, as boxmot
    compiles it: f32 precision hint, so that CPUs with bfloat16 units do not switch to it)."""

    def __init__(self, xml: Path):
        import openvino as ov

        from mgn_tf.inference import openvino_function

        model = ov.Core().read_model(str(xml))
        key = ["mgn_tf", EXPORT_INFO_NAME]
        self.info = json.loads(model.get_rt_info(key).astype(str)) if model.has_rt_info(key) else {}
        self._run = openvino_function(model)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)
