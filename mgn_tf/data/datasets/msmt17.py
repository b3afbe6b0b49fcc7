"""MSMT17_V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``, ``mask_test_v2/``) with list files.

``list_train.txt``, ``list_val.txt`` (optional), ``list_query.txt`` and ``list_gallery.txt`` hold lines
``<relative path> <pid>``; the camera comes from the file name's third field
(``0000_000_01_0303morning_0015_0.jpg``: camera 1 of 15). ``use_val=True`` adds ``list_val.txt`` to
training: train + val (32,621 images, 1,041 ids) is the official MSMT17 training set.
"""

from __future__ import annotations

import re
from pathlib import Path

from mgn_tf.data.datasets.base import DatasetLayoutError, Item, Pattern, Split, make_split, missing_message

_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))  # MSMT17_V1, MSMT17_V2
_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
_LAYOUTS = tuple((*dirs, *_LISTS) for dirs in _DIRS)
_EXPECTED = "train/ and test/ (V1) or mask_train_v2/ and mask_test_v2/ (V2), " + ", ".join(_LISTS)
MSMT17_PATTERN = Pattern(
    re.compile(r"(?P<pid>\d+)_\d+_(?P<cam>\d+)_\w+"), "0000_000_01_0303morning_0015_0.jpg", num_cams=15
)


def read_msmt17(root: Path, use_val: bool = True) -> Split:
    """MSMT17 V1 or V2 in ``root`` or its only child folder; ``use_val``: train on ``list_val.txt`` too."""
    folder, train_dir, test_dir = _locate_msmt(root)
    train = _read_msmt_list(folder / "list_train.txt", train_dir)
    if use_val and (folder / "list_val.txt").is_file():
        train += _read_msmt_list(folder / "list_val.txt", train_dir)
    query = _read_msmt_list(folder / "list_query.txt", test_dir)
    gallery = _read_msmt_list(folder / "list_gallery.txt", test_dir)
    return make_split("msmt17", folder, train, query, gallery)


def _complete_layout(folder: Path) -> tuple[str, ...] | None:
    """The V1 or V2 entries if ``folder`` holds all of them, else None."""
    return next((lay for lay in _LAYOUTS if all((folder / e).exists() for e in lay)), None)


def _locate_msmt(root: Path) -> tuple[Path, Path, Path]:
    """(dataset folder, train image folder, test image folder): ``root`` or its only complete child."""
    if not root.is_dir():
        raise DatasetLayoutError(f"msmt17: {root} does not exist or is not a folder (expected {_EXPECTED})")
    if _complete_layout(root):
        folders = [root]
    else:
        folders = [c for c in sorted(root.iterdir()) if c.is_dir() and _complete_layout(c)]
    if len(folders) > 1:
        names = ", ".join(f.name for f in folders)
        raise DatasetLayoutError(f"msmt17: {root} holds several MSMT17 folders ({names}); pass one as root")
    if not folders:  # report against the layout the root comes closest to
        best = max(_LAYOUTS, key=lambda lay: sum((root / e).exists() for e in lay))
        missing = [e for e in best if not (root / e).exists()]
        raise DatasetLayoutError(missing_message("msmt17", root, missing, "entry", _EXPECTED))
    folder = folders[0]
    train_dir, test_dir = (folder / e for e in _complete_layout(folder)[:2])
    return folder, train_dir, test_dir


def _read_msmt_list(list_path: Path, image_dir: Path) -> list[Item]:
    """Lines ``<relpath> <pid>``; camid from the file name's third field; every file must exist."""
    items, missing = [], []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetLayoutError(
                f"msmt17: {list_path}:{lineno}: {line!r} is not '<relative path> <pid>' "
                "(e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0')"
            )
        path = image_dir / fields[0]
        _, camid = MSMT17_PATTERN.parse("msmt17", path)
        if not path.is_file():
            missing.append(path)
        items.append((str(path), int(fields[1]), camid))
    if missing:
        raise DatasetLayoutError(
            f"msmt17: {len(missing)} image(s) listed in {list_path} are missing from {image_dir}, "
            f"e.g. {missing[0]}"
        )
    if not items:
        raise DatasetLayoutError(f"msmt17: {list_path} lists no images (expected lines '<relpath> <pid>')")
    return items
