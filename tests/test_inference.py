"""mgn_tf.inference.load(...).embed(...) over every format, against the Keras model on real images.

Uses the session's single export (`exported` in conftest.py: one tf2onnx conversion per session),
exported with flip-averaging and L2 normalisation baked in, and its run directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.exported import INPUT_SIZE, assert_close

from mgn_tf import artifacts, inference
from mgn_tf.images import ImageReadError, load_images

# One worker runs this module and the other one of the pair (test_export.py, test_inference.py): one export.
pytestmark = pytest.mark.xdist_group("export")

ARTEFACTS = {
    # name: (path under the export dir, format, precision); all exported with flip/normalisation baked in
    "savedmodel": ("mgn", "savedmodel", "float32"),
    "tflite_fp32": ("mgn_fp32.tflite", "tflite", "float32"),
    "tflite_fp16": ("mgn_fp16.tflite", "tflite", "float16"),
    "tflite_int8": ("mgn_int8.tflite", "tflite", "int8"),
    "tflite_int8_static": ("mgn_int8_static.tflite", "tflite", "int8 static"),
    "onnx": ("mgn.onnx", "onnx", "float32"),
    "onnx_int8_static": ("mgn_int8_static.onnx", "onnx", "int8 static"),
    "openvino_int8_static": ("mgn_int8_static.xml", "openvino", "int8 static"),
}


@pytest.fixture(scope="module")
def onnx_embedder(exported):
    return inference.load(exported.out / "mgn.onnx")


@pytest.mark.parametrize("name", ARTEFACTS)
def test_exported_artefact_embeds_like_keras(name, exported, truth, query_files):
    relative, fmt, precision = ARTEFACTS[name]
    embedder = inference.load(exported.out / relative)
    assert (embedder.format, embedder.input_size, embedder.flip_norm) == (fmt, INPUT_SIZE, True)
    features = embedder.embed(query_files)
    assert features.shape == (len(query_files), 2048)
    assert_close(features, truth(load_images(query_files, INPUT_SIZE), flip_norm=True), precision)


@pytest.mark.parametrize("source", ["run_dir", "checkpoint", "checkpoint_weights"])
def test_keras_run_embeds_like_keras(source, exported, truth, query_files):
    path = {
        "run_dir": exported.run_dir,  # final.weights.h5 + config.json
        "checkpoint": exported.checkpoint,  # checkpoints/step_N/: config.json two folders up
        "checkpoint_weights": exported.checkpoint / "trainer.weights.h5",
    }[source]
    flip_norm = source == "checkpoint"
    embedder = inference.load(path, flip_norm=flip_norm)
    assert (embedder.format, embedder.input_size, embedder.flip_norm) == ("keras", INPUT_SIZE, flip_norm)
    pixels = load_images(query_files, INPUT_SIZE)
    assert_close(embedder.embed(query_files), truth(pixels, flip_norm=flip_norm))


def test_saved_model_paths_resolve_to_the_highest_version(exported, tmp_path):
    version_dir = exported.out / "mgn" / "1"
    for path in (exported.out, exported.out / "mgn", version_dir):
        assert artifacts.find_saved_model(path) == version_dir
    for version in ("2", "10"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "saved_model.pb").write_bytes(b"")
    assert artifacts.find_saved_model(tmp_path / "m") == tmp_path / "m" / "10"


def test_array_input_uint8_and_float_agree(onnx_embedder):
    images = np.random.default_rng(0).integers(0, 256, (3, *INPUT_SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(onnx_embedder.embed(images), onnx_embedder.embed(images.astype(np.float64)))


def test_batches_and_dynamic_batch_give_the_same_embeddings(exported, query_files):
    embedder = inference.load(exported.out / "mgn_fp32.tflite")
    pixels = load_images(query_files, INPUT_SIZE)
    whole = embedder.embed(pixels, batch_size=32)
    np.testing.assert_allclose(embedder.embed(pixels, batch_size=4), whole, atol=1e-6)  # batches of 4 then 2
    np.testing.assert_allclose(embedder.embed(pixels[:1]), whole[:1], atol=1e-6)
    assert embedder.embed(pixels[:0]).shape == (0, 2048)


def test_tflite_fixed_batch_is_padded(tmp_path):
    """A .tflite with a fixed batch of 4 (no dynamic batch) still embeds any number of images."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*INPUT_SIZE, 3), batch_size=4)
    x = keras.layers.Conv2D(8, 3)(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path / "fixed.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    embedder = inference.load(path)
    images = np.random.default_rng(1).uniform(0, 255, (6, *INPUT_SIZE, 3)).astype(np.float32)
    padded = np.concatenate([images, np.zeros((2, *INPUT_SIZE, 3), np.float32)])
    expected = np.concatenate([model(padded[:4]).numpy(), model(padded[4:]).numpy()])[:6]
    np.testing.assert_allclose(embedder.embed(images), expected, rtol=1e-5, atol=1e-4)
    assert not embedder.flip_norm  # no export info beside it


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((*INPUT_SIZE, 3), np.uint8), r"rank 3.*images\[None\]"),
        (np.zeros((2, 64, 32, 3), np.uint8), r"must be 96x32 .*got 64x32"),
        (np.zeros((2, 32, 96, 3), np.uint8), r"must be 96x32 .*got 32x96"),
        (np.zeros((2, *INPUT_SIZE, 4), np.uint8), r"3 \(RGB\) channels, got 4"),
        (np.zeros((2, *INPUT_SIZE, 1), np.uint8), r"3 \(RGB\) channels, got 1"),
        (np.full((1, *INPUT_SIZE, 3), "a"), r"numeric .*dtype <U1"),
        (np.zeros((1, *INPUT_SIZE, 3), bool), r"numeric .*dtype bool"),
        (np.full((1, *INPUT_SIZE, 3), -100.0), r"raw RGB in 0..255 .*got -100..-100"),
        (np.full((1, *INPUT_SIZE, 3), np.nan), r"NaN"),
        ("a.jpg", r"list of image paths, not a single path"),
        (["a.jpg", np.zeros(3)], r"only file paths"),
    ],
)
def test_wrong_inputs_raise_clear_errors(onnx_embedder, images, message):
    with pytest.raises(ValueError, match=message):
        onnx_embedder.embed(images)


def test_unreadable_image_file_is_named(onnx_embedder, tmp_path, query_files):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        onnx_embedder.embed([query_files[0], broken])
    with pytest.raises(ImageReadError, match="missing.jpg"):
        onnx_embedder.embed([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="batch_size"):
        onnx_embedder.embed([query_files[0]], batch_size=0)


def test_load_errors(exported, tmp_path):
    with pytest.raises(inference.InputSizeError, match="exported for 96x32 images, not 192x64"):
        inference.load(exported.out / "mgn.onnx", input_size=(192, 64))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference.load(tmp_path / "nothing")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown model file type"):
        inference.load(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        inference.load(tmp_path)
    lone = tmp_path / "lone" / "final.weights.h5"
    lone.parent.mkdir()
    lone.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        inference.load(lone)
    (lone.parent / "config.json").write_text(json.dumps({"num_classes": 3}))
    with pytest.raises(ValueError, match="lacks input_height, input_width"):
        inference.load(lone.parent)


def test_formats_are_detected(exported):
    out: Path = exported.out
    assert artifacts.detect_format(exported.run_dir) == "keras"
    assert artifacts.detect_format(exported.checkpoint) == "keras"
    assert artifacts.detect_format(out / "mgn") == "savedmodel"
    assert artifacts.detect_format(out / "mgn_int8.tflite") == "tflite"
    assert artifacts.detect_format(out / "mgn.onnx") == "onnx"
    assert artifacts.detect_format(out / "mgn_int8_static.xml") == "openvino"


def test_a_gallery_built_from_the_run_accepts_its_float32_exports(exported, query_files, mini_market_dir):
    """The gallery fingerprint: the run and its fp32 ONNX / TFLite give the same model; queries embedded by
    an export find what the run's own embeddings find. A different fresh model is refused."""
    from helpers.exported import make_run_dir

    from mgn_tf.gallery import Gallery, GalleryError

    files = sorted((mini_market_dir / "bounding_box_train").glob("*.jpg"))[:8]
    gallery = Gallery.build(inference.load(exported.run_dir), files)
    expected = [[m.path for m in row] for row in gallery.search(query_files, k=5).matches]
    for relative in ("mgn.onnx", "mgn_fp32.tflite"):
        gallery.embedder = None
        with_export = Gallery.load(gallery.save(exported.out.parent / f"gallery_{relative}"),
                                   inference.load(exported.out / relative))  # fmt: skip
        assert [[m.path for m in row] for row in with_export.search(query_files, k=5).matches] == expected
    other = inference.load(make_run_dir(exported.out.parent / "other_model", seed=7))
    with pytest.raises(GalleryError, match="not the model that built the index"):
        Gallery.load(exported.out.parent / "gallery_mgn.onnx", other)


@pytest.fixture(autouse=True)
def runtime_cache(tmp_path, monkeypatch) -> Path:
    """The runtime choice cache of runtime auto, per test (never the user's ~/.cache/mgn_tf)."""
    monkeypatch.setenv(inference.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / inference.RUNTIME_CACHE_NAME


def saved_choices(cache: Path) -> dict:
    return json.loads(cache.read_text())["choices"]


@pytest.mark.parametrize("runtime", ["auto", "native"])
def test_keras_embedder_freezes_for_large_jobs_and_still_embeds_like_keras(
    runtime, exported, truth, query_files, runtime_cache, capsys
):
    """The frozen snapshot (a TensorFlow graph with BatchNorm fused into the convolutions, or with
    runtime auto whichever of that graph and OpenVINO measured faster here, at the job's batch size)
    embeds like the Keras model on variables; it is built only for a job of at least FREEZE_MIN_IMAGES
    runs (here lowered to 8), counted with flips. Either engine auto can pick is also checked on its own
    (native here, openvino below); the cache's use is checked with the cheaper .onnx file (next test)."""
    from mgn_tf.inference import KerasEmbedder

    embedder = KerasEmbedder(truth.model, exported.run_dir, runtime=runtime)
    embedder.FREEZE_MIN_IMAGES = 8
    pixels = load_images(query_files, INPUT_SIZE)  # 6 images
    assert_close(embedder.embed(pixels), truth(pixels))
    assert (embedder.frozen, embedder.engine) == (False, "tensorflow")  # 6 runs
    assert_close(embedder.embed(pixels, flip=True, normalize=True), truth(pixels, flip_norm=True))
    assert embedder.frozen  # 12 runs
    assert_close(embedder.embed(pixels[:5]), truth(pixels[:5]))  # another batch size
    never = KerasEmbedder(truth.model, exported.run_dir, frozen=False)
    never.expect(10**6)
    assert not never.frozen
    if runtime == "native":
        assert (embedder.engine, embedder.runtime_choice) == ("tensorflow frozen", None)
        return
    choice = embedder.runtime_choice
    speeds = choice["candidates"]
    # No LiteRT: a model handed over in memory (training's evaluations) is not converted, only `load`s are.
    assert set(speeds) == {"tensorflow frozen", "openvino"} and not choice["excluded"]
    assert embedder.engine == choice["chosen"] == max(speeds, key=speeds.get) and not choice["cached"]
    assert choice["key"]["batch_size"] == len(pixels) and choice["key"]["input_size"] == list(INPUT_SIZE)
    assert f"Loaded {exported.run_dir} on {embedder.engine}, fastest of" in capsys.readouterr().out
    assert [entry["chosen"] for entry in saved_choices(runtime_cache).values()] == [embedder.engine]


def test_onnx_auto_runtime_is_measured_once_per_machine(
    exported, truth, query_files, runtime_cache, monkeypatch, capsys
):
    """runtime auto for an .onnx file: onnxruntime or OpenVINO, whichever measured faster, for a large job
    (CHOOSE_MIN_IMAGES lowered to 6); an unreadable cache is said and measured again, a cached choice is not
    measured again (the file is not rewritten) and whichever engine the cache names embeds within the
    float32 bounds of Keras; another machine (other CPU flags) is measured again."""
    pixels = load_images(query_files, INPUT_SIZE)
    expected = truth(pixels, flip_norm=True)

    def large_job() -> inference.Embedder:
        embedder = inference.load(exported.out / "mgn.onnx")
        embedder.CHOOSE_MIN_IMAGES = len(query_files)
        assert_close(embedder.embed(query_files), expected)
        assert embedder.engine == embedder.runtime_choice["chosen"]
        return embedder

    runtime_cache.parent.mkdir(parents=True)
    runtime_cache.write_bytes(b'{"choices": {"trunc')  # a copy cut short
    measured = large_job()
    assert f"Runtime choice cache {runtime_cache} is unreadable" in capsys.readouterr().out
    assert not measured.runtime_choice["cached"]
    assert set(measured.runtime_choice["candidates"]) == {"onnxruntime", "openvino"}
    choices = saved_choices(runtime_cache)
    assert [entry["chosen"] for entry in choices.values()] == [measured.engine]
    written = runtime_cache.stat().st_mtime_ns
    cached = large_job()
    assert (cached.engine, cached.runtime_choice["cached"]) == (measured.engine, True)
    assert runtime_cache.stat().st_mtime_ns == written
    assert "(cached from" in capsys.readouterr().out
    (entry_id, entry) = choices.popitem()
    other = next(name for name in entry["candidates"] if name != entry["chosen"])
    runtime_cache.write_text(json.dumps({"choices": {entry_id: {**entry, "chosen": other}}}))
    assert large_job().engine == other
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"sse2"})  # a key input: another CPU
    other_machine = large_job()
    assert not other_machine.runtime_choice["cached"] and len(saved_choices(runtime_cache)) == 2
    assert other_machine.runtime_choice["key"]["cpu_flags"] == "sse2"


def test_a_run_may_run_on_its_tflite_conversion_made_once_per_weights(
    exported, truth, query_files, runtime_cache, monkeypatch, capsys
):
    """runtime auto for a run opened with `load` also measures LiteRT on a TFLite float32 conversion of its
    weights (the fastest float32 runtime on AVX2 CPUs), converted once and kept beside the choice cache:
    a later job on LiteRT reuses the file (not converted again) and embeds within the float32 bounds of
    Keras; the least recently used conversions beyond LITERT_KEEP are removed, each said in a line."""
    pixels = load_images(query_files, INPUT_SIZE)
    expected = truth(pixels)
    folder = runtime_cache.parent / inference.LITERT_FOLDER
    folder.mkdir(parents=True)
    for age, name in enumerate(["mgn_fp32_1x1_old.tflite", "mgn_fp32_1x1_older.tflite"]):
        (folder / name).write_bytes(b"another model's conversion")
        os.utime(folder / name, (1e9 - age, 1e9 - age))
    monkeypatch.setattr(inference, "LITERT_KEEP", 2)

    def large_job() -> inference.Embedder:
        embedder = inference.load(exported.run_dir)
        embedder.FREEZE_MIN_IMAGES = len(query_files)
        assert_close(embedder.embed(pixels), expected)
        assert embedder.engine == embedder.runtime_choice["chosen"]
        return embedder

    measured = large_job()
    assert set(measured.runtime_choice["candidates"]) | set(measured.runtime_choice["excluded"]) == {
        "tensorflow frozen", "openvino", "litert"
    }  # fmt: skip
    assert not measured.runtime_choice["excluded"]  # LiteRT within the float32 bounds of TensorFlow
    out = capsys.readouterr().out
    (converted,) = folder.glob(f"mgn_fp32_{INPUT_SIZE[0]}x{INPUT_SIZE[1]}_*.tflite")
    assert (
        f"Converting the weights to TFLite float32 for runtime auto, once for these weights: {converted}\n"
        in out
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted([converted.name, "mgn_fp32_1x1_old.tflite"])
    assert f"Removed {folder / 'mgn_fp32_1x1_older.tflite'} (runtime auto keeps the 2 most recently" in out
    (entry_id, entry) = saved_choices(runtime_cache).popitem()
    runtime_cache.write_text(json.dumps({"choices": {entry_id: {**entry, "chosen": "litert"}}}))
    inode = converted.stat().st_ino
    on_litert = large_job()  # the cached choice: LiteRT, on the conversion made above
    assert (on_litert.engine, on_litert.runtime_choice["cached"]) == ("litert", True)
    assert "Converting" not in capsys.readouterr().out and converted.stat().st_ino == inode


def test_the_conversion_digest_changes_with_any_weight():
    """`weights_digest`, which names a run's cached conversion: equal for a copy of the same weights,
    different after one value changes by one float32 step."""
    model = keras.Sequential([keras.Input((4, 2, 3)), keras.layers.Conv2D(2, 1), keras.layers.Flatten()])
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    assert inference.weights_digest(copy) == inference.weights_digest(model)
    kernel, bias = copy.get_weights()
    kernel.flat[3] = np.nextafter(kernel.flat[3], np.float32(np.inf))
    copy.set_weights([kernel, bias])
    assert inference.weights_digest(copy) != inference.weights_digest(model)


def test_a_runtime_outside_the_float32_bounds_or_failing_to_build_is_excluded(runtime_cache, capsys):
    """The choice's own rules on stand-in runtimes (numpy functions; no model to convert): the first
    candidate is the parity reference, one off by 0.1 % or one that cannot be built is excluded and why is
    printed, and the faster of the rest is chosen and saved."""
    weights = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)

    def linear(scale: float):
        return lambda: lambda batch: batch.reshape(len(batch), 3) @ (weights * np.float32(scale))

    def broken():
        raise ValueError("unsupported operation Foo\nwith details")

    candidates = {"reference": linear(1.0), "off": linear(1.001), "broken": broken, "same": linear(1.0)}
    choice = inference.choose_runtime(Path("m.onnx"), inference.runtime_key("onnx", (1, 1), 4, 1), candidates)
    report = choice.report
    assert choice.engine in ("reference", "same") and set(report["candidates"]) == {"reference", "same"}
    assert report["excluded"]["broken"] == "failed: unsupported operation Foo with details"
    assert re.fullmatch(r"max rel diff 0\.001\d* > 0\.0001 against reference", report["excluded"]["off"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"Runtime {name} excluded from the choice: {report['excluded'][name]}" for name in ("off", "broken")
    ]
    assert (
        lines[2].startswith(f"Loaded m.onnx on {choice.engine}, fastest of ")
        and "; excluded: off max" in lines[2]
    )
    assert [entry["chosen"] for entry in saved_choices(runtime_cache).values()] == [choice.engine]


def test_runtime_cache_location_and_unreadable_files(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(inference.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inference.runtime_cache_file() == tmp_path / "xdg" / "mgn_tf" / "runtime_choice.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert inference.runtime_cache_file() == Path.home() / ".cache" / "mgn_tf" / "runtime_choice.json"
    cache = tmp_path / "new" / "runtime_choice.json"
    for content in (b"\xff\xfe", b"[1, 2]", b"{}"):
        cache.parent.mkdir(exist_ok=True)
        cache.write_bytes(content)
        assert inference.read_runtime_cache(cache) == {}
        (line,) = capsys.readouterr().out.splitlines()
        assert line.startswith(f"Runtime choice cache {cache} is unreadable (") and "measuring again" in line
        key = inference.runtime_key("onnx", INPUT_SIZE, 4, 2)
        inference.save_runtime_choice(cache, {"chosen": "onnxruntime", "key": key})
        assert inference.read_runtime_cache(cache) == {
            inference.key_id(key): {"chosen": "onnxruntime", "key": key}
        }
    assert [p.name for p in cache.parent.iterdir()] == ["runtime_choice.json"]  # no temporary file left


def test_openvino_runs_a_run_and_its_onnx_export_like_keras(exported, truth, query_files):
    """runtime openvino: the run's weights (converted in memory, at once) and the .onnx export, whose
    metadata (flip-averaging baked in) OpenVINO reads too."""
    pixels = load_images(query_files, INPUT_SIZE)
    run = inference.load(exported.run_dir, runtime="openvino")
    assert (run.format, run.engine, run.frozen, run.input_size) == ("keras", "openvino", True, INPUT_SIZE)
    assert_close(run.embed(query_files), truth(pixels))
    onnx = inference.load(exported.out / "mgn.onnx", runtime="openvino")
    assert (onnx.format, onnx.engine, onnx.input_size, onnx.flip_norm) == (
        "onnx",
        "openvino",
        INPUT_SIZE,
        True,
    )
    assert_close(onnx.embed(query_files), truth(pixels, flip_norm=True))
    assert inference.load(exported.out / "mgn.onnx").engine == "onnxruntime"


@pytest.mark.parametrize(
    "relative, runtime, words",
    [
        ("mgn", "openvino", "not a savedmodel model"),
        ("mgn_fp32.tflite", "openvino", "not a tflite model"),
        ("mgn.onnx", "fastest", "runtime must be one of auto, native, openvino"),
    ],
)
def test_a_runtime_that_cannot_run_the_model_is_refused(exported, relative, runtime, words):
    with pytest.raises(inference.RuntimeChoiceError, match=words):
        inference.load(exported.out / relative, runtime=runtime)
