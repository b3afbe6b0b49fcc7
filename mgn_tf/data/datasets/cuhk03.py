"""CUHK03, new protocol (767 train / 700 test identities), ``variant="labeled" | "detected"``.

Two sources, tried in this order:

- CUHK03-NP folders: ``<root>[/cuhk03-np]/<variant>/{bounding_box_train,query,bounding_box_test}``,
  names ``0001_c1_1.png`` (pid, camera 1-2, index), read as Market-1501 layout.
- The raw release: ``<root>/cuhk-03.mat`` (or ``cuhk03_release/cuhk-03.mat``) with
  ``<root>/cuhk03_new_protocol_config_<variant>.mat``; the images are extracted once to
  ``<root>/images_<variant>/`` (see `mgn_tf.data.datasets.cuhk03_mat`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mgn_tf.data.datasets.base import (
    DatasetLayoutError,
    Pattern,
    Split,
    found,
    make_split,
    read_market_layout,
)
from mgn_tf.data.datasets.cuhk03_mat import VARIANTS, load_new_protocol

CUHK03_NP_PATTERN = Pattern(re.compile(r"(?P<pid>\d+)_c(?P<cam>\d)_\d+"), "0001_c1_1.png", num_cams=2)
_MAT_PATHS = ("cuhk-03.mat", "cuhk03_release/cuhk-03.mat")


def read_cuhk03(root: Path, variant: str = "labeled") -> Split:
    """CUHK03 new protocol (767 train / 700 test ids) from CUHK03-NP folders or the raw .mat release."""
    if variant not in VARIANTS:
        raise ValueError(f"cuhk03: unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if not root.is_dir():
        raise DatasetLayoutError(f"cuhk03: {root} does not exist or is not a folder")
    split = _read_np_folders(root, variant)
    return split if split is not None else _read_raw_release(root, variant)


def _read_np_folders(root: Path, variant: str) -> Split | None:
    """The CUHK03-NP ``<variant>/`` folder in ``root`` or its ``cuhk03-np/`` child; None if neither has one.

    A root with only the other variant's folder is an error: the user most likely asked for the wrong one.
    """
    np_roots = [root] + sorted(c for c in root.iterdir() if c.is_dir() and c.name.lower() == "cuhk03-np")
    for np_root in np_roots:
        if (np_root / variant).is_dir():
            return read_market_layout("cuhk03", np_root / variant, CUHK03_NP_PATTERN, multi_query_dir=None)
        other = next((v for v in VARIANTS if (np_root / v).is_dir()), None)
        if other is not None:
            raise DatasetLayoutError(
                f"cuhk03: {np_root} has no folder {variant!r} for variant={variant!r} (expected "
                f"{variant}/ beside {other}/, each with bounding_box_train/, query/, bounding_box_test/); "
                f"found: {found(np_root)}"
            )
    return None


def _read_raw_release(root: Path, variant: str) -> Split:
    """The raw release: ``cuhk-03.mat`` and the ``variant`` config, extracted once to images_<variant>/."""
    config = root / f"cuhk03_new_protocol_config_{variant}.mat"
    mat_path = next((root / p for p in _MAT_PATHS if (root / p).is_file()), None)
    if mat_path is None:
        raise DatasetLayoutError(
            f"cuhk03: {root} has neither CUHK03-NP folders nor 'cuhk-03.mat' (expected {variant}/ with "
            f"bounding_box_train/, query/, bounding_box_test/ (also under cuhk03-np/), or the raw release "
            f"cuhk-03.mat with {config.name}); found: {found(root)}"
        )
    if not config.is_file():
        raise DatasetLayoutError(
            f"cuhk03: {root} has no file {config.name!r} (expected it beside {mat_path.name} for "
            f"variant={variant!r}); found: {found(root)}"
        )
    train, query, gallery = load_new_protocol(root, mat_path, config, variant)
    return make_split("cuhk03", root, train, query, gallery)
