"""The raw CUHK03 release: ``cuhk-03.mat`` (MATLAB v7.3, i.e. HDF5) plus the new-protocol configs.

``cuhk-03.mat`` holds two cells, ``labeled`` and ``detected``: 5×1 cells (one per camera pair) of
N×10 cells (one row per person; columns 0-4 camera A, 5-9 camera B) of H×W×3 uint8 images, empty
cells where a person has fewer images. MATLAB v7.3 writes a cell as a dataset of HDF5 object
references into ``#refs#`` and stores every array with its axes reversed, hence the ``.T``.

``cuhk03_new_protocol_config_<variant>.mat`` (MATLAB v5) lists ``filelist`` (names
``<pair>_<person>_<camera>_<column>.png``, all 1-based, e.g. ``1_001_1_01.png``), ``labels``,
``camId`` and the 1-based ``train_idx``, ``query_idx``, ``gallery_idx`` into that list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mgn_tf.data.datasets.base import DatasetLayoutError, Item
from mgn_tf.files import atomic_path, atomic_write_text

if TYPE_CHECKING:
    import h5py

VARIANTS = ("labeled", "detected")
MARKER = ".extraction_complete"
CONFIG_FIELDS = ("filelist", "labels", "camId", "train_idx", "query_idx", "gallery_idx")
_NAME = re.compile(r"(?P<pair>\d+)_(?P<person>\d+)_(?P<cam>[12])_(?P<col>\d+)\.png")


@dataclass(frozen=True)
class Protocol:
    """A new-protocol config with 0-based indices and camera ids."""

    filelist: list[str]
    labels: np.ndarray
    camids: np.ndarray
    train_idx: np.ndarray
    query_idx: np.ndarray
    gallery_idx: np.ndarray


def parse_image_name(name: str) -> tuple[int, int, int]:
    """``'1_001_2_06.png'`` → 0-based (camera pair, person row, cell column) = (0, 0, 5)."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise DatasetLayoutError(
            f"cuhk03: image name {name!r} does not match <pair>_<person>_<camera>_<image>.png "
            "(e.g. 1_001_1_01.png)"
        )
    pair, person, cam, col = (int(match[k]) for k in ("pair", "person", "cam", "col"))
    if not (pair >= 1 and person >= 1 and 1 <= col <= 10 and (col <= 5) == (cam == 1)):
        raise DatasetLayoutError(
            f"cuhk03: image name {name!r} is out of range (pair, person from 1; camera 1 with images 01-05, "
            "camera 2 with images 06-10)"
        )
    return pair - 1, person - 1, col - 1


def _as_str(cell: object) -> str:
    """One ``filelist`` entry as loadmat returns it (a 1-element char array, or a str)."""
    value = np.asarray(cell).ravel()
    return str(value[0]) if value.size else ""


def _indices(config: dict, key: str, size: int, path: Path) -> np.ndarray:
    """A 1-based MATLAB index vector as 0-based int64, checked against ``size``."""
    raw = np.asarray(config[key], dtype=np.float64).ravel()
    idx = raw.astype(np.int64)
    if not np.array_equal(idx, raw) or raw.size == 0 or idx.min() < 1 or idx.max() > size:
        raise DatasetLayoutError(
            f"cuhk03: {path}: {key} must be non-empty 1-based (MATLAB) indices in 1..{size}; "
            f"got values in {raw.min() if raw.size else '-'}..{raw.max() if raw.size else '-'}"
        )
    return idx - 1


def read_protocol(path: str | Path) -> Protocol:
    """Read a ``cuhk03_new_protocol_config_*.mat`` file (MATLAB v5, via scipy)."""
    from scipy.io import loadmat

    path = Path(path)
    config = loadmat(path)
    missing = [key for key in CONFIG_FIELDS if key not in config]
    if missing:
        raise DatasetLayoutError(
            f"cuhk03: {path} has no field(s) {', '.join(missing)} (expected {', '.join(CONFIG_FIELDS)})"
        )
    filelist = [_as_str(cell) for cell in np.asarray(config["filelist"], dtype=object).ravel()]
    labels = np.asarray(config["labels"]).ravel().astype(np.int64)
    cams = np.asarray(config["camId"]).ravel().astype(np.int64)
    if not len(filelist) == len(labels) == len(cams):
        raise DatasetLayoutError(
            f"cuhk03: {path}: filelist, labels and camId differ in length "
            f"({len(filelist)}, {len(labels)}, {len(cams)})"
        )
    if cams.size and cams.min() < 1:
        raise DatasetLayoutError(f"cuhk03: {path}: camId must be 1-based, found {cams.min()}")
    n = len(filelist)
    return Protocol(
        filelist=filelist,
        labels=labels,
        camids=cams - 1,
        train_idx=_indices(config, "train_idx", n, path),
        query_idx=_indices(config, "query_idx", n, path),
        gallery_idx=_indices(config, "gallery_idx", n, path),
    )


def extract_images(mat_path: str | Path, variant: str, names: list[str], out_dir: str | Path) -> int:
    """Write each image named in ``names`` once to ``out_dir`` as PNG; return how many were written.

    Every image goes to a hidden temp name first and is then renamed, so a file with its final name is
    always complete; a marker file records a finished extraction, after which nothing is re-read.
    """
    from PIL import Image

    if variant not in VARIANTS:
        raise ValueError(f"cuhk03: unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if marker.is_file():
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [name for name in names if not (out_dir / name).is_file()]
    if todo:
        with _open_mat(mat_path) as mat:
            cells = _CellReader(mat, Path(mat_path), variant)
            for name in todo:
                image = Image.fromarray(np.ascontiguousarray(cells.image(name)))
                with atomic_path(out_dir / name) as tmp:
                    image.save(tmp, format="PNG")
    atomic_write_text(marker, f"{len(names)} {variant} images from {Path(mat_path).name}\n")
    return len(todo)


def _open_mat(mat_path: str | Path) -> h5py.File:
    """``cuhk-03.mat`` opened with h5py (MATLAB v7.3 files are HDF5)."""
    import h5py

    try:
        return h5py.File(mat_path, "r")
    except OSError as err:
        raise DatasetLayoutError(
            f"cuhk03: cannot read {mat_path} as a MATLAB v7.3 (HDF5) file: {err}"
        ) from err


class _CellReader:
    """The images of one variant's cell in an open ``cuhk-03.mat``, one camera-pair table read at a time."""

    def __init__(self, mat: h5py.File, mat_path: Path, variant: str) -> None:
        if variant not in mat:
            raise DatasetLayoutError(
                f"cuhk03: {mat_path} has no {variant!r} cell (expected {', '.join(VARIANTS)}); "
                f"found: {', '.join(mat.keys())}"
            )
        self.mat, self.mat_path = mat, mat_path
        self.pair_refs = np.asarray(mat[variant][()]).ravel()
        self.tables: dict[int, np.ndarray] = {}

    def image(self, name: str) -> np.ndarray:
        """The H×W×3 uint8 image that ``name`` (``<pair>_<person>_<camera>_<column>.png``) refers to."""
        pair, person, col = parse_image_name(name)
        table = self._table(name, pair, person)
        image = np.asarray(self.mat[table[person, col]][()]).T  # HDF5 (3, W, H) → (H, W, 3)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DatasetLayoutError(
                f"cuhk03: {name}: cell ({person + 1}, {col + 1}) of camera pair {pair + 1} in "
                f"{self.mat_path} is not an H×W×3 uint8 image (shape {image.shape}, {image.dtype})"
            )
        return image

    def _table(self, name: str, pair: int, person: int) -> np.ndarray:
        """The (persons, 10) reference table of camera pair ``pair``, checked to hold ``person``."""
        if pair >= len(self.pair_refs):
            raise DatasetLayoutError(
                f"cuhk03: {name}: {self.mat_path} has only {len(self.pair_refs)} camera pairs"
            )
        if pair not in self.tables:
            self.tables[pair] = np.asarray(self.mat[self.pair_refs[pair]][()]).T  # (persons, 10) references
        table = self.tables[pair]
        if table.ndim != 2 or table.shape[1] != 10 or person >= table.shape[0]:
            raise DatasetLayoutError(
                f"cuhk03: {name}: camera pair {pair + 1} of {self.mat_path} is a {table.shape} cell, "
                f"expected (persons, 10) with at least {person + 1} persons"
            )
        return table


def load_new_protocol(
    root: str | Path, mat_path: str | Path, config_path: str | Path, variant: str
) -> tuple[list[Item], list[Item], list[Item]]:
    """Extract (once) to ``<root>/images_<variant>/`` and return train, query, gallery.

    All three carry the config's original labels (the caller relabels training pids) and 0-based
    camids from ``camId``.
    """
    protocol = read_protocol(config_path)
    out_dir = Path(root) / f"images_{variant}"
    extract_images(mat_path, variant, protocol.filelist, out_dir)

    def items(indices: np.ndarray) -> list[Item]:
        return [
            (str(out_dir / protocol.filelist[i]), int(protocol.labels[i]), int(protocol.camids[i]))
            for i in indices
        ]

    return items(protocol.train_idx), items(protocol.query_idx), items(protocol.gallery_idx)
