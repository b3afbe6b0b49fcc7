"""Nearest gallery rows of query features: exact (numpy/BLAS, gallery blocks streamed from memory-mapped
shards, no Q x G matrix kept) or with faiss (flat = exact, IVF and HNSW = approximate).

Every backend ranks by Euclidean distance between the stored features (L2-normalised ones when the
gallery was built with normalisation, as `mgn_tf.evaluate` ranks by default); the distances of the
returned neighbours are recomputed from the features' differences, so they do not depend on the
backend and an image searched against itself gets 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKENDS: tuple[str, ...] = ("exact", "faiss_flat", "faiss_ivfpq", "faiss_ivf", "faiss_hnsw")
BLOCK_ROWS = 16384  # gallery rows converted to float32 and multiplied at a time
QUERY_ROWS = 1024  # query rows per pass over the gallery
DEFAULT_NPROBE = 64
DEFAULT_EF_SEARCH = 128
# IVF-PQ keeps 64 bytes per image instead of 4 bytes per dimension: scanning a cell is not bound by memory
# bandwidth (an IVF-Flat cell of 2048-d float32 rows is), and its coarse distances only choose candidates:
# REFINE_FACTOR x k of them are ranked by exact distance. The codes are faiss's "fast scan" layout:
# 2 x PQ_BYTES sub-quantizers of 4 bits, whose distance tables fit SIMD registers; scanning them is an
# order of magnitude faster than 8-bit codes of the same size, and finer sub-vectors rank as well.
PQ_BYTES = 64
REFINE_FACTOR = 4
FAST_SCAN_MIN_ROWS = 39 * 16  # faiss trains 16 centroids per 4-bit sub-quantizer on >= 39 points each
HNSW_M = 32


@dataclass
class Neighbours:
    """indices [Q, k] int64 into the gallery (-1 past its end) and their distances [Q, k] float32."""

    indices: np.ndarray
    distances: np.ndarray


def _rows(shards: Sequence[np.ndarray]):
    """(offset, float32 block) over the shards, BLOCK_ROWS rows at a time."""
    offset = 0
    for shard in shards:
        for a in range(0, len(shard), BLOCK_ROWS):
            yield offset + a, np.asarray(shard[a : a + BLOCK_ROWS], dtype=np.float32)
        offset += len(shard)


def _keep_best(best_d, best_i, cand_d, cand_i, k):
    d = np.concatenate([best_d, cand_d], axis=1)
    i = np.concatenate([best_i, cand_i], axis=1)
    if d.shape[1] > k:
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        d, i = np.take_along_axis(d, part, 1), np.take_along_axis(i, part, 1)
    return d, i


def exact_search(queries: np.ndarray, shards: Sequence[np.ndarray], k: int) -> Neighbours:
    """The k nearest gallery rows of each query by squared Euclidean distance, brute force in blocks."""
    queries = np.asarray(queries, np.float32)
    total = sum(len(s) for s in shards)
    kk = min(k, total)
    out_i = np.full((len(queries), kk), -1, np.int64)
    for a in range(0, len(queries), QUERY_ROWS):
        q = queries[a : a + QUERY_ROWS]
        q_sq = np.einsum("ij,ij->i", q, q)[:, None]
        best_d = np.full((len(q), 0), np.inf, np.float32)
        best_i = np.full((len(q), 0), -1, np.int64)
        for offset, block in _rows(shards):
            d2 = q @ block.T
            d2 *= -2
            d2 += q_sq
            d2 += np.einsum("ij,ij->i", block, block)[None, :]
            cand = np.broadcast_to(np.arange(offset, offset + len(block)), d2.shape)
            if d2.shape[1] > kk:
                part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
                d2, cand = np.take_along_axis(d2, part, 1), np.take_along_axis(cand, part, 1)
            best_d, best_i = _keep_best(best_d, best_i, d2, cand, kk)
        out_i[a : a + len(q)] = best_i
    return refine(queries, shards, out_i, k)


def gather(shards: Sequence[np.ndarray], indices: np.ndarray) -> np.ndarray:
    """Gallery rows at `indices` (any shape, -1 allowed: zeros) as float32 [..., D]."""
    flat = np.asarray(indices).reshape(-1)
    dim = shards[0].shape[1]
    out = np.zeros((len(flat), dim), np.float32)
    bounds = np.cumsum([0] + [len(s) for s in shards])
    for s, shard in enumerate(shards):
        sel = np.nonzero((flat >= bounds[s]) & (flat < bounds[s + 1]))[0]
        if len(sel):
            local = flat[sel] - bounds[s]
            order = np.argsort(local)  # memory-mapped reads in file order
            out[sel[order]] = shard[local[order]]
    return out.reshape(*np.shape(indices), dim)


def exact_distances(queries: np.ndarray, shards: Sequence[np.ndarray], indices: np.ndarray) -> np.ndarray:
    """Euclidean distances of each query to its gallery rows `indices` [Q, c] from the differences (not
    from |q|^2 + |g|^2 - 2 q.g, which cancels: an image finds itself at exactly 0); inf where -1."""
    queries, indices = np.asarray(queries, np.float32), np.asarray(indices, np.int64)
    out = np.full(indices.shape, np.inf, np.float32)
    step = max(1, QUERY_ROWS * 16 // max(indices.shape[1], 1))  # about QUERY_ROWS * 16 rows gathered at once
    for a in range(0, len(queries), step):
        cand = indices[a : a + step]
        rows = gather(shards, cand)
        rows -= queries[a : a + step, None, :]
        d = np.sqrt(np.einsum("qcd,qcd->qc", rows, rows))
        out[a : a + step] = np.where(cand < 0, np.inf, d)
    return out


def refine(queries: np.ndarray, shards: Sequence[np.ndarray], indices: np.ndarray, k: int) -> Neighbours:
    """The k nearest of the candidate `indices` [Q, c] by exact distance, ties in gallery order; rows are
    padded with -1 (distance inf) up to k when there are fewer candidates."""
    indices = np.asarray(indices, np.int64)
    d = exact_distances(queries, shards, indices)
    width = min(k, indices.shape[1])
    order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), d), axis=1)[:, :width]
    out_i = np.full((len(indices), k), -1, np.int64)
    out_d = np.full((len(indices), k), np.inf, np.float32)
    out_i[:, :width] = np.take_along_axis(indices, order, 1)
    out_d[:, :width] = np.take_along_axis(d, order, 1)
    return Neighbours(out_i, out_d)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k (padding -1 ignored)."""
    hits = [
        len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(int((e >= 0).sum()), 1)
        for a, e in zip(approximate, exact, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


# ----------------------------------------------------------------------------------------------- faiss


def import_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            'faiss is not installed: pip install -e ".[faiss]" (faiss-cpu), or use the exact backend'
        ) from exc
    return faiss


def default_nlist(count: int) -> int:
    """IVF cells: about sqrt(N) (training and adding cost N x cells distances, the budget of a small CPU),
    at least 1 and at most N/39 (faiss wants >= 39 training points per cell)."""
    return int(max(1, min(np.sqrt(count), count // 39, 65536)))


def _fast_scan_m(dim: int) -> int | None:
    """Sub-quantizers of a fast-scan code: 2 x PQ_BYTES where they divide the dimension (sub-vectors of
    at least 2 dimensions), else the largest even divisor below; None if there is none."""
    return next((m for m in range(min(2 * PQ_BYTES, dim // 2), 1, -1) if dim % m == 0 and m % 2 == 0), None)


class FaissIndex:
    """A faiss index over the gallery's features (L2 metric).

    kind: "flat" (exact, float32 copy), "ivfpq" (IndexIVFPQFastScan: `nlist` cells trained on a seeded
    sample, `nprobe` visited, PQ_BYTES bytes of 4-bit codes per image; IndexIVFPQ with fewer bits on
    galleries too small to train that), "ivf" (IndexIVFFlat: the same cells, float32 copy) or "hnsw"
    (IndexHNSWFlat, M = HNSW_M, `ef_search`, float32 copy).

    `spherical`: the cells are trained by spherical k-means (unit centroids), for L2-normalised
    features. Plain k-means on such features leaves a few cells holding a large share of the gallery
    (every query probing one scans it); spherical cells are even, and faiss's documentation recommends
    them for inner-product / cosine data.
    """

    def __init__(self, index, kind: str, count: int):
        self.index, self.kind, self.count = index, kind, count

    @classmethod
    def build(
        cls, shards: Sequence[np.ndarray], kind: str, nlist: int | None = None, seed: int = 0,
        train_rows: int = 100_000, spherical: bool = False,
    ) -> FaissIndex:  # fmt: skip
        faiss = import_faiss()
        dim = shards[0].shape[1]
        count = sum(len(s) for s in shards)
        if kind == "flat":
            index = faiss.IndexFlatL2(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M)
            index.hnsw.efConstruction = 80
        elif kind in ("ivf", "ivfpq"):
            nlist = nlist or default_nlist(count)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
            elif count >= FAST_SCAN_MIN_ROWS and (m := _fast_scan_m(dim)):
                index = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(dim), dim, nlist, m, 4)
            else:
                m = next(m for m in (PQ_BYTES, 32, 16, 8, 4, 2, 1) if dim % m == 0)
                nbits = max(1, min(8, int(np.log2(max(count, 78) / 39))))  # faiss: >= 39 per centroid
                index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, nbits)
            index.cp.spherical = spherical
            rows = np.sort(np.random.default_rng(seed).choice(count, min(count, train_rows), replace=False))
            index.train(np.ascontiguousarray(gather(shards, rows), np.float32))
        else:
            raise ValueError(f"faiss index kind must be flat, ivfpq, ivf or hnsw, got {kind!r}")
        for _, block in _rows(shards):
            index.add(np.ascontiguousarray(block))
        return cls(index, kind, count)

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = DEFAULT_NPROBE, ef_search: int = DEFAULT_EF_SEARCH
    ) -> np.ndarray:
        """Candidate indices [Q, k] (-1 where faiss found fewer)."""
        if self.kind in ("ivf", "ivfpq"):
            self.index.nprobe = nprobe
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = max(ef_search, k)
        _, indices = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return indices.astype(np.int64)

    def save(self, path: str | os.PathLike) -> Path:
        from mgn_tf.files import atomic_path

        faiss = import_faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str, count: int) -> FaissIndex:
        faiss = import_faiss()
        index = faiss.read_index(str(path))
        if index.ntotal != count:
            raise ValueError(f"{path} holds {index.ntotal} vectors, the gallery {count}")
        return cls(index, kind, count)
