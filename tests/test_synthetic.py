"""Tests for the built-in synthetic Market-1501-layout dataset."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgn_tf.data.synthetic import MARKER_NAME, SPLITS, ensure_synthetic, generate_synthetic
from mgn_tf.data.synthetic.__main__ import main

NAME = re.compile(r"^(\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(
    num_train_ids=5,
    num_test_ids=6,
    num_cameras=4,
    images_per_id_per_camera=2,
    num_distractors=5,
    progress=False,
)


def _records(root: Path, split: str) -> list[tuple[int, int, str]]:
    """(pid, camera, file name) of every image in a split; asserts the name pattern."""
    out = []
    for f in sorted((root / split).iterdir()):
        m = NAME.match(f.name)
        assert m, f"bad file name {f.name}"
        out.append((int(m.group(1)), int(m.group(2)), f.name))
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*.jpg"))
    }


# Recorded from the single-module synthetic.py (commit 5de6982), before it became a package: the sha256
# (first 16 hex digits) of every image's RGB pixels as handed to the JPEG encoder, and of the two text
# files. Pixels rather than JPEG bytes, so a libjpeg upgrade in Pillow does not break the test; a change
# in the drawing code or in the order of random draws does. Seed 25 with these counts draws every
# pattern, view, bag, hair and lower-clothing branch but two (checked with the `trace` module).
PINNED = dict(
    num_train_ids=4,
    num_test_ids=4,
    num_cameras=4,
    images_per_id_per_camera=1,
    image_size=(64, 32),
    num_distractors=3,
    seed=25,
    progress=False,
)
PINNED_PIXELS = {
    "bounding_box_test/0000_c1s1_003288_01.jpg": "d11c67fabb5bcbc8",
    "bounding_box_test/0000_c2s1_001418_03.jpg": "f53c297048c12c74",
    "bounding_box_test/0000_c4s1_001702_03.jpg": "cd8a5f5b745ad12e",
    "bounding_box_test/0005_c3s1_002026_02.jpg": "5ea90ed1d278aaa4",
    "bounding_box_test/0006_c3s1_002152_01.jpg": "844ed3a82aa0aa41",
    "bounding_box_test/0007_c2s1_001161_02.jpg": "b10a7455042b29be",
    "bounding_box_test/0007_c4s1_001481_01.jpg": "ae0c96e5e335c84b",
    "bounding_box_test/0008_c3s1_002407_01.jpg": "92424bcdfaccf346",
    "bounding_box_train/0001_c1s1_001786_02.jpg": "0512c179ac14626b",
    "bounding_box_train/0001_c2s1_000469_02.jpg": "d499c2d94af0cb4a",
    "bounding_box_train/0001_c3s1_001216_03.jpg": "b2cd294ad7e37a59",
    "bounding_box_train/0001_c4s1_000530_03.jpg": "9afe1365619879f4",
    "bounding_box_train/0002_c1s1_002037_03.jpg": "93defadcc9bda53f",
    "bounding_box_train/0002_c2s1_000621_03.jpg": "edc1cf57c1d393fe",
    "bounding_box_train/0002_c3s1_001326_01.jpg": "d8daf0f577f00948",
    "bounding_box_train/0003_c1s1_002319_03.jpg": "b5dd0d1240d2bc49",
    "bounding_box_train/0003_c3s1_001388_02.jpg": "2b1c6cc7954477da",
    "bounding_box_train/0003_c4s1_000830_02.jpg": "a0cad5d14574a01d",
    "bounding_box_train/0004_c1s1_002540_02.jpg": "b601786409ce7463",
    "bounding_box_train/0004_c2s1_000744_01.jpg": "05547ae19f574fa6",
    "bounding_box_train/0004_c3s1_001763_01.jpg": "3cc6a84ce784181a",
    "bounding_box_train/0004_c4s1_001001_01.jpg": "81534e419dfe6350",
    "query/0005_c1s1_002590_01.jpg": "c319e80d0ce8780c",
    "query/0005_c4s1_001087_03.jpg": "73353b1bf1c5e60c",
    "query/0006_c2s1_001025_02.jpg": "fede743fc01aa650",
    "query/0006_c4s1_001388_03.jpg": "9f353063b50e4922",
    "query/0007_c1s1_002905_01.jpg": "d19b84c049fc853d",
    "query/0007_c3s1_002292_01.jpg": "6c748e50b5694274",
    "query/0008_c2s1_001220_03.jpg": "34b847f53f9011ba",
    "query/0008_c4s1_001566_01.jpg": "7d4a3f58ebebff1f",
}
PINNED_FILES = {
    ".mgn_synthetic": "372b301ae9ade908",
    "synthetic_complete.json": "fb138df56218da4c",
}


def test_pixels_match_the_recorded_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered images, their names and the marker are exactly those of the recorded generator."""
    pixels: dict[str, str] = {}
    save = Image.Image.save

    def recording_save(image: Image.Image, fp, *args, **kwargs):
        path = Path(fp)
        digest = hashlib.sha256(np.asarray(image).tobytes()).hexdigest()
        pixels[f"{path.parent.name}/{path.name}"] = digest[:16]
        return save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", recording_save)
    root = generate_synthetic(tmp_path / "ds", **PINNED)
    changed = sorted(k for k in PINNED_PIXELS.keys() | pixels.keys() if PINNED_PIXELS.get(k) != pixels.get(k))
    assert not changed, f"{len(changed)} image(s) differ from the recorded generator: {changed[:5]}"
    assert sorted(f.relative_to(root).as_posix() for f in root.rglob("*.jpg")) == sorted(PINNED_PIXELS)
    files = {name: hashlib.sha256((root / name).read_bytes()).hexdigest()[:16] for name in PINNED_FILES}
    assert files == PINNED_FILES


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "ds", image_size=(64, 32), **SMALL)


def test_layout_names_and_sizes(small: Path) -> None:
    info = json.loads((small / MARKER_NAME).read_text())
    for split in SPLITS:
        recs = _records(small, split)
        assert len(recs) == info["counts"][split] > 0
        assert all(1 <= cam <= 4 for _, cam, _ in recs)
        assert len({name[:7] + name[10:16] for *_, name in recs}) == len(recs)  # (pid, cam, frame) unique
    img = Image.open(next((small / "query").iterdir()))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (32, 64)


def test_splits_disjoint_and_queries_matchable(small: Path) -> None:
    train = _records(small, "bounding_box_train")
    query = _records(small, "query")
    gallery = _records(small, "bounding_box_test")
    train_ids = {p for p, _, _ in train}
    test_ids = {p for p, _, _ in gallery if p != 0}
    assert train_ids == set(range(1, 6))
    assert test_ids == set(range(6, 12)) == {p for p, _, _ in query}
    assert not train_ids & test_ids
    for pid in train_ids | test_ids:  # everyone is seen by at least two cameras
        assert len({c for p, c, _ in train + query + gallery if p == pid}) >= 2
    for pid, cam, name in query:
        assert any(p == pid and c != cam for p, c, _ in gallery), f"{name} has no cross-camera gallery match"
    distractors = [r for r in gallery if r[0] == 0]
    assert len(distractors) == 5
    assert all(p != 0 for p, _, _ in train + query)


def test_one_image_per_camera_still_matchable(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path, **{**SMALL, "images_per_id_per_camera": 1, "num_cameras": 2})
    gallery = _records(root, "bounding_box_test")
    for pid, cam, name in _records(root, "query"):
        assert any(p == pid and c != cam for p, c, _ in gallery), name


def test_deterministic_per_seed(small: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "a", image_size=(64, 32), **SMALL)
    other = generate_synthetic(tmp_path / "b", image_size=(64, 32), **{**SMALL, "seed": 1})
    ref = _hashes(small)
    assert _hashes(again) == ref
    other_hashes = _hashes(other)
    assert set(other_hashes.values()).isdisjoint(ref.values())


def test_ensure_is_idempotent_and_repairs(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    assert ensure_synthetic(root, **SMALL) == root
    marker = root / MARKER_NAME
    assert marker.exists()
    files = sorted(root.rglob("*.jpg"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    ensure_synthetic(root, **SMALL)
    assert [f.stat().st_mtime_ns for f in files] == mtimes and marker.exists()

    for f in files:  # age every file, drop the marker: the next call must rewrite everything
        os.utime(f, ns=(0, 0))
    marker.unlink()
    ensure_synthetic(root, **SMALL)
    assert marker.exists()
    assert all(f.stat().st_mtime_ns > 0 for f in files)

    files[0].unlink()  # an incomplete dataset is regenerated too
    ensure_synthetic(root, **SMALL)
    assert files[0].exists()

    ensure_synthetic(root, **{**SMALL, "seed": 3})  # other settings: regenerated
    assert json.loads(marker.read_text())["seed"] == 3


def test_refuses_to_overwrite_foreign_dataset(tmp_path: Path) -> None:
    (tmp_path / "query").mkdir()
    (tmp_path / "query" / "0001_c1s1_000001_00.jpg").write_bytes(b"real")
    with pytest.raises(FileExistsError):
        ensure_synthetic(tmp_path, **SMALL)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m mgn_tf.data.synthetic ROOT --option N ...`` passes every option to generate_synthetic."""
    argv = "--seed 4 --num-train-ids 2 --num-test-ids 3 --num-cameras 3 --images-per-id-per-camera 1"
    main([str(tmp_path), *argv.split(), "--num-distractors", "2", "--height", "32", "--width", "16"])
    info = json.loads((tmp_path / MARKER_NAME).read_text())
    assert {k: info[k] for k in ("seed", "num_train_ids", "num_test_ids", "num_cameras")} == {
        "seed": 4,
        "num_train_ids": 2,
        "num_test_ids": 3,
        "num_cameras": 3,
    }
    assert (info["images_per_id_per_camera"], info["num_distractors"], info["image_size"]) == (1, 2, [32, 16])
    assert capsys.readouterr().out.strip() == str(info["counts"])
    assert Image.open(next((tmp_path / "query").iterdir())).size == (16, 32)


def _rank1(feats_q, pq, cq, feats_g, pg, cg) -> float:
    """Cross-camera rank-1 with Bhattacharyya similarity; same pid + same camera gallery entries removed."""
    sim = np.sqrt(feats_q) @ np.sqrt(feats_g).T
    hits = []
    for i in range(len(pq)):
        sim_i = np.where((pg == pq[i]) & (cg == cq[i]), -np.inf, sim[i])
        hits.append(pg[int(np.argmax(sim_i))] == pq[i])
    return float(np.mean(hits))


def _histograms(root: Path, split: str, grey_world: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4x4x4 joint RGB histograms of a central strip (mostly the person)."""
    recs = _records(root, split)
    feats = []
    for _, _, name in recs:
        a = np.asarray(Image.open(root / split / name), np.float64)
        h, w = a.shape[:2]
        a = a[int(0.2 * h) : int(0.9 * h), int(0.38 * w) : int(0.62 * w)]
        if grey_world:  # undo the camera's colour cast as far as a per-image white balance can
            a = np.clip(a / a.reshape(-1, 3).mean(0) * 110.0, 0, 255)
        q = a.astype(np.int64) // 64
        hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64)
        feats.append(hist / hist.sum())
    return np.stack(feats), np.array([r[0] for r in recs]), np.array([r[1] for r in recs])


def test_identity_signal_is_real_but_not_trivial(tmp_path: Path) -> None:
    """A colour-histogram nearest neighbour, no learning, re-identifies well above chance but far from all."""
    root = generate_synthetic(tmp_path, num_train_ids=1, num_test_ids=40, num_distractors=10, progress=False)
    chance = 1 / 40
    rank1 = {}
    for gw in (False, True):
        q = _histograms(root, "query", gw)
        g = _histograms(root, "bounding_box_test", gw)
        rank1[gw] = _rank1(*q, *g)
    assert 6 * chance < rank1[True] < 0.85, rank1  # learnable, but not by colour alone
    assert rank1[False] < rank1[True], rank1  # the camera colour cast matters
