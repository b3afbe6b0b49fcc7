"""`python -m mgn_tf.search` on the real mini Market-1501 images: index, query, --add, unreadable files,
another model refused, thresholds from an evaluation, and the HTML page (rendered by headless Chromium
when one is installed). The truth is a brute-force ranking of `mgn_tf.inference` embeddings in numpy."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
TOP_K = 5


def search(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mgn_tf.search", *args, "--noprogress"]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mini_market_dir):
    """Two different models (run dirs) and a gallery folder: 32 real images in two levels, one corrupt."""
    from helpers.exported import make_run_dir

    root = tmp_path_factory.mktemp("search")
    run = make_run_dir(root / "a", seed=0)
    other = make_run_dir(root / "b", seed=1)
    gallery = root / "gallery"
    images = sorted((mini_market_dir / "bounding_box_test").glob("*.jpg"))
    for i, image in enumerate(images):
        target = gallery / ("cam_a" if i < 16 else "cam_b/deeper") / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (gallery / "cam_b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    queries = sorted((mini_market_dir / "query").glob("*.jpg"))[:6] + [gallery / "cam_a" / images[3].name]
    return {"root": root, "run": run, "other": other, "gallery": gallery, "queries": queries}


@pytest.fixture(scope="module")
def truth(setup):
    """Flip-averaged, L2-normalised embeddings of the readable gallery files and the queries."""
    from mgn_tf import inference

    embedder = inference.load(setup["run"])
    files = sorted(str(p.resolve()) for p in setup["gallery"].rglob("*.jpg") if p.name != "broken.jpg")
    g = embedder.embed(files, flip=True, normalize=True)
    q = embedder.embed([str(p) for p in setup["queries"]], flip=True, normalize=True)
    return files, g.astype(np.float64), q.astype(np.float64)


@pytest.fixture(scope="module")
def indexed(setup):
    index = setup["root"] / "index_all"
    done = search(
        "index", "--weights", str(setup["run"]), "--images", str(setup["gallery"]), "--index", str(index)
    )
    return index, done


@pytest.fixture(scope="module")
def queried(setup, indexed):
    out = setup["root"] / "out_all"
    search("query", "--index", str(indexed[0]), "--images", ",".join(map(str, setup["queries"])),
           "--top_k", str(TOP_K), "--out", str(out), "--rows_per_figure", "4")  # fmt: skip
    return out, json.loads((out / "results.json").read_text())


def test_query_equals_a_brute_force_ranking_of_the_embeddings(setup, truth, queried):
    files, g, q = truth
    _, results = queried
    d = np.linalg.norm(q[:, None] - g[None], axis=2)
    assert len(results["queries"]) == len(setup["queries"])
    for i, entry in enumerate(results["queries"]):
        order = np.argsort(d[i], kind="stable")[:TOP_K]
        assert [m["path"] for m in entry["matches"]] == [files[j] for j in order]
        np.testing.assert_allclose([m["distance"] for m in entry["matches"]], d[i, order], atol=2e-5)
        assert [m["rank"] for m in entry["matches"]] == list(range(1, TOP_K + 1))
    itself = results["queries"][-1]["matches"][0]  # the last query is a gallery image
    assert itself["path"] == str(setup["queries"][-1].resolve()) and itself["distance"] < 1e-5
    first = results["queries"][0]["matches"][0]
    assert (first["pid"], first["camera"]) == tuple(
        int(x) for x in re.match(r"(\d+)_c(\d)", Path(first["path"]).name).groups()
    )


def test_corrupt_image_is_skipped_listed_and_counted(indexed, setup):
    index, done = indexed
    record = json.loads((index / "index.json").read_text())
    assert record["count"] == 32
    assert [s["path"] for s in record["skipped"]] == [
        str((setup["gallery"] / "cam_b" / "broken.jpg").resolve())
    ]
    assert "broken.jpg" in done.stderr and "32 image(s)" in done.stdout and "1 skipped" in done.stdout


def test_add_gives_the_same_results_as_indexing_everything_at_once(setup, queried):
    index = setup["root"] / "index_parts"
    search(
        "index",
        "--weights",
        str(setup["run"]),
        "--images",
        str(setup["gallery"] / "cam_a"),
        "--index",
        str(index),
    )
    added = search("index", "--add", "--images", str(setup["gallery"]), "--index", str(index))
    assert "16 already indexed" in added.stdout
    out = setup["root"] / "out_parts"
    search("query", "--index", str(index), "--images", ",".join(map(str, setup["queries"])),
           "--top_k", str(TOP_K),
           "--out", str(out))  # fmt: skip
    parts = json.loads((out / "results.json").read_text())
    _, whole = queried
    for a, b in zip(parts["queries"], whole["queries"], strict=True):
        assert [m["path"] for m in a["matches"]] == [m["path"] for m in b["matches"]]
        np.testing.assert_allclose(
            [m["distance"] for m in a["matches"]], [m["distance"] for m in b["matches"]], atol=1e-6
        )
    assert len(json.loads((index / "index.json").read_text())["shards"]) == 2


def test_concurrent_adds_both_land_and_a_killed_writer_blocks_neither(setup, truth):
    """Two `index --add` of different folders started together into one index: afterwards it holds the
    union, each image once with its own embedding (the brute-force truth), and a query finds each image
    itself first. Before them: a writer holding the index's lock makes an add with --lock_timeout=0 exit 2
    naming it, and once that writer is SIGKILLed it blocks no one."""
    from helpers.locking import hold_elsewhere

    from mgn_tf.gallery import Gallery

    index = setup["root"] / "index_concurrent"
    gallery, first = setup["gallery"], sorted(setup["gallery"].glob("cam_a/*.jpg"))[:2]
    images = ",".join(map(str, first))
    search("index", "--weights", str(setup["run"]), "--images", images, "--index", str(index))
    holder = hold_elsewhere(index)
    try:
        refused = search("index", "--add", "--images", str(gallery / "cam_a"), "--index", str(index),
                         "--lock_timeout=0", check=False)  # fmt: skip
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert refused.returncode == 2 and f"is in use by pid {holder.pid}" in refused.stderr, refused.stderr
    adds = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mgn_tf.search",
                "index",
                "--add",
                "--images",
                str(folder),
                "--index",
                str(index),
                "--noprogress",
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for folder in (gallery / "cam_a", gallery / "cam_b")
    ]
    outputs = [add.communicate(timeout=600) for add in adds]
    assert [add.returncode for add in adds] == [0, 0], [err[-2000:] for _, err in outputs]
    files, g, _ = truth
    stored = Gallery.load(index)
    paths = [item.path for item in stored.items]
    assert sorted(paths) == files  # every readable image of both folders, once
    rows = np.concatenate([np.asarray(f) for f in stored.features]).astype(np.float64)
    np.testing.assert_allclose(rows, g[[files.index(p) for p in paths]], atol=2e-5)
    assert [m[0].path for m in stored.search(rows, k=1).matches] == paths


def test_another_model_is_refused_in_one_line(setup, indexed):
    index, _ = indexed
    before = (index / "index.json").read_text()
    one = ("--weights", str(setup["other"]), "--images", str(setup["queries"][0]), "--index", str(index))
    for args in (("index", "--add", *one), ("query", *one)):
        done = search(*args, check=False)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert (
            len(lines) == 1
            and lines[0].startswith("error:")
            and "not the model that built the index" in lines[0]
        )
    assert (index / "index.json").read_text() == before
    done = search("index", "--weights", str(setup["run"]), "--images", str(setup["gallery"]),
                  "--index", str(index),
                  check=False)  # fmt: skip
    assert done.returncode == 2 and "already holds an index" in done.stderr


def test_threshold_from_an_evaluation_flags_matches(setup, indexed, mini_market_dir):
    evaluation = setup["root"] / "evaluation"
    done = subprocess.run(
        [sys.executable, "-m", "mgn_tf.evaluate", "--weights", str(setup["run"]), "--dataset", "market1501",
         "--data_dir", str(mini_market_dir), "--out_dir", str(evaluation), "--norerank", "--noprogress"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (evaluation / "roc.png").is_file() and "Same person?" in done.stdout
    points = json.loads((evaluation / "results.json").read_text())["verification"]["points"]
    threshold = next(p["threshold"] for p in points if p["target_fpr"] == 1e-2)
    out = setup["root"] / "out_threshold"
    search("query", "--index", str(indexed[0]), "--images", ",".join(map(str, setup["queries"])),
           "--top_k", "10", "--threshold_from", str(evaluation / "results.json"), "--fpr", "0.01",
           "--out", str(out))  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["threshold"]["value"] == pytest.approx(threshold)
    flags = [(m["distance"] < threshold, m["same_person"]) for q in results["queries"] for m in q["matches"]]
    assert all(a == b for a, b in flags) and any(a for a, _ in flags) and not all(a for a, _ in flags)
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 * len(setup["queries"])
    assert [r["same_person"] == "yes" for r in rows] == [b for _, b in flags]
    done = search("query", "--index", str(indexed[0]), "--images", str(setup["queries"][0]),
                  "--threshold_from", str(evaluation / "results.json"), "--fpr", "0.05",
                  check=False)  # fmt: skip
    assert done.returncode == 2 and "FPR 0.05" in done.stderr and len(done.stderr.strip().splitlines()) == 1


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def expected_thumbnail(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((64, 128), Image.BILINEAR))


def test_html_page_embeds_every_query_and_match(setup, queried):
    out, results = queried
    parser = _Images()
    parser.feed((out / "index.html").read_text())
    expected = [p for q in results["queries"] for p in [q["path"], *(m["path"] for m in q["matches"])]]
    assert [img["title"] for img in parser.images] == expected
    for img in parser.images:
        assert img["src"].startswith("data:image/png;base64,")
        pixels = np.asarray(
            Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).convert("RGB")
        )
        np.testing.assert_array_equal(pixels, expected_thumbnail(img["title"]))
    assert sorted(p.name for p in out.glob("ranked_list_*.png")) == [
        "ranked_list_001.png",
        "ranked_list_002.png",
    ]


BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(
    BROWSER is None, reason="no headless Chromium installed (apt install chromium-headless-shell)"
)
def test_html_page_renders_its_images_in_a_real_browser(setup, queried, tmp_path):
    out, results = queried
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1",
         "--window-size=900,800", f"--screenshot={shot}", (out / "index.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), done.stderr[-2000:]
    page = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    first = results["queries"][0]
    for path in (first["path"], first["matches"][0]["path"]):  # the first row: query and its best match
        thumb = expected_thumbnail(path).astype(np.int16)
        assert _found(page, thumb), f"{path} is not shown on the rendered page"


def _found(page: np.ndarray, thumb: np.ndarray) -> bool:
    """Whether `thumb` appears pixel for pixel (within 3 levels) somewhere in `page`."""
    h, w = thumb.shape[:2]
    ys, xs = np.nonzero(
        np.all(np.abs(page[: page.shape[0] - h + 1, : page.shape[1] - w + 1] - thumb[0, 0]) <= 3, -1)
    )
    return any(np.abs(page[y : y + h, x : x + w] - thumb).max() <= 3 for y, x in zip(ys, xs, strict=True))


def test_usage_errors_are_one_line(setup, indexed):
    tflite = setup["root"] / "model.tflite"
    tflite.write_bytes(b"not read: the runtime is checked first")
    cases = [
        (("query",), "--index"),
        (("nonsense",), "give a verb"),
        (
            ("query", "--index", str(setup["root"]), "--images", str(setup["queries"][0])),
            "not a gallery index",
        ),
        (
            ("query", "--index", str(indexed[0]), "--images", str(setup["root"] / "missing.jpg")),
            "does not exist",
        ),
        (
            ("query", "--index", str(indexed[0]), "--images", str(setup["queries"][0]), "--top_k", "0"),
            "--top_k=0",
        ),
        (("index", "--index", str(setup["root"] / "new"), "--images", str(setup["gallery"])), "--weights"),
        (
            (
                "index",
                "--index",
                str(setup["root"] / "new"),
                "--images",
                str(setup["gallery"]),
                "--weights",
                str(tflite),
                "--runtime",
                "openvino",
            ),
            "--runtime=openvino: OpenVINO runs run directories",
        ),  # fmt: skip
    ]
    for args, message in cases:
        done = search(*args, check=False)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], (args, done.stderr[-1500:])
