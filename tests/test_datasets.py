"""Dataset readers against the real mini Market-1501 / CUHK01 images and generated layouts."""

from __future__ import annotations

import ast
import pkgutil
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import mgn_tf.data
from mgn_tf.data import datasets
from mgn_tf.data.datasets import (
    DatasetLayoutError,
    Split,
    dataset_names,
    dataset_options,
    load_dataset,
    register_dataset,
)


def touch(folder: Path, *names: str) -> None:
    """Empty files stand in for images: the readers only look at names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def ids(items) -> set[int]:
    return {pid for _, pid, _ in items}


def check_train_relabelled(split: Split) -> None:
    assert sorted(ids(split.train)) == list(range(split.num_train_pids))
    assert split.num_train_cams == len({cam for _, _, cam in split.train})
    assert all(Path(path).is_absolute() for path, _, _ in split.train + split.query + split.gallery)


# ------------------------------------------------------------------------------------- registry, options


def test_names_and_unknown_name() -> None:
    assert dataset_names() == ("market1501", "dukemtmc", "cuhk03", "msmt17", "cuhk01", "folder", "synthetic")
    with pytest.raises(ValueError, match=r"unknown dataset 'market'; valid names: market1501, dukemtmc"):
        load_dataset("market", "/nowhere")


def test_unknown_option_is_named(mini_market_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown option.*variant.*market1501 takes no options"):
        load_dataset("market1501", mini_market_dir, variant="labeled")
    assert dataset_options("cuhk01") == {"split_seed": 0, "num_train_ids": None}
    assert dataset_options("cuhk03") == {"variant": "labeled"}


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of the reader registry, so a test's registrations do not leak into other tests."""
    monkeypatch.setattr(datasets, "_READERS", dict(datasets._READERS))


def test_registered_reader_is_loaded_with_its_options(registry, tmp_path: Path) -> None:
    calls = []

    def read_mine(root: Path, size: int = 2, tag: str = "x") -> Split:
        calls.append((root, size, tag))
        train = [(str(root / f"{i}.jpg"), 10 + i, 0) for i in range(size)]
        return datasets.base.make_split("mine", root, train, [], [])

    register_dataset("Mine", read_mine)
    assert dataset_names()[-1] == "mine" and "market1501" in dataset_names()
    assert dataset_options("MINE") == {"size": 2, "tag": "x"}
    split = load_dataset(" mine ", tmp_path / "sub" / "..", size=3, tag="y")
    assert calls == [((tmp_path / "sub" / "..").absolute(), 3, "y")]  # absolute root, options as given
    assert (split.name, split.num_train_pids, [pid for _, pid, _ in split.train]) == ("mine", 3, [0, 1, 2])
    with pytest.raises(ValueError, match="mine: unknown option.*colour; mine takes size, tag"):
        load_dataset("mine", tmp_path, colour="red")

    def read_any(root: Path, **options) -> Split:  # takes every option: none is refused
        return read_mine(root, size=options["n"])

    register_dataset("any-options", read_any)
    assert dataset_options("any-options") == {}
    assert load_dataset("any-options", tmp_path, n=1).num_train_pids == 1


def test_register_refuses_duplicates_and_bad_readers(registry) -> None:
    def read(root: Path) -> Split:
        raise AssertionError("never called")

    register_dataset("mine", read)
    with pytest.raises(
        ValueError, match=r"dataset 'mine' is already registered \(.*read\); pass replace=True"
    ):
        register_dataset("MINE", read)
    with pytest.raises(ValueError, match=r"dataset 'market1501' is already registered \(.*read_market1501\)"):
        register_dataset("market1501", read)

    def read_again(root: Path) -> Split:
        raise AssertionError("never called")

    register_dataset("Mine", read_again, replace=True)
    assert datasets._READERS["mine"] is read_again
    with pytest.raises(ValueError, match=r"reader for dataset 'other' is not callable \(got str\)"):
        register_dataset("other", "read_folder")
    with pytest.raises(ValueError, match=r"reader for dataset 'other' .* takes no positional root argument"):
        register_dataset("other", lambda *, root: None)
    for bad in ("", "my data", "ünï", "-x", 3):
        with pytest.raises(ValueError, match=r"dataset name .* must be letters, digits, '_' or '-'"):
            register_dataset(bad, read)
    assert "other" not in dataset_names() and dataset_names().count("mine") == 1


def _data_modules() -> list[str]:
    """Every module of mgn_tf.data, packages and their __main__ included."""
    found = pkgutil.walk_packages(mgn_tf.data.__path__, prefix="mgn_tf.data.")
    return ["mgn_tf.data", *sorted(name for _, name, _ in found)]


# Built on tf.data, TF's image decoder and image ops: the only modules of mgn_tf.data that may import
# TensorFlow.
_TF_MODULES = {"mgn_tf.data.augment", "mgn_tf.data.pipeline", "mgn_tf.data.scan"}


def test_data_modules_are_found() -> None:
    modules = set(_data_modules())
    assert (
        _TF_MODULES < modules
        and {"mgn_tf.data.datasets.cuhk03_mat", "mgn_tf.data.synthetic.render"} < modules
    )


@pytest.mark.parametrize("module", [m for m in _data_modules() if m not in _TF_MODULES])
def test_module_imports_first_and_alone(module: str) -> None:
    """Imported first in a fresh interpreter (an import cycle fails for one of its members this way), and
    without TensorFlow or Keras: only `_TF_MODULES` are built on them. tests/test_packaging.py checks the
    whole package for import cycles."""
    check = f"import sys, {module}; print(sorted({{'tensorflow', 'keras'}} & set(sys.modules)))"
    if module.startswith("mgn_tf.data.datasets"):  # its docstring promises: no PIL for reading names
        check = check.replace("'keras'", "'keras', 'PIL'")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"import {module} fails in a fresh interpreter:\n{done.stderr[-3000:]}"
    heavy = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert heavy == [], f"import {module} imports {heavy}"


# ------------------------------------------------------------------------------------------ Market-1501


def test_market_real_mini(mini_market_dir: Path) -> None:
    split = load_dataset("Market1501", mini_market_dir)
    assert (len(split.train), split.num_train_pids) == (32, 16)
    assert (len(split.query), len(ids(split.query))) == (32, 16)
    assert len(split.gallery) == 32 and ids(split.gallery) == ids(split.query)
    assert split.multi_query is None and split.root == str(mini_market_dir)
    check_train_relabelled(split)
    # cameras and pids straight from the names: 0005_c1s1_001351_02.jpg → pid 5, camera 1 → camid 0
    for path, pid, cam in split.query + split.gallery:
        name = Path(path).name
        assert (pid, cam) == (int(name[:4]), int(name[6]) - 1)
    assert split.num_train_cams == 6
    originals = sorted({int(p.name[:4]) for p in (mini_market_dir / "bounding_box_train").iterdir()})
    for path, label, _ in split.train:  # relabelling keeps the sorted order of the original pids
        assert originals[label] == int(Path(path).name[:4])
    text = split.summary()
    assert "train" in text and "|    16 |       32 |         6" in text


@pytest.fixture()
def market_tree(tmp_path: Path) -> Path:
    """A generated Market layout one level down, with junk (-1), distractors (0000) and gt_bbox."""
    base = tmp_path / "Market-1501-v15.09.15"
    touch(
        base / "bounding_box_train",
        "0002_c1s1_000451_03.jpg",
        "0002_c3s1_000551_01.jpg",
        "0007_c2s1_000151_01.jpg",
        "0009_c6s2_010151_02.jpg",
        "0000_c1s1_000001_01.jpg",
        "-1_c1s1_000002_01.jpg",
        "Thumbs.db",
    )
    touch(base / "query", "0011_c1s1_001051_00.jpg", "0014_c2s1_001151_00.jpg", "0000_c1s1_0_00.jpg")
    touch(
        base / "bounding_box_test",
        "0011_c4s1_001101_01.jpg",
        "0014_c5s1_001201_02.jpg",
        "0000_c1s1_000003_01.jpg",
        "0000_c2s1_000004_01.jpg",
        "-1_c3s1_000005_01.jpg",
        "-1_c3s1_000006_02.jpg",
    )
    touch(base / "gt_bbox", "0011_c1s1_001051_00.jpg", "0011_c1s1_001076_00.jpg", "0014_c2s1_001151_00.jpg")
    return tmp_path


def test_market_generated_junk_distractors_multi_query(market_tree: Path) -> None:
    split = load_dataset("market1501", market_tree)
    assert split.root == str(market_tree / "Market-1501-v15.09.15")
    assert [Path(p).name for p, _, _ in split.train] == [
        "0002_c1s1_000451_03.jpg",
        "0002_c3s1_000551_01.jpg",
        "0007_c2s1_000151_01.jpg",
        "0009_c6s2_010151_02.jpg",
    ]
    assert [(pid, cam) for _, pid, cam in split.train] == [(0, 0), (0, 2), (1, 1), (2, 5)]
    assert (split.num_train_pids, split.num_train_cams) == (3, 4)
    assert [(pid, cam) for _, pid, cam in split.query] == [(11, 0), (14, 1)]
    assert Counter(pid for _, pid, _ in split.gallery) == {0: 2, 11: 1, 14: 1}  # junk gone, distractors kept
    assert split.multi_query is not None
    assert [(pid, cam) for _, pid, cam in split.multi_query] == [(11, 0), (11, 0), (14, 1)]
    assert "multi-query" in split.summary()


def test_market_missing_folder_message(tmp_path: Path) -> None:
    touch(tmp_path / "bounding_box_train", "0002_c1s1_000451_03.jpg")
    touch(tmp_path / "bounding_box_test", "0002_c1s1_000451_03.jpg")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("market1501", tmp_path)
    message = str(err.value)
    assert message.startswith(f"market1501: {tmp_path} has no folder 'query'")
    assert "expected bounding_box_train/, query/, bounding_box_test/ [, gt_bbox/]" in message
    assert message.endswith("found: bounding_box_test/, bounding_box_train/, notes.txt")


def test_market_root_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_dataset("market1501", tmp_path / "absent")
    for sub in ("a", "b"):
        for folder in ("bounding_box_train", "query", "bounding_box_test"):
            touch(tmp_path / sub / folder, "0002_c1s1_000451_03.jpg")
    with pytest.raises(DatasetLayoutError, match=r"several dataset folders \(a, b\)"):
        load_dataset("market1501", tmp_path)


def test_market_bad_names_and_empty_folder(market_tree: Path) -> None:
    base = market_tree / "Market-1501-v15.09.15"
    touch(base / "query", "person.jpg")
    with pytest.raises(
        DatasetLayoutError, match=r"query/person\.jpg does not match .*0002_c1s1_000451_03\.jpg"
    ):
        load_dataset("market1501", market_tree)
    (base / "query" / "person.jpg").unlink()
    touch(base / "query", "0011_c7s1_001051_00.jpg")  # Market has cameras 1..6
    with pytest.raises(DatasetLayoutError, match="camera 7, expected 1..6"):
        load_dataset("market1501", market_tree)
    for f in (base / "query").iterdir():
        f.unlink()
    touch(base / "query", "readme.txt")
    with pytest.raises(DatasetLayoutError, match=r"query has no images .*found: readme\.txt"):
        load_dataset("market1501", market_tree)


# --------------------------------------------------------------------------------------------- DukeMTMC


def test_duke_generated(tmp_path: Path) -> None:
    base = tmp_path / "DukeMTMC-reID"
    touch(base / "bounding_box_train", "0001_c2_f0046182.jpg", "0001_c8_f0001.jpg", "0005_c1_f0000042.jpg")
    touch(base / "query", "0010_c7_f0100000.jpg")
    touch(base / "bounding_box_test", "0010_c3_f0100100.jpg", "0012_c4_f0000001.jpg")
    split = load_dataset("dukemtmc", tmp_path)
    assert [(pid, cam) for _, pid, cam in split.train] == [(0, 1), (0, 7), (1, 0)]
    assert (split.num_train_pids, split.num_train_cams) == (2, 3)
    assert [(pid, cam) for _, pid, cam in split.query] == [(10, 6)]
    assert [(pid, cam) for _, pid, cam in split.gallery] == [(10, 2), (12, 3)]
    touch(base / "query", "0011_c9_f0000001.jpg")
    with pytest.raises(DatasetLayoutError, match="camera 9, expected 1..8"):
        load_dataset("dukemtmc", tmp_path)
    (base / "query" / "0011_c9_f0000001.jpg").unlink()
    touch(base / "query", "0011_c1s1_000451_03.jpg")  # a Market name is not a Duke name
    with pytest.raises(DatasetLayoutError, match=r"dukemtmc: .*0011_c1s1_000451_03\.jpg does not match"):
        load_dataset("dukemtmc", tmp_path)


# ------------------------------------------------------------------------------------------ CUHK03-NP


def make_cuhk03_np(base: Path) -> None:
    for variant, frame in (("labeled", "1"), ("detected", "2")):
        touch(base / variant / "bounding_box_train", f"0001_c1_{frame}.png", f"0001_c2_{frame}.png")
        touch(base / variant / "bounding_box_train", f"0003_c2_{frame}.png")
        touch(base / variant / "query", f"0004_c1_{frame}.png")
        touch(base / variant / "bounding_box_test", f"0004_c2_{frame}.png", f"0006_c2_{frame}.png")


@pytest.mark.parametrize("nested", [False, True])
def test_cuhk03_np_variants(tmp_path: Path, nested: bool) -> None:
    make_cuhk03_np(tmp_path / "cuhk03-np" if nested else tmp_path)
    labeled = load_dataset("cuhk03", tmp_path)
    detected = load_dataset("cuhk03", tmp_path, variant="detected")
    assert labeled.root.endswith("labeled") and detected.root.endswith("detected")
    assert all(p.endswith("_1.png") for p, _, _ in labeled.train + labeled.query + labeled.gallery)
    assert all(p.endswith("_2.png") for p, _, _ in detected.train)
    assert [(pid, cam) for _, pid, cam in labeled.train] == [(0, 0), (0, 1), (1, 1)]
    assert [(pid, cam) for _, pid, cam in labeled.query] == [(4, 0)]
    assert [(pid, cam) for _, pid, cam in labeled.gallery] == [(4, 1), (6, 1)]
    with pytest.raises(ValueError, match="unknown variant 'raw'; expected one of labeled, detected"):
        load_dataset("cuhk03", tmp_path, variant="raw")


def test_cuhk03_missing_variant_and_nothing(tmp_path: Path) -> None:
    make_cuhk03_np(tmp_path)
    shutil.rmtree(tmp_path / "detected")
    with pytest.raises(
        DatasetLayoutError, match=r"cuhk03: .* has no folder 'detected' for variant='detected'"
    ):
        load_dataset("cuhk03", tmp_path, variant="detected")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match="neither CUHK03-NP folders nor 'cuhk-03.mat'"):
        load_dataset("cuhk03", empty)
    (empty / "cuhk-03.mat").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="has no file 'cuhk03_new_protocol_config_labeled.mat'"):
        load_dataset("cuhk03", empty)


# --------------------------------------------------------------------------------------------- MSMT17


def make_msmt(base: Path, train_dir: str, test_dir: str, with_val: bool = True) -> None:
    rows = {
        "list_train.txt": (train_dir, [("0000/0000_000_01_0303morning_0015_0.jpg", 0)]),
        "list_val.txt": (train_dir, [("0002/0002_004_15_0303noon_0101_1.jpg", 2)]),
        "list_query.txt": (test_dir, [("0000/0000_000_03_0113morning_0015_0.jpg", 0)]),
        "list_gallery.txt": (
            test_dir,
            [("0000/0000_001_05_0113noon_0022_2.jpg", 0), ("0001/0001_000_07_0113noon_0001_0.jpg", 1)],
        ),
    }
    rows["list_train.txt"][1].append(("0001/0001_000_02_0303morning_0020_1.jpg", 1))
    base.mkdir(parents=True, exist_ok=True)
    for list_name, (image_dir, entries) in rows.items():
        if list_name == "list_val.txt" and not with_val:
            continue
        (base / list_name).write_text("".join(f"{rel} {pid}\n" for rel, pid in entries))
        for rel, _ in entries:
            touch((base / image_dir / rel).parent, Path(rel).name)


@pytest.mark.parametrize(
    ("version", "dirs"), [("MSMT17_V1", ("train", "test")), ("MSMT17_V2", ("mask_train_v2", "mask_test_v2"))]
)
def test_msmt17_versions(tmp_path: Path, version: str, dirs: tuple[str, str]) -> None:
    make_msmt(tmp_path / version, *dirs)
    split = load_dataset("msmt17", tmp_path)
    assert split.root == str(tmp_path / version)
    assert [(Path(p).parent.parent.name, pid, cam) for p, pid, cam in split.train] == [
        (dirs[0], 0, 0),
        (dirs[0], 1, 1),
        (dirs[0], 2, 14),  # from list_val.txt
    ]
    assert [(pid, cam) for _, pid, cam in split.query] == [(0, 2)]
    assert [(pid, cam) for _, pid, cam in split.gallery] == [(0, 4), (1, 6)]
    assert all(Path(p).parent.parent.name == dirs[1] for p, _, _ in split.query + split.gallery)
    without_val = load_dataset("msmt17", tmp_path, use_val=False)
    assert (len(without_val.train), without_val.num_train_pids) == (2, 2)


def test_msmt17_errors(tmp_path: Path) -> None:
    make_msmt(tmp_path, "train", "test", with_val=False)
    assert len(load_dataset("msmt17", tmp_path).train) == 2  # list_val.txt is optional
    (tmp_path / "list_query.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"msmt17: .* has no entry 'list_query\.txt'"):
        load_dataset("msmt17", tmp_path)
    (tmp_path / "list_query.txt").write_text("0000/0000_000_03_0113morning_0099_0.jpg 0\n")
    with pytest.raises(DatasetLayoutError, match=r"1 image\(s\) listed in .*list_query\.txt are missing"):
        load_dataset("msmt17", tmp_path)
    (tmp_path / "list_query.txt").write_text("0000/0000_000_03_0113morning_0015_0.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"list_query\.txt:1: .* is not '<relative path> <pid>'"):
        load_dataset("msmt17", tmp_path)


# --------------------------------------------------------------------------------------------- CUHK01


def test_cuhk01_real(cuhk01_dir: Path) -> None:
    split = load_dataset("cuhk01", cuhk01_dir)
    everything = split.train + split.query + split.gallery
    assert len(everything) == 3884 and len({p for p, _, _ in everything}) == 3884
    assert (len(split.train), split.num_train_pids, split.num_train_cams) == (1940, 485, 2)
    assert (len(split.query), len(ids(split.query))) == (972, 486)
    assert (len(split.gallery), ids(split.gallery)) == (972, ids(split.query))
    check_train_relabelled(split)
    # camera from the name: 001-002 → 0 (queries), 003-004 → 1 (gallery)
    assert {Path(p).stem[4:] for p, _, _ in split.query} == {"001", "002"}
    assert {Path(p).stem[4:] for p, _, _ in split.gallery} == {"003", "004"}
    assert all(cam == 0 for *_, cam in split.query) and all(cam == 1 for *_, cam in split.gallery)
    train_ids = {int(Path(p).stem[:4]) for p, _, _ in split.train}
    assert len(train_ids) == 485 and not train_ids & ids(split.query)
    assert all(int(Path(p).stem[:4]) == pid for p, pid, _ in split.query + split.gallery)

    again = load_dataset("cuhk01", cuhk01_dir, split_seed=0)
    assert again.train == split.train and again.query == split.query
    other = load_dataset("cuhk01", cuhk01_dir, split_seed=1)
    other_ids = {int(Path(p).stem[:4]) for p, _, _ in other.train}
    assert len(other_ids) == 485 and other_ids != train_ids
    small = load_dataset("cuhk01", cuhk01_dir, num_train_ids=100)
    assert (small.num_train_pids, len(ids(small.query))) == (100, 871)


def test_cuhk01_generated_errors(tmp_path: Path) -> None:
    touch(tmp_path / "campus", "0001001.png", "0001003.png", "0002002.png", "0002004.png")
    split = load_dataset("cuhk01", tmp_path)  # looks one level down
    assert split.root == str(tmp_path / "campus") and split.num_train_pids == 1
    touch(tmp_path / "campus", "0003005.png")
    with pytest.raises(DatasetLayoutError, match="camera 5, expected 1..4"):
        load_dataset("cuhk01", tmp_path)
    (tmp_path / "campus" / "0003005.png").unlink()
    touch(tmp_path / "campus", "img_1.png")
    with pytest.raises(DatasetLayoutError, match=r"img_1\.png does not match .*e\.g\. 0001001\.png"):
        load_dataset("cuhk01", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="cuhk01: .*empty has no images"):
        load_dataset("cuhk01", tmp_path / "empty")


# ------------------------------------------------------------------------------------ folder (own data)


def test_folder_with_camera_tokens_and_string_ids(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "bob", "bob_c2_1.jpg", "bob_c3s1_x.PNG")
    touch(tmp_path / "train" / "alice" / "day1", "a_c1_0.jpeg")
    touch(tmp_path / "train" / "alice", "a_c1_1.BMP", "notes.txt", ".hidden.jpg")
    touch(tmp_path / "query" / "zed", "z_c1_0.jpg")
    touch(tmp_path / "gallery" / "zed", "z_c3_0.jpg")
    touch(tmp_path / "gallery" / "carol", "c_c2_0.jpg")
    split = load_dataset("folder", tmp_path)
    # alice → 0, bob → 1; cameras 1, 2, 3 → 0, 1, 2
    assert [(Path(p).name, pid, cam) for p, pid, cam in split.train] == [
        ("a_c1_1.BMP", 0, 0),
        ("a_c1_0.jpeg", 0, 0),  # alice/day1/ sorts after alice/a_c1_1.BMP
        ("bob_c2_1.jpg", 1, 1),
        ("bob_c3s1_x.PNG", 1, 2),
    ]
    assert (split.num_train_pids, split.num_train_cams) == (2, 3)
    # test identities: carol → 0, zed → 1, shared between query and gallery
    assert [(pid, cam) for _, pid, cam in split.query] == [(1, 0)]
    assert [(pid, cam) for _, pid, cam in split.gallery] == [(0, 1), (1, 2)]


def test_folder_without_tokens_and_without_test(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "7", "x.jpg", "disc3.jpg")  # "disc3" is not a camera token
    touch(tmp_path / "train" / "10", "y.jpg")
    only_train = load_dataset("folder", tmp_path)
    assert [pid for _, pid, _ in only_train.train] == [0, 1, 1]  # "10" < "7" as strings
    assert {cam for _, _, cam in only_train.train} == {0}
    assert only_train.query == [] and only_train.gallery == []
    touch(tmp_path / "query" / "p", "q.jpg")
    touch(tmp_path / "gallery" / "p", "g.jpg")
    split = load_dataset("folder", tmp_path)
    assert [(pid, cam) for _, pid, cam in split.query + split.gallery] == [(0, 0), (0, 1)]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetLayoutError, match=r"folder: .* has no folder 'train' \(expected train/<identity>"
    ):
        load_dataset("folder", tmp_path)
    touch(tmp_path / "train", "loose.jpg")
    with pytest.raises(DatasetLayoutError, match=r"holds images directly \(loose\.jpg, \.\.\.\)"):
        load_dataset("folder", tmp_path)
    (tmp_path / "train" / "loose.jpg").unlink()
    touch(tmp_path / "train" / "someone", "readme.md")
    with pytest.raises(DatasetLayoutError, match="has no images"):
        load_dataset("folder", tmp_path)
