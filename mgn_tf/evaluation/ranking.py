"""Ranking a gallery for every query: metrics without or with re-ranking, the top lists the figures
show, and the exact chance level of each metric. Numpy only; no [Q, G] matrix is kept.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from mgn_tf.evaluation.metrics import FeatureDistance, RankingAccumulator, distance_chunks, l2_normalize
from mgn_tf.evaluation.rerank import re_ranking_features
from mgn_tf.evaluation.settings import RerankParams

RANKS: tuple[int, ...] = (1, 5, 10)


def item_arrays(items: Sequence[tuple[str, int, int]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, pids int64, camids int64) of a list of (path, pid, camid)."""
    paths = [str(p) for p, _, _ in items]
    pids = np.array([pid for _, pid, _ in items], dtype=np.int64)
    camids = np.array([cam for _, _, cam in items], dtype=np.int64)
    return paths, pids, camids


def metrics_summary(result: dict, ranks: Sequence[int] = RANKS) -> dict:
    """Flat JSON-ready dict of an `evaluate_ranking` result: rank-k (k <= len(cmc)), mAP, mINP, ..."""
    cmc = np.asarray(result["cmc"], dtype=np.float64)
    out: dict = {f"rank{r}": float(cmc[r - 1]) for r in ranks if r <= len(cmc)}
    out["mAP"] = float(result["mAP"])
    for key in ("mINP", "mAP_official"):
        if key in result:
            out[key] = float(result[key])
    if "num_valid_queries" in result:
        out["num_valid_queries"] = int(result["num_valid_queries"])
    out["cmc"] = [float(c) for c in cmc]
    return out


# --------------------------------------------------------------------------------------- chance level


def match_counts(
    q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query ``(n, m)``: gallery items left after removing junk, and true matches among them.

    Junk as in `mgn_tf.evaluation.metrics`: the query's pid from the query's camera, and pid -1.
    """
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    per_pid = Counter(g_pids.tolist())
    per_pid_cam = Counter(zip(g_pids.tolist(), g_camids.tolist(), strict=True))
    negative_one = per_pid.get(-1, 0)
    n = np.empty(len(q_pids), dtype=np.int64)
    m = np.empty(len(q_pids), dtype=np.int64)
    for i, (pid, cam) in enumerate(
        zip(np.asarray(q_pids).tolist(), np.asarray(q_camids).tolist(), strict=True)
    ):
        same_cam = per_pid_cam.get((pid, cam), 0)
        if pid == -1:
            n[i], m[i] = len(g_pids) - negative_one, 0
        else:
            n[i] = len(g_pids) - same_cam - negative_one
            m[i] = per_pid.get(pid, 0) - same_cam
    return n, m


def chance_level(
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> dict:
    """Exact expected CMC and mAP of a uniformly random gallery order (the chance level), same protocol.

    For a query with n non-junk gallery items of which m are true matches (queries with m = 0 skipped):
    P(a match in the top k) = 1 - prod_{t<k} (n - m - t) / (n - t), and the expected average precision
    is (1/n) * (H_n + (m - 1) / (n - 1) * (n - H_n)) with H_n = sum_{i<=n} 1/i (1 for n = 1): the k-th
    position is a match with probability m/n, and then holds 1 + (k - 1)(m - 1)/(n - 1) matches on average.
    """
    n, m = match_counts(q_pids, g_pids, q_camids, g_camids)
    valid = m > 0
    if not valid.any():
        raise ValueError("no query has a true match in the gallery (after removing junk); cannot evaluate")
    n, m = n[valid].astype(np.float64), m[valid].astype(np.float64)
    max_rank = min(max_rank, len(g_pids))
    t = np.arange(max_rank, dtype=np.float64)[None, :]
    miss = np.cumprod(np.maximum(n[:, None] - m[:, None] - t, 0) / np.maximum(n[:, None] - t, 1), axis=1)
    cmc = (1.0 - miss).mean(axis=0)
    harmonic = np.cumsum(1.0 / np.arange(1, int(n.max()) + 1))[n.astype(np.int64) - 1]
    ap = np.where(n > 1, (harmonic + (m - 1) / np.maximum(n - 1, 1) * (n - harmonic)) / n, 1.0)
    return {"cmc": cmc, "mAP": float(ap.mean()), "num_valid_queries": int(valid.sum())}


# -------------------------------------------------------------------------------------------- ranking


class TopRanks:
    """The top-`top` gallery indices (junk removed, as the protocol ranks) of selected queries.

    Use ``update(rows, chunk)`` with distance rows, like `RankingAccumulator.update`.
    """

    def __init__(
        self,
        queries: Sequence[int],
        q_pids: np.ndarray,
        g_pids: np.ndarray,
        q_camids: np.ndarray,
        g_camids: np.ndarray,
        top: int = 10,
    ) -> None:
        self.queries = set(int(q) for q in queries)
        self.q_pids, self.q_camids = np.asarray(q_pids), np.asarray(q_camids)
        self.g_pids, self.g_camids = np.asarray(g_pids), np.asarray(g_camids)
        self.top = top
        self.lists: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # query -> (gallery indices, distances)

    def update(self, rows: slice | np.ndarray, chunk: np.ndarray) -> None:
        idx = np.arange(len(self.q_pids))[rows]
        for r, q in enumerate(idx.tolist()):
            if q not in self.queries:
                continue
            order = np.argsort(chunk[r], kind="stable")
            junk = (self.g_pids[order] == -1) | (
                (self.g_pids[order] == self.q_pids[q]) & (self.g_camids[order] == self.q_camids[q])
            )
            keep = order[~junk][: self.top]
            self.lists[q] = (keep, np.asarray(chunk[r][keep], dtype=np.float64))


def rerank_features(qf: np.ndarray, gf: np.ndarray, distance: str, normalize: bool):
    """The features re-ranking works on: L2-normalised if `normalize` or cosine distance, else raw.

    Re-ranking always uses Euclidean distances, as the reference; on L2-normalised features the squared
    Euclidean distance is 2 x the cosine distance, so euclidean and cosine give the same re-ranking.
    """
    qf, gf = qf.astype(np.float32), gf.astype(np.float32)
    if normalize or distance == "cosine":
        return l2_normalize(qf), l2_normalize(gf)
    return qf, gf


def rank_gallery(
    qf: np.ndarray,
    gf: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    distance: str = "euclidean",
    normalize: bool = True,
    rerank: RerankParams | None = None,
    max_rank: int = 50,
    chunk_size: int = 256,
    show_queries: Sequence[int] = (),
    top: int = 10,
) -> tuple[dict, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Metrics of one ranking of the gallery, computed query chunk by query chunk (no [Q, G] matrix).

    Without `rerank`: `distance` between (L2-normalised if `normalize`) features. With `rerank`: the
    sparse k-reciprocal re-ranking of `mgn_tf.evaluation.rerank` (equal to the reference) on
    `rerank_features`. Returns (`metrics_summary` dict + "seconds", {query: (top gallery indices,
    distances)} of `show_queries`).
    """
    started = time.perf_counter()
    acc = RankingAccumulator(q_pids, g_pids, q_camids, g_camids)
    tops = TopRanks(show_queries, q_pids, g_pids, q_camids, g_camids, top)
    if rerank is None:
        chunks = distance_chunks(FeatureDistance(qf, gf, distance, normalize), len(qf), chunk_size)
    else:
        rq, rg = rerank_features(qf, gf, distance, normalize)
        chunks = re_ranking_features(rq, rg, rerank.k1, rerank.k2, rerank.lambda_value, chunk_size=chunk_size)
    for rows, chunk in chunks:
        acc.update(rows, chunk)
        tops.update(rows, chunk)
    summary = metrics_summary(acc.result(max_rank))
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary, tops.lists


def sample_queries(num_queries: int, count: int) -> list[int]:
    """`count` query indices spread evenly over the query list (first and last included)."""
    if count <= 0 or num_queries == 0:
        return []
    return sorted({int(i) for i in np.linspace(0, num_queries - 1, min(count, num_queries)).round()})
