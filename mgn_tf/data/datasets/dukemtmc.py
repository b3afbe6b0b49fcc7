"""DukeMTMC-reID: the Market-1501 folder layout, names ``0001_c2_f0046182.jpg`` (pid, camera 1-8, frame)."""

from __future__ import annotations

import re
from pathlib import Path

from mgn_tf.data.datasets.base import Pattern, Split, read_market_layout

DUKE_PATTERN = Pattern(re.compile(r"(?P<pid>\d+)_c(?P<cam>\d)_f\d+"), "0001_c2_f0046182.jpg", num_cams=8)


def read_dukemtmc(root: Path) -> Split:
    """DukeMTMC-reID (8 cameras)."""
    return read_market_layout("dukemtmc", root, DUKE_PATTERN, multi_query_dir=None)
