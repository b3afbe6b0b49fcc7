"""Market-1501 multi-query: each query's feature pooled with those of its identity's other boxes
(``gt_bbox/``) from the same camera. The gallery is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mgn_tf.data.datasets import Item
from mgn_tf.evaluation.metrics import l2_normalize


def multi_query_groups(query: Sequence[Item], multi_query: Sequence[Item]) -> list[np.ndarray]:
    """For every query, the indices into `multi_query` of the images pooled with it.

    Those are the multi-query images (Market-1501 ``gt_bbox``) with the query's pid AND camera, except an
    image with the query's own file name (the query images are themselves gt_bbox boxes; the query is
    pooled once, from its own feature).
    """
    by_key: dict[tuple[int, int], list[int]] = {}
    for j, (_, pid, cam) in enumerate(multi_query):
        by_key.setdefault((pid, cam), []).append(j)
    groups = []
    for path, pid, cam in query:
        name = os.path.basename(path)
        members = [j for j in by_key.get((pid, cam), []) if os.path.basename(multi_query[j][0]) != name]
        groups.append(np.array(members, dtype=np.int64))
    return groups


def multi_query_subset(query: Sequence[Item], multi_query: Sequence[Item]) -> list[Item]:
    """The multi-query images that `multi_query_groups` pools with at least one query, in list order."""
    used = sorted({int(j) for group in multi_query_groups(query, multi_query) for j in group})
    return [multi_query[j] for j in used]


def pool_multi_query(
    qf: np.ndarray, mqf: np.ndarray, groups: Sequence[np.ndarray], mode: str = "avg"
) -> np.ndarray:
    """Query features pooled over {the query} + its group: element-wise mean ("avg") or max ("max")."""
    if mode not in ("avg", "max"):
        raise ValueError(f"multi-query pooling must be 'avg' or 'max', got {mode!r}")
    if len(groups) != len(qf):
        raise ValueError(f"{len(groups)} groups for {len(qf)} queries")
    pooled = np.empty_like(qf)
    for i, group in enumerate(groups):
        stack = np.concatenate([qf[i : i + 1], mqf[group]]) if len(group) else qf[i : i + 1]
        pooled[i] = stack.mean(axis=0) if mode == "avg" else stack.max(axis=0)
    return pooled


def pooled_queries(
    qf: np.ndarray,
    query: Sequence[Item],
    mqf: np.ndarray,
    multi_query: Sequence[Item],
    mode: str,
    normalized: bool,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(pooled query features, groups): pools the per-image features the distance would see, i.e.
    L2-normalised ones when `normalized` (the distance normalises or is cosine)."""
    groups = multi_query_groups(query, multi_query)
    if normalized:
        qf, mqf = l2_normalize(qf), l2_normalize(mqf)
    return pool_multi_query(qf, mqf, groups, mode), groups
