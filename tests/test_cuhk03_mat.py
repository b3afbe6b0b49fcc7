"""The raw CUHK03 release, with generated files shaped like the real ones.

``cuhk-03.mat`` is MATLAB v7.3 (HDF5): ``labeled``/``detected`` are 1×5 datasets of object
references (a 5×1 cell, axes reversed) into ``#refs#``, each pointing at a 10×N reference dataset
(an N×10 cell) whose entries point at (3, W, H) uint8 datasets (H×W×3 images, axes reversed) or at
MATLAB's empty-array marker. The configs are MATLAB v5 files written with scipy.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from mgn_tf.data.datasets import DatasetLayoutError, cuhk03_mat, load_dataset

PERSONS_PER_PAIR = (3, 2, 2, 1, 2)  # 10 identities over the 5 camera pairs
TRAIN_PERSONS = 6  # global identities 1..6 train, 7..10 test


def make_images(seed: int) -> list[list[list[np.ndarray | None]]]:
    """[pair][person][column] → H×W×3 uint8 (H ≠ W) or None for an empty cell."""
    rng = np.random.default_rng(seed)
    pairs = []
    for n in PERSONS_PER_PAIR:
        persons = []
        for person in range(n):
            row = []
            for col in range(10):
                empty = col % 5 >= 3 + (person + seed) % 3  # 3 to 5 images per camera, varying
                shape = (int(rng.integers(9, 14)), int(rng.integers(4, 8)), 3)
                row.append(None if empty else rng.integers(0, 256, shape, dtype=np.uint8))
            persons.append(row)
        pairs.append(persons)
    return pairs


def write_mat(path: Path, variants: dict[str, list]) -> None:
    """A MATLAB v7.3-style cuhk-03.mat (HDF5 with a 512-byte user block, cells as object references)."""
    counter = itertools.count()
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")

        def put(data: np.ndarray, matlab_class: str, empty: bool = False) -> h5py.Reference:
            dset = refs.create_dataset(f"r{next(counter)}", data=data)
            dset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            if empty:
                dset.attrs["MATLAB_empty"] = np.uint8(1)
            return dset.ref

        for variant, pairs in variants.items():
            top = np.empty((1, len(pairs)), dtype=h5py.ref_dtype)
            for p, persons in enumerate(pairs):
                cell = np.empty((10, len(persons)), dtype=h5py.ref_dtype)  # N×10 cell, axes reversed
                for person, row in enumerate(persons):
                    for col, image in enumerate(row):
                        if image is None:
                            cell[col, person] = put(np.zeros(2, np.uint64), "double", empty=True)
                        else:
                            cell[col, person] = put(image.T, "uint8")  # H×W×3 stored as (3, W, H)
                top[0, p] = put(cell, "cell")
            f.create_dataset(variant, data=top).attrs["MATLAB_class"] = np.bytes_("cell")
        f.create_dataset("testsets", data=np.zeros((1, 20))).attrs["MATLAB_class"] = np.bytes_("cell")


def write_config(path: Path, pairs: list, rng: np.random.Generator, **override) -> dict:
    """A new-protocol config listing every non-empty image; 1-based indices in shuffled order."""
    names, labels, cams = [], [], []
    label = 0
    for p, persons in enumerate(pairs):
        for person, row in enumerate(persons):
            label += 1
            for col, image in enumerate(row):
                if image is not None:
                    view = 1 if col < 5 else 2
                    names.append(f"{p + 1}_{person + 1:03d}_{view}_{col + 1:02d}.png")
                    labels.append(label)
                    cams.append(view)
    labels_a, cams_a = np.array(labels), np.array(cams)
    train, query, gallery = [], [], []
    for i in range(len(names)):
        if labels_a[i] <= TRAIN_PERSONS:
            train.append(i)
        elif not np.any((labels_a[:i] == labels_a[i]) & (cams_a[:i] == cams_a[i])):
            query.append(i)  # the first image of each test identity in each camera
        else:
            gallery.append(i)
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    config = {
        "filelist": filelist,
        "labels": labels_a[:, None].astype(np.float64),
        "camId": cams_a[:, None].astype(np.float64),
        "train_idx": rng.permutation(train)[:, None] + 1.0,
        "query_idx": rng.permutation(query)[:, None] + 1.0,
        "gallery_idx": rng.permutation(gallery)[:, None] + 1.0,
    }
    config.update(override)
    savemat(path, config)
    return config


@pytest.fixture()
def raw_release(tmp_path: Path):
    images = {"labeled": make_images(0), "detected": make_images(1)}
    write_mat(tmp_path / "cuhk-03.mat", images)
    configs = {
        v: write_config(tmp_path / f"cuhk03_new_protocol_config_{v}.mat", images[v], np.random.default_rng(2))
        for v in images
    }
    return tmp_path, images, configs


def image_at(images: list, name: str) -> np.ndarray:
    p, person, view, col = (int(x) for x in Path(name).stem.split("_"))
    assert (col <= 5) == (view == 1)
    return images[p - 1][person - 1][col - 1]


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_extract_and_split(raw_release, variant: str) -> None:
    root, images, configs = raw_release
    config = configs[variant]
    names = [str(n) for n in config["filelist"][:, 0]]
    non_empty = sum(image is not None for pair in images[variant] for person in pair for image in person)
    assert len(names) == non_empty

    split = load_dataset("cuhk03", root, variant=variant)
    out = root / f"images_{variant}"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    assert (out / cuhk03_mat.MARKER).is_file()
    for name in (names[0], names[-1]):  # pixels survive the HDF5 transpose and the PNG round trip
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), image_at(images[variant], name))

    labels = config["labels"].ravel().astype(int)
    n_train_imgs = int(np.sum(labels <= TRAIN_PERSONS))
    assert (len(split.train), split.num_train_pids, split.num_train_cams) == (n_train_imgs, TRAIN_PERSONS, 2)
    assert len(split.query) == 2 * (sum(PERSONS_PER_PAIR) - TRAIN_PERSONS)  # both cameras per test id
    assert len(split.train) + len(split.query) + len(split.gallery) == len(names)
    # 1-based indices: entry k of train_idx is filelist[k - 1]
    first = int(config["train_idx"][0, 0])
    assert split.train[0][0] == str(out / names[first - 1])
    assert {Path(p).name for p, _, _ in split.query} == {
        names[int(i) - 1] for i in config["query_idx"].ravel()
    }
    # train pids relabelled 0..5 in the order of the original labels; test pids and cameras kept
    label_of = dict(zip(names, labels, strict=True))
    for path, pid, _ in split.train:
        assert pid == label_of[Path(path).name] - 1
    for path, pid, cam in split.query + split.gallery:
        assert pid == label_of[Path(path).name] and pid > TRAIN_PERSONS
        assert cam == int(Path(path).stem.split("_")[2]) - 1


def test_extraction_is_done_once(raw_release) -> None:
    root, _, configs = raw_release
    load_dataset("cuhk03", root)
    out = root / "images_labeled"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # a second call neither rewrites nor even reads the .mat file
    (root / "cuhk-03.mat").write_bytes(b"not hdf5")
    again = load_dataset("cuhk03", root)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert len(again.train) + len(again.query) + len(again.gallery) == len(before) - 1  # minus the marker


def test_interrupted_extraction_resumes(raw_release) -> None:
    root, images, configs = raw_release
    names = [str(n) for n in configs["labeled"]["filelist"][:, 0]]
    out = root / "images_labeled"
    mat = root / "cuhk-03.mat"
    assert cuhk03_mat.extract_images(mat, "labeled", names, out) == len(names)
    # as if killed while writing: no marker, one image only as a temp file
    (out / cuhk03_mat.MARKER).unlink()
    (out / names[3]).unlink()
    (out / f".tmp-4242-0-{names[3]}").write_bytes(b"half a png")  # atomic_path's temp name
    kept = {n: (out / n).stat().st_mtime_ns for n in names if n != names[3]}
    assert cuhk03_mat.extract_images(mat, "labeled", names, out) == 1
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / names[3])), image_at(images["labeled"], names[3])
    )
    assert (out / cuhk03_mat.MARKER).is_file()
    assert [p.name for p in out.iterdir() if p.name.startswith(".tmp-")] == [f".tmp-4242-0-{names[3]}"]
    assert cuhk03_mat.extract_images(mat, "labeled", names, out) == 0


def test_zero_based_indices_are_rejected(tmp_path: Path) -> None:
    images = make_images(0)
    write_mat(tmp_path / "cuhk-03.mat", {"labeled": images, "detected": images})
    rng = np.random.default_rng(0)
    config = write_config(tmp_path / "cuhk03_new_protocol_config_labeled.mat", images, rng)
    write_config(
        tmp_path / "cuhk03_new_protocol_config_labeled.mat", images, rng, train_idx=config["train_idx"] - 1
    )
    with pytest.raises(DatasetLayoutError, match=r"train_idx must be non-empty 1-based \(MATLAB\) indices"):
        load_dataset("cuhk03", tmp_path)
    assert not (tmp_path / "images_labeled").exists()


def test_bad_config_and_mat(tmp_path: Path) -> None:
    images = make_images(0)
    savemat(tmp_path / "cuhk03_new_protocol_config_labeled.mat", {"filelist": np.zeros((1, 1))})
    (tmp_path / "cuhk-03.mat").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="has no field.*labels, camId, train_idx"):
        load_dataset("cuhk03", tmp_path)
    write_config(tmp_path / "cuhk03_new_protocol_config_labeled.mat", images, np.random.default_rng(0))
    with pytest.raises(DatasetLayoutError, match="cannot read .*cuhk-03.mat as a MATLAB v7.3"):
        load_dataset("cuhk03", tmp_path)
    # a config naming a cell that is empty in the .mat file
    holes = [[[None if col == 0 else img for col, img in enumerate(row)] for row in pair] for pair in images]
    write_mat(tmp_path / "cuhk-03.mat", {"labeled": holes, "detected": holes})
    with pytest.raises(DatasetLayoutError, match=r"cell \(1, 1\) of camera pair 1 .* is not an H×W×3 uint8"):
        load_dataset("cuhk03", tmp_path)


def test_parse_image_name() -> None:
    assert cuhk03_mat.parse_image_name("1_001_1_01.png") == (0, 0, 0)
    assert cuhk03_mat.parse_image_name("5_120_2_10.png") == (4, 119, 9)
    for bad in ("1_001_2_01.png", "1_001_1_06.png", "0_001_1_01.png", "1_001_1_01.jpg"):
        with pytest.raises(DatasetLayoutError, match="cuhk03: image name"):
            cuhk03_mat.parse_image_name(bad)
