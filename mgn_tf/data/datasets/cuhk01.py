"""CUHK01: a flat folder of ``PPPPNNN.png`` (NNN 001-002 camera A, 003-004 camera B), 971 identities.

There is no official split: the sorted identities are permuted with
``numpy.random.default_rng(split_seed).permutation``; the first ``num_train_ids`` (default: half, rounded
down: 485 of 971) train, the rest test. Test identities' camera-A images are the queries, their camera-B
images the gallery.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from mgn_tf.data.datasets.base import (
    DatasetLayoutError,
    Pattern,
    Split,
    found,
    make_split,
    read_folder_images,
)
from mgn_tf.files import is_image_name

CUHK01_PATTERN = Pattern(re.compile(r"(?P<pid>\d{4})(?P<cam>\d{3})"), "0001001.png", num_cams=4)


def read_cuhk01(root: Path, split_seed: int = 0, num_train_ids: int | None = None) -> Split:
    """CUHK01 in ``root`` or its only sub-folder with images, split by ``split_seed`` (module docstring)."""
    folder = _image_folder(root)
    items = read_folder_images("cuhk01", folder, CUHK01_PATTERN)
    items = [(path, pid, 0 if view < 2 else 1) for path, pid, view in items]  # views 0,1 → A; 2,3 → B

    ids = np.array(sorted({pid for _, pid, _ in items}))
    n_train = len(ids) // 2 if num_train_ids is None else num_train_ids
    if not 0 < n_train < len(ids):
        raise ValueError(f"cuhk01: num_train_ids={n_train} must be between 1 and {len(ids) - 1}")
    order = np.random.default_rng(split_seed).permutation(len(ids))
    train_ids = {int(pid) for pid in ids[order[:n_train]]}
    train = [it for it in items if it[1] in train_ids]
    query = [it for it in items if it[1] not in train_ids and it[2] == 0]
    gallery = [it for it in items if it[1] not in train_ids and it[2] == 1]
    return make_split("cuhk01", folder, train, query, gallery)


def _image_folder(root: Path) -> Path:
    """``root`` if it holds images, else its only sub-folder that does (the archive unpacks to campus/)."""
    if not root.is_dir():
        raise DatasetLayoutError(f"cuhk01: {root} does not exist or is not a folder (expected PPPPNNN.png)")

    def has_images(folder: Path) -> bool:
        return any(is_image_name(name) for name in os.listdir(folder))

    if has_images(root):
        return root
    children = [c for c in sorted(root.iterdir()) if c.is_dir() and has_images(c)]
    if len(children) != 1:
        raise DatasetLayoutError(
            f"cuhk01: {root} has no images (expected a flat folder of PPPPNNN.png, e.g. 0001001.png, "
            f"here or in a single sub-folder such as campus/); found: {found(root)}"
        )
    return children[0]
