"""Re-ID ranking metrics in pure numpy: CMC, mAP and mINP under the Market-1501 protocol.

Protocol (as in torchreid / fast-reid): for every query the gallery is ranked by ascending distance
(stable order: equal distances keep gallery order); gallery items with the query's pid *and* camera,
and items with pid -1, are junk and removed; pid-0 distractors are ordinary negatives. Queries without
a remaining true match are skipped. Everything is vectorised over chunks of query rows, so only a
``chunk_size x G`` slice of distances / sort keys / masks exists at a time, and the distance rows may
come from a callable (e.g. computed from features, or streamed out of re-ranking).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

DistanceRows = Callable[[slice], np.ndarray]
"""A callable ``rows -> distances[rows]`` of shape ``(len(rows), G)`` (rows is a ``slice`` of queries)."""

Metric = Literal["euclidean", "cosine"]

_EPS = 1e-12


# ----------------------------------------------------------------------------------------------- distances


def _as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.float64 or x.dtype == np.float32:
        return x
    return x.astype(np.float32 if x.dtype == np.float16 else np.float64)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm (norms accumulated in float64; zero rows stay zero)."""
    x = _as_float(x)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return (x / np.maximum(norm, _EPS)[:, None]).astype(x.dtype, copy=False)


class FeatureDistance:
    """Distance rows between query and gallery features, computed on demand (``self(rows)``).

    Euclidean distances use ``|q|^2 + |g|^2 - 2 q.g`` on features centred by their joint mean
    (translation invariant, less cancellation), clamped at 0 before the square root. Cosine distance is
    ``1 - cos``. ``normalize`` L2-normalises the features first.
    """

    def __init__(
        self, qf: np.ndarray, gf: np.ndarray, metric: Metric = "euclidean", normalize: bool = True
    ) -> None:
        qf, gf = _as_float(qf), _as_float(gf)
        if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
            raise ValueError(f"features must be [Q, D] and [G, D], got {qf.shape} and {gf.shape}")
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        dtype = np.result_type(qf, gf)
        qf, gf = qf.astype(dtype, copy=False), gf.astype(dtype, copy=False)
        if normalize:
            qf, gf = l2_normalize(qf), l2_normalize(gf)
        elif metric == "cosine":
            qf, gf = l2_normalize(qf), l2_normalize(gf)
        if metric == "euclidean" and not normalize:
            n = qf.shape[0] + gf.shape[0]
            mean = (qf.sum(0, dtype=np.float64) + gf.sum(0, dtype=np.float64)) / max(n, 1)
            qf, gf = (qf - mean).astype(dtype), (gf - mean).astype(dtype)
        self.metric = metric
        self.qf, self.gf = qf, gf
        self.q_sq = np.einsum("ij,ij->i", qf, qf, dtype=np.float64).astype(dtype)
        self.g_sq = np.einsum("ij,ij->i", gf, gf, dtype=np.float64).astype(dtype)
        self.shape = (qf.shape[0], gf.shape[0])

    def __call__(self, rows: slice) -> np.ndarray:
        prod = self.qf[rows] @ self.gf.T
        if self.metric == "cosine":
            np.subtract(1, prod, out=prod)
            return prod
        prod *= -2
        prod += self.g_sq[None, :]
        prod += self.q_sq[rows, None]
        np.maximum(prod, 0, out=prod)
        return np.sqrt(prod, out=prod)


def pairwise_distance(
    qf: np.ndarray, gf: np.ndarray, metric: Metric = "euclidean", normalize: bool = True
) -> np.ndarray:
    """Dense ``[Q, G]`` Euclidean or cosine distance (float32 for float32/float16 input, else float64)."""
    return FeatureDistance(qf, gf, metric, normalize)(slice(None))


# ---------------------------------------------------------------------------------------- ranking core


def _sortable_u32(d: np.ndarray) -> np.ndarray:
    """Map float32 values to uint32 keys with the same order (-0.0 == 0.0, NaN last)."""
    u = (d + np.float32(0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    flip = (u >> np.uint32(31)) * np.uint32(0x7FFFFFFF)
    flip |= np.uint32(0x80000000)
    u ^= flip  # negatives: ~u, non-negatives: u | sign bit
    nan = np.isnan(d)
    if nan.any():
        u[nan] = np.uint32(0xFFFFFFFF)
    return u


def _raw_ranks(dist: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """0-based position of entries ``(rows[i], cols[i])`` in their row's stable ascending order."""
    n_rows, n_cols = dist.shape
    colbits = max(1, (n_cols - 1).bit_length())
    rowbits = 32 - colbits
    if dist.dtype == np.float16:
        dist = dist.astype(np.float32)
    if dist.dtype != np.float32 or rowbits < 1:
        # generic path: stable argsort, then read positions through the inverse permutation
        order = np.argsort(dist, axis=1, kind="stable")
        inv = np.empty_like(order)
        np.put_along_axis(inv, order, np.arange(n_cols)[None, :], axis=1)
        return inv[rows, cols]
    # fast path: unique uint64 keys (float bits << colbits | column) make a plain sort stable; adding
    # row << (32 + colbits) to the row-sorted keys makes the whole block globally sorted for searchsorted
    out = np.empty(rows.shape, dtype=np.int64)
    col_ids = np.arange(n_cols, dtype=np.uint64)
    step = 1 << min(rowbits, 20)
    for a in range(0, n_rows, step):
        b = min(a + step, n_rows)
        keys = _sortable_u32(np.ascontiguousarray(dist[a:b])).astype(np.uint64)
        keys <<= np.uint64(colbits)
        keys |= col_ids
        sel = (rows >= a) & (rows < b)
        r, c = rows[sel] - a, cols[sel]
        target = keys[r, c] + (r.astype(np.uint64) << np.uint64(32 + colbits))
        keys.sort(axis=1)
        keys += (np.arange(b - a, dtype=np.uint64) << np.uint64(32 + colbits))[:, None]
        out[sel] = np.searchsorted(keys.ravel(), target) - r * n_cols
    return out


def _good_ranks(
    dist: np.ndarray, qp: np.ndarray, qc: np.ndarray, gp: np.ndarray, gc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the true matches for a chunk of query rows.

    Returns ``(row, pos, ngood)``: for every true match (same pid, not junk) its query row and its 1-based
    rank ``pos`` among non-junk gallery items, sorted by (row, pos); and the number of matches per row.
    """
    same_pid = gp[None, :] == qp[:, None]
    junk = same_pid & (gc[None, :] == qc[:, None])
    neg1 = gp == -1
    if neg1.any():
        junk |= neg1[None, :]
    good = same_pid & ~junk
    rg, cg = np.nonzero(good)
    rj, cj = np.nonzero(junk)
    n = np.concatenate([rg, rj])
    raw = _raw_ranks(dist, n, np.concatenate([cg, cj]))
    raw_g, raw_j = raw[: rg.size], raw[rg.size :]
    n_cols = dist.shape[1]
    jkey = np.sort(rj.astype(np.int64) * n_cols + raw_j)
    gkey = rg.astype(np.int64) * n_cols + raw_g
    junk_before = np.searchsorted(jkey, gkey) - np.searchsorted(jkey, rg.astype(np.int64) * n_cols)
    pos = raw_g - junk_before + 1
    order = np.argsort(rg.astype(np.int64) * (n_cols + 1) + pos, kind="stable")
    ngood = np.bincount(rg, minlength=dist.shape[0])
    return rg[order], pos[order], ngood


class RankingAccumulator:
    """Collects per-query ranking statistics from distance chunks; ``result()`` gives the metrics.

    ``update(rows, dist_chunk)`` takes the distances of the queries ``rows`` (a slice or index array) to
    the whole gallery, so it can consume the chunks of :func:`mgn_tf.evaluation.rerank.re_ranking_features`.
    Per-query values are stored and reduced once at the end, so any chunking gives identical results.
    """

    def __init__(
        self, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray
    ) -> None:
        self.q_pids, self.q_camids = np.asarray(q_pids), np.asarray(q_camids)
        self.g_pids, self.g_camids = np.asarray(g_pids), np.asarray(g_camids)
        nq = self.q_pids.shape[0]
        if self.q_camids.shape != (nq,) or self.g_camids.shape != self.g_pids.shape:
            raise ValueError("pid and camid arrays must be 1-D and of matching length")
        self.num_q, self.num_g = nq, self.g_pids.shape[0]
        self.ngood = np.full(nq, -1, dtype=np.int64)  # -1: not seen yet
        self.first = np.zeros(nq, dtype=np.int64)
        self.last = np.zeros(nq, dtype=np.int64)
        self.ap = np.zeros(nq, dtype=np.float64)
        self.ap_official = np.zeros(nq, dtype=np.float64)

    def update(self, rows: slice | np.ndarray, dist_chunk: np.ndarray) -> None:
        """Add the distance rows ``dist_chunk`` (shape ``[len(rows), G]``) of queries ``rows``."""
        idx = np.arange(self.num_q)[rows]
        dist_chunk = np.asarray(dist_chunk)
        if dist_chunk.shape != (idx.size, self.num_g):
            raise ValueError(f"distance chunk shape {dist_chunk.shape} != {(idx.size, self.num_g)}")
        if idx.size == 0:
            return
        r, pos, ngood = _good_ranks(
            dist_chunk, self.q_pids[idx], self.q_camids[idx], self.g_pids, self.g_camids
        )
        start = np.concatenate([[0], np.cumsum(ngood)])
        k = np.arange(r.size) - start[r] + 1  # k-th true match of its query
        has = ngood > 0
        self.ngood[idx] = ngood
        self.first[idx[has]] = pos[start[:-1][has]]
        self.last[idx[has]] = pos[start[1:][has] - 1]
        cnt = np.maximum(ngood, 1)
        self.ap[idx] = np.bincount(r, weights=k / pos, minlength=idx.size) / cnt
        # official Market-1501 compute_AP.m: trapezoid between precision before and at each match
        prev = np.where(pos > 1, (k - 1) / np.maximum(pos - 1, 1), 1.0)
        self.ap_official[idx] = np.bincount(r, weights=(prev + k / pos) / 2, minlength=idx.size) / cnt

    def result(self, max_rank: int = 50) -> dict[str, np.ndarray | float | int]:
        """Metrics over all queries added so far (every query must have been added exactly once)."""
        if (self.ngood < 0).any():
            raise ValueError(f"{int((self.ngood < 0).sum())} queries were never added")
        valid = self.ngood > 0
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise ValueError(
                "no query has a true match in the gallery (after removing junk); cannot evaluate"
            )
        max_rank = min(max_rank, self.num_g)
        hist = np.bincount(np.minimum(self.first[valid], max_rank + 1) - 1, minlength=max_rank + 1)
        cmc = np.cumsum(hist[:max_rank]) / num_valid
        return {
            "cmc": cmc,
            "mAP": float(np.mean(self.ap[valid])),
            "mINP": float(np.mean(self.ngood[valid] / self.last[valid])),
            "num_valid_queries": num_valid,
            "mAP_official": float(np.sum(self.ap_official) / self.num_q),
        }


def distance_chunks(distmat: np.ndarray | DistanceRows, num_q: int, chunk_size: int):
    """Yield ``(query_rows, distances[query_rows])`` in chunks of ``chunk_size`` queries."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    for a in range(0, num_q, chunk_size):
        rows = slice(a, min(a + chunk_size, num_q))
        yield rows, (distmat(rows) if callable(distmat) else distmat[rows])


def evaluate_ranking(
    distmat: np.ndarray | DistanceRows,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk_size: int = 512,
) -> dict[str, np.ndarray | float | int]:
    """CMC, mAP, mINP under the Market-1501 protocol (see module docstring).

    ``distmat`` is a ``[Q, G]`` array or a callable returning distance rows for a slice of queries.
    Returns ``{"cmc": float64[min(max_rank, G)], "mAP", "mINP", "num_valid_queries", "mAP_official"}``:
    cmc[k] is the fraction of valid queries with a true match in the top k+1; AP is the mean precision at
    each true match (non-interpolated); INP = #matches / rank of the last match (Ye et al. 2020);
    ``mAP_official`` is the mAP of the official Market-1501 MATLAB code (``compute_AP.m``, Zheng et al.
    2015): per true match a trapezoid between the precision before and at it, averaged over ALL queries
    (a query without a true match adds 0). Raises ``ValueError`` if no query is valid.

    From features: ``evaluate_ranking(FeatureDistance(qf, gf, metric, normalize), ...)`` computes the
    distances chunk by chunk, so no ``[Q, G]`` matrix exists.
    """
    acc = RankingAccumulator(q_pids, g_pids, q_camids, g_camids)
    if not callable(distmat):
        distmat = np.asarray(distmat)
        if distmat.shape != (acc.num_q, acc.num_g):
            raise ValueError(f"distmat shape {distmat.shape} != {(acc.num_q, acc.num_g)}")
    for rows, chunk in distance_chunks(distmat, acc.num_q, chunk_size):
        acc.update(rows, chunk)
    return acc.result(max_rank)
