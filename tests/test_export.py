"""Export to SavedModel / TFLite / ONNX, parity with Keras, TF Serving's loader and request formats.

The session's one export (`exported`, conftest.py and tests/helpers/exported.py, shared with
test_inference.py): `python -m export` on a checkpoint of a run directory of a fresh MGN at 96x32 with
distinct branch weights, flip-averaging and L2 normalisation baked in. The truth is the Keras model
rebuilt from the same weights, run on real mini_market1501 images in this process.
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest
import tensorflow as tf
from helpers.exported import EMBEDDING_DIM, ENV, INPUT_SIZE, REPO, assert_close

from mgn_tf import inference
from mgn_tf.export import saved_model
from mgn_tf.images import load_images
from mgn_tf.serving import common, grpc_client, rest_client

# One worker runs this module and the other one of the pair (test_export.py, test_inference.py): one export.
pytestmark = pytest.mark.xdist_group("export")


def decode_instances(request: dict) -> list[bytes]:
    """What TF Serving feeds the string input for `request`: each {"b64": ...} instance base64-decoded."""
    values = []
    for instance in request["instances"]:
        if isinstance(instance, dict) and set(instance) == {"b64"}:
            values.append(base64.b64decode(instance["b64"], validate=True))
        else:
            raise ValueError(f"expected instances of the form {{'b64': ...}}, got {str(instance)[:80]}")
    return values


@pytest.fixture(scope="module")
def serving_signature(exported):
    """`serving_default` loaded in-process, as TF Serving calls it."""
    return tf.saved_model.load(str(exported.saved_model)).signatures["serving_default"]


# --------------------------------------------------------------------------------------- the export tool


def test_cli_exports_every_format_within_bounds(exported):
    print(f"\nexport of all formats took {exported.seconds:.0f} s\n{exported.stdout}")
    report = exported.report
    assert report["ok"]
    names = {r["name"] for r in report["results"]}
    assert names == {
        "keras",
        "savedmodel/embed",
        "savedmodel/serving_default",
        "saved_model_cli run/embed",
        "saved_model_cli run/serving_default",
        "tflite/fp32",
        "tflite/fp16",
        "tflite/int8",
        "tflite/int8_static",
        "onnx",
        "onnx/int8_static",
        "openvino/int8_static",
        "boxmot/onnx",  # the boxmot profile (tests/test_export_boxmot.py)
        "boxmot/openvino",
    }
    for name in names:
        assert name in exported.stdout  # the printed table
    assert report["onnx_peak_rss_bytes"] > 0
    assert (exported.saved_model / "saved_model.pb").is_file()
    files = ("mgn_fp32.tflite", "mgn_fp16.tflite", "mgn_int8.tflite", "mgn_int8_static.tflite", "mgn.onnx")
    for name in (*files, "mgn_int8_static.onnx", "mgn_int8_static.bin"):
        assert (exported.out / name).stat().st_size > 1e6
    sizes = {r["name"]: r["size_bytes"] for r in report["results"]}
    assert sizes["tflite/fp16"] < 0.55 * sizes["tflite/fp32"]
    for name in ("tflite/int8", "tflite/int8_static", "onnx/int8_static", "openvino/int8_static"):
        assert sizes[name] < 0.3 * sizes["tflite/fp32"]
    # every artefact ranked the mini_market1501 gallery, next to Keras, through the same evaluator
    checked = report["accuracy"]
    assert checked["split"]["num_query"] == 32 and checked["split"]["num_gallery"] == 32
    signatures = {n for n in names if n.startswith("saved_model_cli") or n.endswith("serving_default")}
    # the boxmot profile's artefacts take boxmot's input, not mgn_tf.inference's: parity only
    boxmot = {n for n in names if n.startswith("boxmot/")}
    assert {r["name"] for r in checked["artefacts"]} == names - signatures - boxmot - {"keras"}
    assert all(r["ok"] for r in checked["artefacts"]) and 0 < checked["keras"]["mAP"] <= 1
    assert "Accuracy on market1501 (32 queries, 32 gallery images" in exported.stdout


def test_the_report_names_the_fastest_passing_artefact_of_each_precision(exported):
    """`deployment`: per precision class, the highest images/s among the artefacts (not Keras, not a
    signature, not boxmot's) that kept their parity bound and the accuracy gate: a brute force over the
    report's rows. The printed line says the same."""
    from mgn_tf.runtime import cpu_class

    report = exported.report
    artefact_rows = {"savedmodel/embed", "tflite/fp32", "tflite/fp16", "tflite/int8", "tflite/int8_static",
                     "onnx", "onnx/int8_static", "openvino/int8_static"}  # fmt: skip
    failed = {a["name"] for a in report["accuracy"]["artefacts"] if not a["ok"]}
    deployment = report["deployment"]
    assert deployment["cpu_class"] == cpu_class()
    for kind in ("float32", "float16", "int8"):
        rows = [
            r for r in report["results"]
            if r["name"] in artefact_rows and r["ok"] and r["name"] not in failed
            and (r["precision"].startswith("int8") if kind == "int8" else r["precision"] == kind)
        ]  # fmt: skip
        best = max(rows, key=lambda r: r["images_per_s"])
        assert deployment["fastest"][kind]["name"] == best["name"]
        assert f"{kind}: {best['name']} (" in exported.stdout
    assert set(deployment["fastest"]) == {"float32", "float16", "int8"}


@pytest.mark.parametrize(
    "flags, environ, expected",
    [
        ({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"}, {}, "x86-64 AMX"),
        ({"avx2", "avx512f", "avx512_vnni"}, {}, "x86-64 AVX-512 VNNI"),
        ({"avx2", "avx_vnni"}, {}, "x86-64 AVX-VNNI"),
        ({"avx2", "fma"}, {}, "x86-64 AVX2"),  # the AMD EPYC of docs/results/bench_speed_avx2.md
        ({"avx2", "avx512f", "amx_int8"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "x86-64 AVX2 (capped)"),
    ],
)
def test_cpu_class(flags, environ, expected):
    from mgn_tf.runtime import cpu_class

    assert cpu_class(flags, environ) == expected


def _first_conv_input_range(mini_market_dir) -> tuple[float, float]:
    """The range of the first convolution's input over the calibration images, computed here from the
    pixels: caffe preprocessing (BGR, minus the ImageNet mean), widened to include 0 (zero padding)."""
    from mgn_tf.model import CAFFE_BGR_MEAN

    pixels = load_images(sorted((mini_market_dir / "bounding_box_train").glob("*.jpg")), INPUT_SIZE)
    preprocessed = pixels[..., ::-1] - np.array(CAFFE_BGR_MEAN, np.float32)
    return min(0.0, float(preprocessed.min())), max(0.0, float(preprocessed.max()))


def test_static_int8_is_calibrated_on_the_given_images(exported, mini_market_dir):
    """The first convolution's input scale in both static int8 artefacts is the range of the given
    calibration images over 255 (uint8 / int8 steps), not a default or another folder's."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter
    from onnx import numpy_helper

    calibration = exported.report["calibration"]
    assert calibration["count"] == 32 and calibration["source"].endswith("bounding_box_train")
    low, high = _first_conv_input_range(mini_market_dir)
    expected_scale = (high - low) / 255

    graph = onnx.load(exported.out / "mgn_int8_static.onnx").graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    first_conv = next(node for node in graph.node if node.op_type == "Conv")
    dequantize = producers[first_conv.input[0]]
    assert dequantize.op_type == "DequantizeLinear"
    assert float(initializers[dequantize.input[1]]) == pytest.approx(expected_scale, rel=1e-4)

    interpreter = Interpreter(model_path=str(exported.out / "mgn_int8_static.tflite"))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    conv = next(op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D")
    scale, _ = tensors[conv["inputs"][0]]["quantization"]
    assert tensors[conv["inputs"][0]]["dtype"] == np.int8
    assert scale == pytest.approx(expected_scale, rel=1e-3)


def test_accuracy_gate_fails_a_deliberately_broken_int8_artefact(tmp_path, exported, mini_market_dir):
    """Calibrated on uniform grey images, the static int8 model clips real activations: the gate (same
    bound as the session export) fails it, while the properly calibrated one passes."""
    from mgn_tf.data.datasets import load_dataset
    from mgn_tf.export import accuracy, quantize

    grey = np.full((8, *INPUT_SIZE, 3), 128, np.float32)
    calibration = quantize.Calibration(grey, [f"grey_{i}" for i in range(8)], "uniform grey")
    broken = quantize.quantize_onnx(
        exported.out / "mgn.onnx", tmp_path / "broken.onnx", calibration, {"flip_norm": True}
    )
    split = load_dataset("market1501", mini_market_dir)
    reference = accuracy.retrieval_accuracy("keras", inference.load(exported.out / "mgn.onnx"), split)
    recorded = exported.report["accuracy"]["keras"]
    assert reference.mAP == pytest.approx(recorded["mAP"], abs=1e-6)
    results = [
        accuracy.retrieval_accuracy(name, inference.load(path), split)
        for name, path in (("good", exported.out / "mgn_int8_static.onnx"), ("broken", broken))
    ]
    accuracy.apply_gate(results, reference, exported.report["accuracy"]["max_map_drop"])
    good, bad = results
    assert good.ok, good.failures
    assert not bad.ok and "points below Keras's" in bad.failures[0]


def test_saved_model_stores_weights_once(exported):
    weights = exported.report["weights_bytes"]
    assert weights > 250e6  # ~69M float32 parameters (input size does not change them)
    variables = saved_model.directory_size(exported.saved_model / "variables")
    assert variables < 1.01 * weights
    assert saved_model.directory_size(exported.saved_model) < 1.05 * weights


def test_saved_model_signatures_as_tf_serving_sees_them(exported):
    shown = saved_model.saved_model_cli("show", "--dir", str(exported.saved_model), "--all")
    serving = shown[shown.index("signature_def['serving_default']") :]
    embed = shown[shown.index("signature_def['embed']") :]
    assert "inputs['images']" in serving and "dtype: DT_STRING" in serving.split("outputs")[0]
    assert "shape: (-1)" in serving.split("outputs")[0]
    assert "dtype: DT_FLOAT" in embed.split("outputs")[0]
    assert f"shape: (-1, {INPUT_SIZE[0]}, {INPUT_SIZE[1]}, 3)" in embed
    for block in (serving, embed):
        outputs = block.split("outputs", 1)[1].split("Method name")[0]
        assert "outputs['embedding']" in block and f"shape: (-1, {EMBEDDING_DIM})" in outputs


def test_session_loader_runs_the_image_bytes_signature(exported, truth, query_files):
    """`saved_model_cli run` in a subprocess: TF1's session-based loader, the one TF Serving uses.

    (The export itself ran both signatures this way on its parity batch: see the report rows.)
    """
    encoded = np.array([p.read_bytes() for p in query_files], dtype=object)
    outputs = saved_model.run_with_session_loader(exported.saved_model, "serving_default", encoded)
    assert_close(outputs, truth(load_images(query_files, INPUT_SIZE), flip_norm=True))
    rows = {r["name"]: r for r in exported.report["results"]}
    assert rows["saved_model_cli run/embed"]["ok"] and rows["saved_model_cli run/serving_default"]["ok"]


def test_rest_payload_decoded_as_tf_serving_does(serving_signature, truth, query_files):
    request = json.loads(json.dumps(rest_client.build_predict_request([p.read_bytes() for p in query_files])))
    assert request["signature_name"] == "serving_default"
    assert set(request["instances"][0]) == {"b64"}
    images = decode_instances(request)
    assert images[0] == query_files[0].read_bytes()
    outputs = serving_signature(images=tf.constant(images))["embedding"].numpy()
    assert_close(outputs, truth(load_images(query_files, INPUT_SIZE), flip_norm=True))
    response = json.loads(json.dumps({"predictions": outputs.tolist()}))
    np.testing.assert_array_equal(rest_client.parse_predict_response(response), outputs)


def test_rest_client_over_http(serving_signature, truth, query_files):
    """The client against a stand-in for TF Serving's REST layer that runs the real signature."""

    class PredictHandler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/models/mgn:predict":
                self._reply(404, {"error": f"Servable not found for request: {self.path}"})
                return
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            images = tf.constant(decode_instances(request))
            outputs = serving_signature(images=images)["embedding"].numpy()
            self._reply(200, {"predictions": outputs.tolist()})

        def _reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PredictHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        features = rest_client.embed_files(query_files, server=url, batch_size=4)  # 2 requests
        assert_close(features, truth(load_images(query_files, INPUT_SIZE), flip_norm=True))
        with pytest.raises(RuntimeError, match="HTTP 404.*Servable not found"):
            rest_client.embed_files(query_files[:1], server=url, model_name="other")
    finally:
        server.shutdown()
        server.server_close()


def test_corrupted_image_in_a_serving_request_names_the_decode_failure(serving_signature, query_files):
    good = query_files[0].read_bytes()
    for bad in (b"this is not an image", good[: len(good) // 2]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="DecodeImage|image"):
            serving_signature(images=tf.constant([good, bad]))


def test_grpc_request_carries_a_string_tensor(serving_signature, truth, query_files):
    pytest.importorskip("tensorflow_serving.apis", reason="tensorflow-serving-api not installed")
    from tensorflow_serving.apis import predict_pb2

    images = [p.read_bytes() for p in query_files]
    request = grpc_client.build_predict_request(images, model_name="mgn", version=1)
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert (request.model_spec.name, request.model_spec.signature_name) == ("mgn", "serving_default")
    assert request.model_spec.version.value == 1
    tensor = request.inputs["images"]
    assert tensor.dtype == tf.string.as_datatype_enum and [d.size for d in tensor.tensor_shape.dim] == [6]
    outputs = serving_signature(images=tf.constant(tf.make_ndarray(tensor)))["embedding"].numpy()
    assert_close(outputs, truth(load_images(query_files, INPUT_SIZE), flip_norm=True))
    response = predict_pb2.PredictResponse()
    response.outputs["embedding"].CopyFrom(tf.make_tensor_proto(outputs))
    np.testing.assert_array_equal(grpc_client.parse_predict_response(response), outputs)


def test_models_config_parses_as_tf_serving_config():
    config_pb2 = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    from google.protobuf import text_format

    text = (REPO / "export" / "serving" / "models.config").read_text()
    config = text_format.Parse(text, config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("mgn", "/models/mgn", "tensorflow")


def test_saved_model_without_baked_flip_norm(tmp_path, truth, query_files):
    """The default export (no flip/normalisation in the graph); inference applies it on the host."""
    directory = saved_model.export_saved_model(truth.model, tmp_path, "plain", 3)
    assert directory == tmp_path / "plain" / "3"
    embedder = inference.load(tmp_path / "plain", flip_norm=True)
    assert embedder.flip_norm and not embedder.baked_flip_norm
    pixels = load_images(query_files, INPUT_SIZE)
    assert_close(embedder.embed(query_files), truth(pixels, flip_norm=True))
    plain = embedder.loaded.signatures["embed"](images=tf.constant(pixels))["embedding"].numpy()
    assert_close(plain, truth(pixels))


def _run_export(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m export ARGS`, or the export command's `run()` after `code` (e.g. a patched bound)."""
    entry = ["-m", "export"] if code is None else ["-c", f"{code}\nfrom mgn_tf.export.cli import run\nrun()"]
    return subprocess.run(
        [sys.executable, *entry, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "--weights: required"),
        (["--weights={run}"], "--out: required"),
        (["--weights={run}", "--out={out}", "--formats=savedmodel,pytorch"], "savedmodel,tflite,onnx"),
        (["--weights={run}", "--out={out}", "--tflite_variants=fp32,int4"], "fp32,fp16,int8"),
        (["--weights={run}", "--out={out}", "--input_height=100", "--input_width=32"], "multiple of 96"),
        (["--weights={run}", "--out={out}", "--input_height=96"], "pass both or neither"),
        (["--weights={run}/nothing", "--out={out}"], "--weights={run}/nothing: "),
        (["--weights={run}", "--out={out}", "--no_such_flag"], "no_such_flag"),
        # --weights: a run whose weights file is not HDF5 or HDF5 of something else, a folder without
        # weights, a file of another kind
        (["--weights={junk}", "--out={out}"], "--weights={junk}: {junk}/final.weights.h5 is not a weights"),
        (["--weights={other}", "--out={out}"], "--weights={other}: cannot load {other}/final.weights.h5 as"),
        (["--weights={empty}", "--out={out}"], "--weights={empty}: run directory {empty} has no"),
        (["--weights={run}/config.json", "--out={out}"], "--weights={run}/config.json: {run}/config.json"),
        (["--weights={run}", "--out={run}/config.json"], "--out={run}/config.json: exists and is not a"),
        (["--weights={run}", "--out={out}", "--parity_images={empty}"], "{empty} holds 0 distinct"),
        (["--weights={run}", "--out={out}", "--parity_images={run}/none"], "{run}/none: not a directory"),
        (["--weights={run}", "--out={out}", "--onnx_variants=fp32,int4"], "fp32,int8_static"),
        (["--weights={run}", "--out={out}", "--profile=boxmot,torch"], "subset of default,boxmot"),
        # a flag of the default profile without it: the user expects artefacts boxmot alone does not write
        (["--weights={run}", "--out={out}", "--profile=boxmot", "--formats=onnx"], "--formats: used by the"),
        (["--weights={run}", "--out={out}", "--calibration_images={empty}"], "{empty}: no images to"),
        # the run records no training data: static int8, asked for by name, needs --calibration_images
        (["--weights={run}", "--out={out}", "--onnx_variants=int8_static"], "--calibration_images: needed"),
        (
            [
                "--weights={run}",
                "--out={out}",
                "--formats=onnx",
                "--onnx_variants=fp32",
                "--accuracy_dataset=market1501",
                "--accuracy_data_dir={empty}",
            ],
            "--accuracy_dataset/--accuracy_data_dir: --dataset=market1501 --data_dir={empty}: ",
        ),  # fmt: skip
    ],
)
def test_cli_usage_errors_exit_2_before_any_work(tmp_path, exported, args, expected):
    """Bad or missing flags and paths: one line naming the flag and path, exit code 2, no traceback (1 is
    kept for a broken parity bound)."""
    paths = {name: tmp_path / name for name in ("out", "junk", "other", "empty")}
    paths["run"] = exported.run_dir
    for name in ("junk", "other", "empty"):
        paths[name].mkdir()
    for name in ("junk", "other"):
        (paths[name] / "config.json").write_bytes((exported.run_dir / "config.json").read_bytes())
    (paths["junk"] / "final.weights.h5").write_bytes(b"not an HDF5 file")
    with h5py.File(paths["other"] / "final.weights.h5", "w") as other:
        other["layers/dense/vars/0"] = np.zeros(3, np.float32)
    result = _run_export(*(a.format(**paths) for a in args))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected.format(**paths) in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not paths["out"].exists()


def test_cli_exits_1_naming_the_artefact_and_the_bound_it_breaks(tmp_path, exported):
    """A bound no artefact can meet (max rel diff <= -1): the export runs, then exits 1."""
    out = tmp_path / "o"
    result = _run_export(
        f"--weights={exported.run_dir}", f"--out={out}", "--formats=savedmodel", "--nosession_loader_check",
        "--parity_count=2", "--speed_seconds=0",
        code="from mgn_tf.export import parity\nparity.FLOAT32_MAX_REL_DIFF = -1.0",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "EXPORT FAILED: savedmodel/embed (float32) breaks a parity bound: max rel diff 0 > -1" in (
        result.stderr
    ), result.stderr[-3000:]
    report = json.loads((out / "export_report.json").read_text())
    assert not report["ok"] and "FAIL: max rel diff" in result.stdout  # the table


def test_an_out_folder_another_export_writes_is_refused(tmp_path, exported):
    """One export writes a folder: a second one exits 2 before writing, naming the holder's pid."""
    from helpers.locking import refused_while_held

    out = tmp_path / "out"
    pid, error = refused_while_held(
        out, lambda: _run_export(f"--weights={exported.run_dir}", f"--out={out}", "--formats=savedmodel")
    )
    assert f"--out={out} is in use by pid {pid} on " in error
    assert [p.name for p in out.iterdir()] == [".lock"]


def test_default_export_of_a_run_copied_from_elsewhere_skips_only_what_it_cannot_calibrate(
    tmp_path, exported
):
    """A run whose training images are not on this machine (it records none here) and no calibration
    folder: the default variants export every artefact but static int8, say why, and record it."""
    out = tmp_path / "out"
    result = _run_export(
        f"--weights={exported.run_dir}", f"--out={out}", "--formats=tflite", "--nosession_loader_check",
        "--noaccuracy", "--parity_count=2", "--speed_seconds=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipping tflite_int8_static: no calibration images" in result.stdout
    report = json.loads((out / "export_report.json").read_text())
    assert set(report["artefacts"]) == {"tflite_fp32", "tflite_fp16", "tflite_int8"}
    assert "--calibration_images=DIR" in report["skipped"]["tflite_int8_static"]
    assert not (out / "mgn_int8_static.tflite").exists()


def test_calibration_falls_back_on_the_parity_images(exported, mini_market_dir):
    """Without --calibration_images and without the run's training images, static int8 is calibrated on
    --parity_images when they are given (asked for by name or by default)."""
    parity_images = mini_market_dir / "bounding_box_test"
    code = (
        "import sys\nfrom absl import flags\nfrom mgn_tf.artifacts import find_run_files\n"
        "from mgn_tf.export import cli\ncli.define_flags()\nflags.FLAGS(sys.argv)\n"
        "c = cli.calibration_for(find_run_files(flags.FLAGS.weights), (96, 32))\n"
        "print('SOURCE', c.source, len(c.files))"
    )
    for variants in ([], ["--onnx_variants=int8_static"]):
        result = subprocess.run(
            [sys.executable, "-c", code, f"--weights={exported.run_dir}", "--out=unused",
             f"--parity_images={parity_images}", *variants],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"SOURCE {parity_images} 32" in result.stdout
        assert "The run's training images cannot be read" in result.stdout


# ------------------------------------------------------------------------------------ serving clients


def test_client_refuses_unreadable_files_before_sending(tmp_path, query_files):
    good = query_files[0].read_bytes()
    cases = {
        "garbage.jpg": b"\x00\x01 not an image",
        "truncated.jpg": good[: len(good) // 2],
        "empty.png": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "missing.jpg"]:
        with pytest.raises(common.UnreadableImageError, match=name):
            common.read_image_file(tmp_path / name)
    assert common.read_image_file(query_files[0]) == good
    # Nothing listens on port 9: an UnreadableImageError (not a connection error) shows nothing was sent.
    with pytest.raises(common.UnreadableImageError, match="truncated.jpg"):
        rest_client.embed_files([query_files[0], tmp_path / "truncated.jpg"], server="http://127.0.0.1:9")


def test_rest_response_errors_and_urls():
    with pytest.raises(RuntimeError, match="Servable not found"):
        rest_client.parse_predict_response({"error": "Servable not found for request: Latest(mgn)"})
    named = {"predictions": [{"embedding": [1.0, 2.0]}, {"embedding": [3.0, 4.0]}]}
    np.testing.assert_array_equal(rest_client.parse_predict_response(named), [[1, 2], [3, 4]])
    assert rest_client.predict_url("localhost:8501", "mgn") == "http://localhost:8501/v1/models/mgn:predict"
    assert rest_client.predict_url("http://h:1/", "m", 3) == "http://h:1/v1/models/m/versions/3:predict"


def test_cosine_ranking():
    gallery = np.eye(4, dtype=np.float32)
    query = np.array([[0.1, 0.9, 0.0, 0.2]], np.float32)
    order, scores = common.cosine_ranking(query, gallery, top_k=2)
    assert order.tolist() == [[1, 3]] and scores[0, 0] > scores[0, 1]
