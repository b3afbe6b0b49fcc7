"""Feature response maps (paper Fig. 2): `mgn_tf.evaluation.response` and `python -m mgn_tf.visualize`.

Truths: the L2 norm over channels of each branch's feature map computed here by calling the model's own
sub-models one after another (caffe_preprocess -> backbone_trunk -> <branch>_branch) in numpy; the paper's
map sizes (12x4 Global, 24x8 Part at 384x128) and the stripes' rows by hand; a stand-in model whose
response is forced by the brightness of the image, so that an image with one bright band has its known
strongest location; the PNG's own pixels and size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from mgn_tf.evaluation import response
from mgn_tf.evaluation.plots import HEAT_ALPHA

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
PAPER_SIZE = (384, 128)


def visualize(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mgn_tf.visualize", *args]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def branch_norms(mgn: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """The L2 norm over channels of every branch's output, by calling the sub-models in sequence."""
    x = mgn.get_layer("caffe_preprocess")(images.astype(np.float32))
    shared = mgn.get_layer("backbone_trunk")(x, training=False)
    norms = {}
    for branch in ("global", "part2", "part3"):
        fmap = np.asarray(mgn.get_layer(f"{branch}_branch")(shared, training=False), np.float64)
        norms[branch] = np.sqrt((fmap**2).sum(axis=-1))
    return norms


@pytest.fixture(scope="module")
def paper_mgn() -> keras.Model:
    from mgn_tf.model import build_mgn

    keras.utils.set_random_seed(3)
    return build_mgn(num_classes=5, input_size=PAPER_SIZE)


def test_maps_are_the_channel_norms_of_each_branch_at_the_papers_sizes(paper_mgn):
    images = np.random.default_rng(0).uniform(0, 255, (2, *PAPER_SIZE, 3)).astype(np.float32)
    maps = response.response_maps(paper_mgn, images, batch_size=1)
    truth = branch_norms(paper_mgn, images)
    assert maps["global"].shape == (2, 12, 4)
    assert maps["part2"].shape == maps["part3"].shape == (2, 24, 8)
    for branch, expected in truth.items():
        np.testing.assert_allclose(maps[branch], expected, rtol=2e-5, atol=1e-4 * expected.max())
    # the stripes the model max-pools: 24 rows cut into 2 (12 each) and 3 (8 each)
    assert maps["stripe_rows"] == {"part2": [(0, 12), (12, 24)], "part3": [(0, 8), (8, 16), (16, 24)]}
    np.testing.assert_array_equal(maps["part3_stripes"][1], maps["part3"][:, 8:16])
    # the embedding model (what inference uses) gives the same maps: the branches are shared layers
    from mgn_tf.model import embedding_model

    of_embedding = response.response_maps(embedding_model(paper_mgn), images[:1])
    np.testing.assert_allclose(of_embedding["part2"], maps["part2"][:1], rtol=1e-5, atol=1e-5)


def test_a_model_without_mgn_branches_is_refused():
    plain = keras.Sequential([keras.Input((96, 32, 3)), keras.layers.Conv2D(4, 3)], name="plain")
    with pytest.raises(ValueError, match="no layer 'global_branch'"):
        response.response_model(plain)
    with pytest.raises(ValueError, match="branches must be among"):
        response.response_model(plain, branches=("global", "head"))


# --------------------------------------------------------------- a response forced by one bright band


def brightness_model(size: tuple[int, int]) -> keras.Model:
    """A stand-in response model: every branch's 2048 channels at a location are the mean brightness of
    the image patch under it (Global at stride 32, the Parts at stride 16, as MGN), so the L2 norm there is
    sqrt(2048) times that brightness."""
    images = keras.Input((*size, 3))
    gray = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=-1, keepdims=True) / 255.0)(images)
    outputs = {}
    for branch, stride in (("global", 32), ("part2", 16), ("part3", 16)):
        pooled = keras.layers.AveragePooling2D(stride)(gray)
        outputs[branch] = keras.layers.Conv2D(2048, 1, use_bias=False, kernel_initializer="ones")(pooled)
    return keras.Model(images, outputs)


def banded_image(size: tuple[int, int], rows: tuple[int, int]) -> np.ndarray:
    image = np.full((*size, 3), 20, np.uint8)
    image[rows[0] : rows[1]] = 235
    return image


@pytest.mark.parametrize(
    "title",
    [
        "/home/someone/datasets/Market-1501-v15.09.15/bounding_box_test/a/deep/folder/0005_c1s1_001351_02.jpg"
        ": feature response maps (L2 norm over channels) at 96x32",
        "/x/" + "folder_name_without_any_separator_" * 6 + ".jpg: maps",
    ],
)
def test_a_long_title_is_wrapped_inside_the_figure(tmp_path, title):
    """No title line runs off the figure: the white margins left and right of the title stay white, and
    the title takes more than one line."""
    rng = np.random.default_rng(0)
    maps = {
        "global": rng.uniform(size=(3, 1)),
        "part2": rng.uniform(size=(6, 2)),
        "part3": rng.uniform(size=(6, 2)),
    }
    path = response.plot_response_maps(
        rng.uniform(0, 255, (96, 32, 3)), maps, tmp_path / "t.png", title=title
    )
    png = np.asarray(Image.open(path).convert("L"))
    title_rows = png[: response.read_layout(path)["panels"][0]["box"][1] - response.PANEL_TITLE_HEIGHT]
    inked = np.flatnonzero((title_rows < 200).any(axis=0))
    assert inked.size and inked[0] >= response.MARGIN // 2 and inked[-1] < png.shape[1] - response.MARGIN // 2
    inked_rows = np.flatnonzero((title_rows < 200).any(axis=1))
    assert inked_rows[-1] - inked_rows[0] > response.TITLE_LINE_HEIGHT  # wrapped


def test_one_bright_band_puts_every_maximum_in_its_stripe_and_figure_panel(tmp_path):
    size = PAPER_SIZE
    band = (288, 320)  # inside the bottom third (256..384) and the bottom half (192..384) of the image
    image = banded_image(size, band)
    maps = response.image_maps(response.response_maps(brightness_model(size), image[None]), 0)
    found = response.peaks(maps)
    assert found["part3"]["peak_stripe"] == 3 and found["part2"]["peak_stripe"] == 2
    # map rows under the band: Part rows 18-19 (stride 16), Global row 9 (stride 32)
    assert 18 <= found["part3"]["argmax"][0] <= 19 and found["global"]["argmax"][0] == 9
    assert found["part3"]["max"] == pytest.approx(np.sqrt(2048) * 235 / 255, rel=1e-5)

    path = response.plot_response_maps(image, maps, tmp_path / "band.png", title="one bright band")
    layout = response.read_layout(path)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert [png.shape[1], png.shape[0]] == layout["size"]
    titles = [p["title"] for p in layout["panels"]]
    assert titles == ["Image", "Global", *(f"Part-2 stripe {k}" for k in (1, 2)),
                      *(f"Part-3 stripe {k}" for k in (1, 2, 3))]  # fmt: skip
    boxes = [p["box"] for p in layout["panels"]]
    assert all(b[2] <= c[0] for b, c in zip(boxes, boxes[1:], strict=False))  # left to right, no overlap
    assert len({(b[3] - b[1], b[2] - b[0]) for b in boxes}) == 1  # every panel the same size
    scale = layout["scale"]
    left, top, right, bottom = boxes[0]
    np.testing.assert_array_equal(png[top:bottom, left:right], np.kron(image, np.ones((scale, scale, 1))))

    # The heat maps are red (jet's upper end) over the band and blue (its lower end) far from it, with
    # the image blended in at 1 - HEAT_ALPHA: red minus blue is large over the band, blue minus red away.
    def panel_rows(panel: dict, rows: tuple[int, int]) -> np.ndarray:
        left, top, right, _ = panel["box"]
        return png[top + rows[0] * scale : top + rows[1] * scale, left:right].reshape(-1, 3).mean(0)

    def redness(panel: dict, rows: tuple[int, int]) -> float:
        red, _, blue = panel_rows(panel, rows)
        return float(red - blue)

    inside = (band[0] + 8, band[1] - 8)
    full = HEAT_ALPHA * 127  # jet's ends are (0.5, 0, 0) and (0, 0, 0.5)
    global_panel, stripe3 = layout["panels"][1], layout["panels"][6]
    assert redness(global_panel, inside) > 0.9 * full and redness(global_panel, (16, 64)) < -0.9 * full
    assert redness(stripe3, inside) > 0.9 * full and redness(stripe3, (band[1] + 16, 376)) < -0.9 * full
    # Part-3 stripe 3 holds the band: its overlay covers only the bottom third of the panel, and above it
    # the image is shown without heat (grey: red = blue)
    assert [r - stripe3["box"][1] for r in stripe3["overlay_rows"]] == [256 * scale, 384 * scale]
    assert abs(redness(stripe3, (16, 240))) < 2
    with pytest.raises(ValueError, match="no response-map layout"):
        Image.fromarray(image).save(tmp_path / "plain.png")
        response.read_layout(tmp_path / "plain.png")


# ----------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, mini_market_dir):
    """`python -m mgn_tf.visualize` on a run directory with 3 real query images and one corrupt file."""
    from helpers.exported import make_run_dir

    root = tmp_path_factory.mktemp("visualize")
    run = make_run_dir(root)
    queries = sorted((mini_market_dir / "query").glob("*.jpg"))[:3]
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = root / "maps"
    args = ["--weights", str(run), "--images", ",".join(map(str, [*queries, broken])), "--out", str(out)]
    return run, queries, visualize(*args), out


def test_cli_writes_a_figure_and_the_peaks_of_every_readable_image(cli_run):
    from helpers.exported import INPUT_SIZE, NUM_CLASSES

    from mgn_tf.images import load_images
    from mgn_tf.model import build_mgn

    run, queries, done, out = cli_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "broken.jpg" in done.stderr and "skipped 1 unreadable" in done.stdout
    record = json.loads((out / "response_maps.json").read_text())
    assert [r["path"] for r in record["images"]] == [str(q) for q in queries]
    assert record["skipped"][0]["path"].endswith("broken.jpg")
    assert record["map_sizes"] == {"global": [3, 1], "part2": [6, 2], "part3": [6, 2]}  # 96x32 / 32, / 16
    mgn = build_mgn(NUM_CLASSES, INPUT_SIZE)
    mgn.load_weights(run / "final.weights.h5")
    truth = branch_norms(mgn, load_images(queries, INPUT_SIZE))
    for i, entry in enumerate(record["images"]):
        figure = Path(entry["figure"])
        assert figure.name == f"{queries[i].stem}_response.png"
        assert len(response.read_layout(figure)["panels"]) == 7
        for branch in ("global", "part2", "part3"):
            expected = truth[branch][i]
            assert entry["maps"][branch]["max"] == pytest.approx(expected.max(), rel=1e-4)
            assert entry["maps"][branch]["argmax"] == list(
                np.unravel_index(expected.argmax(), expected.shape)
            )
        stripes = [truth["part3"][i][s:e].max() for s, e in ((0, 2), (2, 4), (4, 6))]
        assert entry["maps"]["part3"]["peak_stripe"] == int(np.argmax(stripes)) + 1


def test_cli_usage_errors_are_one_line(cli_run, tmp_path):
    run, queries, _, _ = cli_run
    onnx = tmp_path / "mgn.onnx"
    onnx.write_bytes(b"exported elsewhere")
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not an image")
    cases = [
        (["--images", str(queries[0])], "--weights"),
        (["--weights", str(onnx), "--images", str(queries[0])], "gives only the embedding"),
        (["--weights", str(tmp_path / "none"), "--images", str(queries[0])], "does not exist"),
        (["--weights", str(run), "--images", str(tmp_path / "missing.jpg")], "missing.jpg"),
        (["--weights", str(run), "--images", str(queries[0]), "--input_height", "192"], "pass both"),
        (["--weights", str(run), "--images", str(corrupt), "--out", str(tmp_path / "o")], "none of the 1"),
    ]
    for args, words in cases:
        done = visualize(*args)
        lines = done.stderr.strip().splitlines()
        listed = 2 if words.startswith("none of") else 0  # the unreadable file is listed first
        assert done.returncode == 2 and len(lines) == 1 + listed, (args, done.stderr[-2000:])
        assert lines[-1].startswith("error:") and words in lines[-1], (args, lines)
