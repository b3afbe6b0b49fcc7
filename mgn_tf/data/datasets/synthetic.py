"""The built-in synthetic dataset: generated under the root on first use, then read as Market-1501 layout.

The generator (`mgn_tf.data.synthetic`) writes Market names; the suffix after the camera is not checked
and camera numbers are not bounded, so other generator settings read as well.
"""

from __future__ import annotations

import re
from pathlib import Path

from mgn_tf.data.datasets.base import Pattern, Split, read_market_layout, root_path

SYNTHETIC_PATTERN = Pattern(
    re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:[s_].*)?"), "0002_c1s1_000451_03.jpg", num_cams=None
)


def read_synthetic(root: Path, seed: int = 0) -> Split:
    """The built-in synthetic dataset: written under ``root`` if missing, then read as Market layout."""
    # Imported here: the generator needs PIL, which reading the other datasets does not.
    from mgn_tf.data.synthetic import ensure_synthetic

    folder = ensure_synthetic(root, seed=seed)
    return read_market_layout("synthetic", root_path(folder), SYNTHETIC_PATTERN, multi_query_dir=None)
