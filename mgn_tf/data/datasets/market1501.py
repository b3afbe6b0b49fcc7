"""Market-1501: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` and optional ``gt_bbox/``.

Names ``0002_c1s1_000451_03.jpg``: pid, camera 1-6, sequence, frame, box. Junk (pid -1) is dropped
everywhere; distractors (pid 0) are kept in the gallery only. ``gt_bbox/`` (the hand-drawn boxes), when
present, is returned as ``multi_query``.
"""

from __future__ import annotations

import re
from pathlib import Path

from mgn_tf.data.datasets.base import Pattern, Split, read_market_layout

MARKET_PATTERN = Pattern(
    re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d)s\d+_\d+_\d+"), "0002_c1s1_000451_03.jpg", num_cams=6
)


def read_market1501(root: Path) -> Split:
    """Market-1501; ``gt_bbox`` (when present) becomes ``multi_query``."""
    return read_market_layout("market1501", root, MARKET_PATTERN, multi_query_dir="gt_bbox")
