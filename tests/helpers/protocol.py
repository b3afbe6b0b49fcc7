"""The brute-force oracle of the re-ID evaluation protocol, written as plainly as possible.

Per query: walk the gallery in the given order, drop junk (pid -1, or the query's pid from the query's
camera), mark true matches (same pid); queries without a match are skipped. CMC: the first match within
the top k; AP: the mean of the precision at each match (non-interpolated); INP: matches / position of
the last match (Ye et al. 2020). Every metrics test compares mgn_tf against this.
"""

from __future__ import annotations

import numpy as np


def stable_orders(dist: np.ndarray) -> list[list[int]]:
    """Each row's gallery indices by ascending distance, ties in gallery order (Python's sort is stable)."""
    return [sorted(range(dist.shape[1]), key=lambda j, row=row: float(row[j])) for row in dist]


def ranked_matches(orders, q_pids, g_pids, q_cams, g_cams) -> list[list[bool] | None]:
    """Per query, the match flags of its ranked non-junk gallery items; None without any match."""
    out = []
    for q, order in enumerate(orders):
        kept = [
            g for g in order if g_pids[g] != -1 and not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])
        ]
        matches = [bool(g_pids[g] == q_pids[q]) for g in kept]
        out.append(matches if any(matches) else None)
    return out


def metrics_from_orders(orders, q_pids, g_pids, q_cams, g_cams, max_rank: int = 50) -> dict:
    """{"cmc" [min(max_rank, G)], "mAP", "mINP", "num_valid_queries"} of explicit gallery orders."""
    max_rank = min(max_rank, len(g_pids))
    cmcs, aps, inps = [], [], []
    for matches in ranked_matches(orders, q_pids, g_pids, q_cams, g_cams):
        if matches is None:
            continue
        positions = [i for i, m in enumerate(matches, start=1) if m]
        cmcs.append([1.0 if positions[0] <= k else 0.0 for k in range(1, max_rank + 1)])
        aps.append(sum((n + 1) / p for n, p in enumerate(positions)) / len(positions))
        inps.append(len(positions) / positions[-1])
    return {
        "cmc": np.mean(cmcs, axis=0),
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "num_valid_queries": len(aps),
    }


def brute_force_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank: int = 50) -> dict:
    """`metrics_from_orders` of the stable ascending order of every distance row."""
    return metrics_from_orders(stable_orders(np.asarray(dist)), q_pids, g_pids, q_cams, g_cams, max_rank)
