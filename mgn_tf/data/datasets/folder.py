"""Your own data: ``train/<identity>/<images>``, optional ``query/<identity>/…`` and ``gallery/…``.

Identities are folder names (any string): training ones are relabelled 0..C-1 in sorted order,
query/gallery ones numbered in the sorted order of their union (same name, same pid). Images may sit in
sub-folders of an identity folder. Cameras come from a ``c<N>`` token in the file name (``x_c3_y.jpg``,
``0001_c3s1_…``), numbers mapped in sorted order over all subsets to 0..K-1; images without one get
camid 0 (train, query) or 1 (gallery), so no query/gallery pair is discarded as a same-camera match.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mgn_tf.data.datasets.base import DatasetLayoutError, Item, Split, found, make_split, missing_message
from mgn_tf.files import IMAGE_EXTENSIONS, is_image_name

SUBSETS = ("train", "query", "gallery")
_EXPECTED = "train/<identity>/<images>, optional query/<identity>/..., gallery/<identity>/..."
_CAMERA_TOKEN = re.compile(r"(?<![A-Za-z0-9])c(\d+)(?=s\d|[^A-Za-z0-9]|$)", re.IGNORECASE)
_DEFAULT_CAM = {"train": 0, "query": 0, "gallery": 1}

_Found = list[tuple[Path, str]]  # (image path, identity name)


def read_folder(root: Path) -> Split:
    """``train/``, ``query/``, ``gallery/`` of identity folders under ``root`` (see the module docstring)."""
    if not root.is_dir():
        raise DatasetLayoutError(f"folder: {root} does not exist or is not a folder (expected {_EXPECTED})")
    if not (root / "train").is_dir():
        raise DatasetLayoutError(missing_message("folder", root, ["train"], "folder", _EXPECTED))
    subsets = {s: _identity_images(root / s) if (root / s).is_dir() else [] for s in SUBSETS}
    if not subsets["train"]:
        raise DatasetLayoutError(
            f"folder: {root / 'train'} has no images ({', '.join(IMAGE_EXTENSIONS)}) in identity "
            f"sub-folders (expected {_EXPECTED}); found: {found(root / 'train')}"
        )
    camids = _camera_ids(subsets)
    test_names = sorted({name for s in ("query", "gallery") for _, name in subsets[s]})
    test_pid = {name: i for i, name in enumerate(test_names)}
    train_pid = {name: i for i, name in enumerate(sorted({name for _, name in subsets["train"]}))}

    def items(subset: str, pids: dict[str, int]) -> list[Item]:
        return [
            (str(path), pids[name], cam)
            for (path, name), cam in zip(subsets[subset], camids[subset], strict=True)
        ]

    return make_split(
        "folder", root, items("train", train_pid), items("query", test_pid), items("gallery", test_pid)
    )


def _identity_images(subset_dir: Path) -> _Found:
    """(image path, identity name) for every image under ``subset_dir/<identity>/`` (recursively)."""
    stray = sorted(p.name for p in subset_dir.iterdir() if p.is_file() and is_image_name(p.name))
    if stray:
        raise DatasetLayoutError(
            f"folder: {subset_dir} holds images directly ({stray[0]}, ...); expected one sub-folder per "
            f"identity: {subset_dir.name}/<identity>/<images>"
        )
    images = []
    for identity in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
        paths = [Path(d) / f for d, _, files in os.walk(identity) for f in files if is_image_name(f)]
        images += [(path, identity.name) for path in sorted(paths)]
    return images


def _camera_ids(subsets: dict[str, _Found]) -> dict[str, list[int]]:
    """Per subset, each image's camid: its ``c<N>`` token's rank among all tokens, else the default."""

    def token(path: Path) -> int | None:
        match = _CAMERA_TOKEN.search(path.stem)
        return None if match is None else int(match.group(1))

    tokens = {s: [token(p) for p, _ in subsets[s]] for s in subsets}
    cam_index = {
        n: i for i, n in enumerate(sorted({t for ts in tokens.values() for t in ts if t is not None}))
    }
    return {s: [_DEFAULT_CAM[s] if t is None else cam_index[t] for t in ts] for s, ts in tokens.items()}
