"""`mgn_tf.data.scan`: a generated dataset seeded with every kind of bad file, scanned for real."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mgn_tf.data.scan import SCAN_JSON, SKIPPED_TXT, BadDataError, scan_items
from mgn_tf.files import atomic_path
from mgn_tf.images import decode_and_resize

SIZE = (32, 16)  # decode_and_resize target (height, width)


def _rgb(rng: np.random.Generator, height: int = 48, width: int = 24) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), np.uint8)


def _jpeg_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _pixels(path: str | Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode) if mode else image)


def _decodes(path: str) -> bool:
    image = decode_and_resize(tf.constant(Path(path).read_bytes()), SIZE).numpy()
    return image.shape == (*SIZE, 3) and bool(np.isfinite(image).all())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """Valid RGB JPEG/PNG for pids 0..9 plus one file of each bad or convertible kind."""
    root = tmp_path_factory.mktemp("scan_data")
    rng = np.random.default_rng(0)
    items, valid = [], []
    for pid in range(10):
        for k in range(3):
            ext = "jpg" if (pid + k) % 2 else "png"
            path = root / f"{pid:04d}_c{k + 1}_{k}.{ext}"
            Image.fromarray(_rgb(rng)).save(path)
            items.append((str(path), pid, k))
            valid.append(str(path))

    def add(name: str, pid: int, data: bytes | None = None) -> str:
        path = root / name
        if data is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        items.append((str(path), pid, 0))
        return str(path)

    good_jpeg = _jpeg_bytes(_rgb(rng, 64, 32))
    gray = rng.integers(0, 256, (48, 24), np.uint8)
    rgba = rng.integers(0, 256, (48, 24, 4), np.uint8)
    sixteen = rng.integers(0, 65536, (48, 24), np.uint16)
    tiff = _rgb(rng)

    def encoded(image: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        return buffer.getvalue()

    paths = {
        # pid 10: one valid image + a zero-byte file -> single usable image
        "pid10_ok": add("0010_ok.jpg", 10, _jpeg_bytes(_rgb(rng))),
        "zero": add("0010_zero.jpg", 10, b""),
        # pid 11: only a truncated JPEG -> lost identity
        "truncated_half": add("0011_half.jpg", 11, good_jpeg[: len(good_jpeg) // 2]),
        "truncated_tail": add("0001_tail.jpg", 1, good_jpeg[: int(len(good_jpeg) * 0.95)]),
        "text": add("0002_text.jpg", 2, b"this is not an image, just text\n" * 4),
        "missing": add("0003_missing.jpg", 3),
        "directory": add("0003_a_folder.jpg", 3),
        "gray": add("0004_gray.jpg", 4, encoded(Image.fromarray(gray), "JPEG")),
        "gray_twin": add("other/0004_gray.jpg", 4, encoded(Image.fromarray(gray[::-1]), "JPEG")),
        "palette": add("0005_palette.png", 5, encoded(Image.fromarray(_rgb(rng)).convert("P"), "PNG")),
        "rgba": add("0006_rgba.png", 6, encoded(Image.fromarray(rgba), "PNG")),
        "cmyk": add("0007_cmyk.jpg", 7, encoded(Image.fromarray(_rgb(rng)).convert("CMYK"), "JPEG")),
        "sixteen": add("0008_16bit.png", 8, encoded(Image.fromarray(sixteen), "PNG")),
        "tiff": add("0009_tiff.tif", 9, encoded(Image.fromarray(tiff), "TIFF")),
    }
    (root / "0003_a_folder.jpg").mkdir()
    return {
        "root": root,
        "items": items,
        "valid": valid,
        "paths": paths,
        "gray": gray,
        "rgba": rgba,
        "sixteen": sixteen,
        "tiff": tiff,
    }


@pytest.fixture(scope="module")
def scanned(dataset, tmp_path_factory):
    convert_dir = tmp_path_factory.mktemp("converted")
    report = scan_items(dataset["items"], convert_dir, workers=4, progress=False)
    return report, convert_dir


BAD_REASONS = {
    "zero": "empty",
    "truncated_half": "truncated",
    "truncated_tail": "truncated",
    "text": "not an image",
    "missing": "missing",
    "directory": "unreadable",
}
CONVERTED_REASONS = {
    "gray": "grayscale (L)",
    "gray_twin": "grayscale (L)",
    "palette": "palette (P)",
    "rgba": "RGBA",
    "cmyk": "CMYK",
    "sixteen": "16-bit",
    "tiff": "TIFF RGB that TF cannot decode",
}


def test_bad_files_reported_by_path(dataset, scanned):
    report, _ = scanned
    bad = dict(report.bad)
    assert set(bad) == {dataset["paths"][key] for key in BAD_REASONS}
    for key, kind in BAD_REASONS.items():
        assert bad[dataset["paths"][key]].startswith(kind + ":"), bad[dataset["paths"][key]]
    usable = {path for path, _, _ in report.items}
    assert not usable & set(bad)
    assert report.num_input == len(dataset["items"])


def test_valid_files_kept_in_order(dataset, scanned):
    report, _ = scanned
    assert [item for item in report.items if item[0] in dataset["valid"]] == dataset["items"][:30]


def test_converted_files(dataset, scanned):
    report, convert_dir = scanned
    paths = dataset["paths"]
    converted = {original: (target, reason) for original, target, reason in report.converted}
    assert set(converted) == {paths[key] for key in CONVERTED_REASONS}
    for key, text in CONVERTED_REASONS.items():
        target, reason = converted[paths[key]]
        assert text in reason, reason
        assert Path(target).parent == convert_dir and Path(target).is_file()
        assert Path(target).name.startswith(Path(paths[key]).stem + "_")  # original name stays visible
        with Image.open(target) as image:
            assert image.mode == "RGB" and image.format == "PNG"
        assert _decodes(target)
    # Same basename in two folders: two distinct copies.
    assert converted[paths["gray"]][0] != converted[paths["gray_twin"]][0]
    # Items point at the copies, with their pid/camid.
    assert (converted[paths["rgba"]][0], 6, 0) in report.items
    assert not {path for path, _, _ in report.items} & set(converted)


def test_converted_pixels_preserved(dataset, scanned):
    report, _ = scanned
    paths = dataset["paths"]
    target = {original: copy for original, copy, _ in report.converted}

    gray = _pixels(target[paths["gray"]])
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    assert np.array_equal(gray[..., 0], _pixels(paths["gray"]))  # the source's own decode, exactly
    assert np.abs(gray[..., 0].astype(int) - dataset["gray"]).mean() < 8  # and close to what was drawn

    assert np.array_equal(_pixels(target[paths["palette"]]), _pixels(paths["palette"], "RGB"))
    assert np.array_equal(_pixels(target[paths["rgba"]]), dataset["rgba"][..., :3])  # alpha dropped
    assert np.array_equal(_pixels(target[paths["tiff"]]), dataset["tiff"])
    assert np.array_equal(_pixels(target[paths["cmyk"]]), _pixels(paths["cmyk"], "RGB"))

    # 16-bit: round(v / 257), within 1 of what TF itself makes of the 16-bit PNG.
    sixteen = _pixels(target[paths["sixteen"]]).astype(int)
    expected = np.round(dataset["sixteen"] / 257.0).astype(int)
    assert np.array_equal(sixteen[..., 0], expected) and np.array_equal(sixteen[..., 2], expected)
    tf_view = tf.io.decode_image(Path(paths["sixteen"]).read_bytes(), channels=3).numpy().astype(int)
    assert np.abs(tf_view - sixteen).max() <= 1


def test_identities(scanned):
    report, _ = scanned
    assert report.single_image_pids == [10]
    assert report.lost_pids == [11]


def test_every_item_decodes(scanned):
    """The property training relies on: `decode_and_resize` never fails on a scanned item."""
    report, _ = scanned
    assert len(report.items) == 30 + 1 + len(CONVERTED_REASONS)
    for path, _, _ in report.items:
        assert _decodes(path), path


def test_write_and_summary(dataset, scanned, tmp_path):
    report, _ = scanned
    json_path = report.write(tmp_path / "run")
    assert json_path == tmp_path / "run" / SCAN_JSON
    record = json.loads(json_path.read_text())
    assert record["num_input"] == len(dataset["items"])
    assert record["num_usable"] == len(report.items) and record["num_bad"] == len(BAD_REASONS)
    assert [(b["path"], b["reason"]) for b in record["bad"]] == report.bad
    assert [(c["original"], c["converted"], c["reason"]) for c in record["converted"]] == report.converted
    assert [tuple(item) for item in record["items"]] == report.items
    assert record["single_image_pids"] == [10] and record["lost_pids"] == [11]

    lines = (tmp_path / "run" / SKIPPED_TXT).read_text().splitlines()
    assert [tuple(line.split("\t")) for line in lines] == report.bad

    summary = report.summary()
    assert f"{len(dataset['items'])} items" in summary and f"{len(BAD_REASONS)} skipped" in summary
    assert report.bad[0][0] in summary and "truncated" in summary and "10" in summary


def test_second_scan_reuses_copies(dataset, scanned):
    report, convert_dir = scanned
    mtimes = {copy: Path(copy).stat().st_mtime_ns for _, copy, _ in report.converted}
    again = scan_items(dataset["items"], convert_dir, progress=False)
    assert again.items == report.items and again.bad == report.bad and again.converted == report.converted
    assert {copy: Path(copy).stat().st_mtime_ns for copy in mtimes} == mtimes
    assert len(list(convert_dir.iterdir())) == len(CONVERTED_REASONS)  # no temp files left


def test_newer_source_is_reconverted(tmp_path):
    source = tmp_path / "0001_gray.png"
    Image.fromarray(np.zeros((8, 4), np.uint8)).save(source)
    first = scan_items([(str(source), 1, 0)], tmp_path / "conv", progress=False)
    copy = Path(first.converted[0][1])
    Image.fromarray(np.full((8, 4), 200, np.uint8)).save(source)
    future = copy.stat().st_mtime_ns + 10**9
    os.utime(source, ns=(future, future))
    scan_items([(str(source), 1, 0)], tmp_path / "conv", progress=False)
    assert (_pixels(copy) == 200).all()


def test_broken_copy_is_rewritten(tmp_path):
    source = tmp_path / "0001_gray.png"
    Image.fromarray(np.full((8, 4), 77, np.uint8)).save(source)
    copy = Path(scan_items([(str(source), 1, 0)], tmp_path / "conv", progress=False).converted[0][1])
    copy.write_bytes(b"half a png")  # newer than the source, but not decodable
    report = scan_items([(str(source), 1, 0)], tmp_path / "conv", progress=False)
    assert report.items == [(str(copy), 1, 0)] and (_pixels(copy) == 77).all()


def test_two_spellings_of_one_file_share_one_copy(tmp_path):
    """Both spellings name one copy; two workers writing it at once never share a temporary file."""
    source = tmp_path / "0001_gray.png"
    Image.fromarray(np.full((8, 4), 9, np.uint8)).save(source)
    (tmp_path / "sub").mkdir()
    items = [(str(source), 1, 0), (str(tmp_path / "sub" / ".." / source.name), 1, 1)]
    for round_ in range(10):  # a fresh convert_dir each round: both workers convert at the same time
        convert_dir = tmp_path / f"conv{round_}"
        report = scan_items(items, convert_dir, workers=2, progress=False)
        copies = {path for path, _, _ in report.items}
        assert report.bad == [] and len(report.items) == 2 and len(copies) == 1
        assert [p.name for p in convert_dir.iterdir()] == [Path(copies.pop()).name]  # no temp files left
        assert (_pixels(report.items[0][0]) == 9).all()
    target = tmp_path / "both.png"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the last rename wins


def test_strict_raises_with_paths(tmp_path):
    rng = np.random.default_rng(1)
    good = tmp_path / "0001_good.png"
    Image.fromarray(_rgb(rng)).save(good)
    empty = tmp_path / "0001_empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "0002_text.jpg"
    text.write_text("hello")
    items = [(str(good), 1, 0), (str(empty), 1, 1), (str(text), 2, 0)]
    with pytest.raises(BadDataError) as info:
        scan_items(items, tmp_path / "conv", strict=True, progress=False)
    message = str(info.value)
    assert str(empty) in message and str(text) in message and "strict" in message
    assert [path for path, _ in info.value.report.bad] == [str(empty), str(text)]
    # Not strict: the same list trains on the good file.
    assert scan_items(items, tmp_path / "conv", progress=False).items == [(str(good), 1, 0)]


def test_nothing_usable_raises(tmp_path):
    empty = tmp_path / "0001_empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 2 items") as info:
        scan_items([(str(empty), 1, 0), (str(tmp_path / "gone.jpg"), 2, 0)], tmp_path / "c", progress=False)
    assert str(empty) in str(info.value)
    with pytest.raises(ValueError, match="empty"):
        scan_items([], tmp_path / "c", progress=False)


def test_unreadable_file(tmp_path):
    path = tmp_path / "0001_locked.png"
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(path)
    good = tmp_path / "0001_good.png"
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(good)
    path.chmod(0)
    try:
        try:
            path.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not block reads")
        report = scan_items([(str(path), 1, 0), (str(good), 1, 1)], tmp_path / "c", progress=False)
        assert report.bad == [(str(path), "unreadable: permission denied")]
    finally:
        path.chmod(0o644)
