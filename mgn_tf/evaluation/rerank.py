"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in vectorised numpy / scipy.sparse.

:func:`re_ranking` takes the three Euclidean (not squared) distance matrices and reproduces the published
reference function; it reads O block by block from its inputs instead of building N x N work arrays.
:func:`re_ranking_features` takes features and never builds an ``N x N`` matrix (N = Q + G): neighbour
lists come from a blocked, symmetric top-k pass over the squared distances, the encoding V is a CSR
matrix, and the output is produced chunk by chunk of queries.

Semantics of the reference (all reproduced): D = squared distances over all N items; the "original
distance" is ``O[i, j] = D[j, i] / max_k D[k, i]`` (column-max normalisation, then transposed; for a
symmetric D each row is divided by its own max); ``R(i)`` = the k1+1 nearest items of row i of O (self
included); the k-reciprocal set ``K(i) = {c in R(i): i in R(c)}``; each candidate c in K(i) whose
half-size set ``H(c)`` (computed with ``int(np.around(k1 / 2)) + 1`` neighbours) overlaps K(i) in more
than 2/3 of ``|H(c)|`` items adds ``H(c)``; ``V[i, e] = exp(-O[i, e])`` normalised over the expanded set;
if ``k2 != 1``, V rows are averaged over the k2 nearest items; Jaccard distance
``1 - s / (2 - s)`` with ``s = sum_k min(V[q, k], V[g, k])``; final ``(1 - lambda) * jaccard + lambda * O``
for query rows and gallery columns (float32).

Ties: :func:`re_ranking` follows the reference's ``np.argsort`` even for exactly equal O values (rows
with a tie across a neighbour-list cut are re-sorted with ``np.argsort``). The feature path orders
exactly equal distances by index, and its distances (float32 ``|x|^2 + |y|^2 - 2 x.y`` on centred
features) differ from any other distance computation by float rounding, so where two neighbours are
closer than that rounding their order, and hence a few output entries, can differ from a dense run on
separately computed distance matrices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import scipy.sparse as sp

from mgn_tf.evaluation.metrics import _as_float

Backend = Literal["auto", "numpy", "faiss"]

_BLOCK_ELEMS = 1 << 25  # elements of one [rows, N] distance block (128 MiB in float32)
_JOIN_ELEMS = 1 << 20  # (query, item, gallery) triples handled at once in the Jaccard join
_KNN_BLOCK = 4096  # rows / columns of one block of the symmetric kNN pass
_MERGE_ELEMS = 1 << 23  # buffered kNN candidates that trigger a merge
_CACHE_ELEMS = 1 << 28  # keep the query x gallery distances of the kNN pass up to this size (1 GiB f32)


Piece = tuple[np.ndarray, int, bool]
"""(values, first neighbour index, items_on_rows): values of all items to a range of neighbours, shaped
[items, width] if items_on_rows else [width, items] (then no transposed copy is needed)."""


def _top_sorted_pieces(pieces: list[Piece], n_items: int, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the kk smallest values of every item, ascending by (value, index).

    A strided sample of each item's values gives an upper bound on its kk-th value (the kk-th smallest
    of a subset is >= that of the whole); only the few values under it are sorted exactly.
    """
    total = sum(v.shape[1] if rows else v.shape[0] for v, _, rows in pieces)
    stride = max(1, total // max(4096, 16 * kk))
    sample = np.concatenate([v[:, ::stride] if rows else v[::stride].T for v, _, rows in pieces], axis=1)
    if kk >= sample.shape[1]:
        thr = np.full(n_items, np.inf, dtype=sample.dtype)
    else:
        thr = np.partition(sample, kk - 1, axis=1)[:, kk - 1]
    items, nbrs, vals = [], [], []
    for v, off, rows in pieces:
        r, c = np.nonzero(v <= (thr[:, None] if rows else thr[None, :]))
        items.append(r if rows else c)
        nbrs.append((c if rows else r) + off)
        vals.append(v[r, c])
    item, nbr, val = np.concatenate(items), np.concatenate(nbrs), np.concatenate(vals)
    order = np.lexsort((nbr, val, item))
    start = np.searchsorted(item[order], np.arange(n_items))
    take = order[(start[:, None] + np.arange(kk)[None, :]).ravel()]
    return nbr[take].reshape(n_items, kk), val[take].reshape(n_items, kk)


def _top_sorted(block: np.ndarray, kk: int) -> np.ndarray:
    """Indices of the kk smallest values of each row of ``block`` (kk <= its width), by (value, index)."""
    return _top_sorted_pieces([(block, 0, True)], block.shape[0], kk)[0]


class _DenseSource:
    """The reference's normalised squared distance O, read lazily from the qg, qq, gg blocks.

    Row i of O is column i of D = [[qq, qg], [qg.T, gg]] ** 2 (float32) divided by that column's max.
    Squaring and the per-row division are monotonic, so neighbours are selected on the raw distances
    (on |d| if some are negative) and only the O values that are used are computed, bit-exact.
    """

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.qg, self.qq, self.gg = np.asarray(q_g), np.asarray(q_q), np.asarray(g_g)
        nq, ng = self.qg.shape
        if self.qq.shape != (nq, nq) or self.gg.shape != (ng, ng):
            raise ValueError(
                f"inconsistent shapes qg {self.qg.shape}, qq {self.qq.shape}, gg {self.gg.shape}"
            )
        self.nq, self.n = nq, nq + ng
        self.colmax: np.ndarray | None = None

    @staticmethod
    def _sq(x: np.ndarray) -> np.ndarray:
        return np.square(x).astype(np.float32, copy=False)

    def _pieces(self, a: int, b: int) -> list[Piece]:
        """Columns a:b of the unsquared [[qq, qg], [qg.T, gg]] (all queries or all gallery) as views."""
        nq = self.nq
        if b <= nq:  # query column i = [qq[:, i], qg[i, :]]
            return [(self.qq[:, a:b], 0, False), (self.qg[a:b], nq, True)]
        # gallery column nq + j = [qg[:, j], gg[:, j]]
        return [(self.qg[:, a - nq : b - nq], 0, False), (self.gg[:, a - nq : b - nq], nq, False)]

    def topk(self, kk: int, cuts: tuple[int, ...] = ()) -> np.ndarray:
        """The kk nearest items of every row of O, in the reference's order at the prefix sizes ``cuts``.

        Only which items fall into the prefixes ``nbr[:, :c]`` (c in cuts) matters downstream. Where two
        O values tie across such a cut, the reference's ``np.argsort`` decides: those few rows are
        re-sorted with ``np.argsort`` of their exact O row.
        """
        kk = min(kk, self.n)
        step = max(1, _BLOCK_ELEMS // self.n)
        out = np.empty((self.n, kk), dtype=np.int64)
        self.colmax = np.empty(self.n, dtype=np.float32)
        cuts = tuple(c for c in cuts if 0 < c < self.n)
        starts = sorted({*range(0, self.nq, step), *range(self.nq, self.n, step)})
        for a, b in zip(starts, [*starts[1:], self.n], strict=True):
            pieces = self._pieces(a, b)
            hi = np.max([v.max(axis=1 if rows else 0) for v, _, rows in pieces], axis=0)
            lo = np.min([v.min(axis=1 if rows else 0) for v, _, rows in pieces], axis=0)
            if np.isnan(hi).any():
                raise ValueError("distance matrices contain NaN")
            colmax = self.colmax[a:b] = self._sq(np.maximum(hi, -lo))  # = max of the squares, rounded alike
            if (lo < 0).any():
                pieces = [(np.abs(v), off, rows) for v, off, rows in pieces]

            def exact_o(r: int, pieces=pieces, colmax=colmax) -> np.ndarray:
                lane = np.concatenate([v[r] if rows else v[:, r] for v, _, rows in pieces])
                return self._sq(lane) / colmax[r]

            if kk + 1 > self.n:
                out[a:b] = [np.argsort(exact_o(r))[:kk] for r in range(b - a)]
                continue
            top, val = _top_sorted_pieces(pieces, b - a, kk + 1)
            o_top = self._sq(val) / colmax[:, None]
            tie = np.zeros(b - a, dtype=bool)
            for c in cuts:
                tie |= o_top[:, c - 1] == o_top[:, c]
            for r in np.flatnonzero(tie):
                top[r, :kk] = np.argsort(exact_o(r))[:kk]
            out[a:b] = top[:, :kk]
        return out

    def pairs(self, i: np.ndarray, m: np.ndarray) -> np.ndarray:
        """O[i, m] = D[m, i] / colmax[i] for index arrays i, m."""
        assert self.colmax is not None, "topk() first"
        nq = self.nq
        raw = np.empty(i.shape, dtype=np.float32)
        qi, qm = i < nq, m < nq
        # orig[m, i] of [[qq, qg], [qg.T, gg]]: (i is a query, m is a query, matrix, m indexes its rows)
        for i_query, m_query, mat, m_is_row in (
            (True, True, self.qq, True),
            (False, True, self.qg, True),
            (True, False, self.qg, False),
            (False, False, self.gg, True),
        ):
            sel = (qi == i_query) & (qm == m_query)
            ii = i[sel] - (0 if i_query else nq)
            mm = m[sel] - (0 if m_query else nq)
            raw[sel] = self._sq(mat[mm, ii] if m_is_row else mat[ii, mm])
        return raw / self.colmax[i]

    def query_rows(self, a: int, b: int) -> np.ndarray:
        """O[a:b, nq:] for query rows, float32."""
        assert self.colmax is not None, "topk() first"
        out = self._sq(self.qg[a:b])
        return out / self.colmax[a:b, None]


def _knn_symmetric(
    x: np.ndarray,
    sq: np.ndarray,
    kk: int,
    block: int,
    budget: int,
    split: int = 0,
    cache: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-kk neighbours by squared Euclidean distance, sorted by (distance, index), and row maxima.

    Computes each block pair (A, B), B >= A, of D once (half the gemm work) and uses it for the rows of A
    and, transposed, the rows of B. Diagonal blocks give every row an upper bound on its kk-th distance;
    off-diagonal blocks only contribute entries <= the current bound, and buffered candidates are merged
    into the running lists (tightening the bounds) whenever more than ``budget`` of them pile up.
    Blocks are aligned at ``split``; ``cache`` (``[split, n - split]``), if given, receives D[:split, split:].
    """
    n = x.shape[0]
    kk = min(kk, n)
    bounds = np.unique(
        np.concatenate(
            [np.linspace(lo, hi, max(1, -(-(hi - lo) // block)) + 1) for lo, hi in ((0, split), (split, n))]
        ).astype(np.int64)
    )
    nb = bounds.size - 1
    best_idx = np.full((n, kk), -1, dtype=np.int64)
    best_val = np.full((n, kk), np.inf, dtype=x.dtype)
    rowmax = np.full(n, -np.inf, dtype=x.dtype)

    def dist(a0: int, a1: int, b0: int, b1: int) -> np.ndarray:
        d = x[a0:a1] @ x[b0:b1].T
        d *= -2
        d += sq[a0:a1, None]
        d += sq[None, b0:b1]
        np.maximum(d, 0, out=d)
        return d

    for a0, a1 in zip(bounds[:-1], bounds[1:], strict=True):  # diagonal blocks
        d = dist(a0, a1, a0, a1)
        d[np.arange(a1 - a0), np.arange(a1 - a0)] = 0
        rowmax[a0:a1] = d.max(axis=1)
        k = min(kk, a1 - a0)
        top = _top_sorted(d, k)
        best_idx[a0:a1, :k] = top + a0
        best_val[a0:a1, :k] = np.take_along_axis(d, top, axis=1)
    thr = best_val[:, -1].copy()
    buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    nbuf = 0

    def merge() -> None:
        rows = np.concatenate([t[0] for t in buf])
        touched = np.unique(rows)
        rows = np.concatenate([rows, np.repeat(touched, kk)])
        cols = np.concatenate([*(t[1] for t in buf), best_idx[touched].ravel()])
        vals = np.concatenate([*(t[2] for t in buf), best_val[touched].ravel()])
        order = np.lexsort((cols, vals, rows))
        first = np.searchsorted(rows[order], touched)
        take = order[(first[:, None] + np.arange(kk)[None, :]).ravel()]
        best_idx[touched] = cols[take].reshape(-1, kk)
        best_val[touched] = vals[take].reshape(-1, kk)
        thr[touched] = best_val[touched, -1]
        buf.clear()

    for i in range(nb):
        a0, a1 = bounds[i], bounds[i + 1]
        for j in range(i + 1, nb):
            b0, b1 = bounds[j], bounds[j + 1]
            d = dist(a0, a1, b0, b1)
            if cache is not None and a1 <= split and b0 >= split:
                cache[a0:a1, b0 - split : b1 - split] = d
            np.maximum(rowmax[a0:a1], d.max(axis=1), out=rowmax[a0:a1])
            np.maximum(rowmax[b0:b1], d.max(axis=0), out=rowmax[b0:b1])
            r, c = np.nonzero(d <= thr[a0:a1, None])
            buf.append((r + a0, c + b0, d[r, c]))
            r, c = np.nonzero(d <= thr[None, b0:b1])
            buf.append((c + b0, r + a0, d[r, c]))
            nbuf += buf[-1][0].size + buf[-2][0].size
            if nbuf > budget:
                merge()
                nbuf = 0
    if buf:
        merge()
    return best_idx, rowmax


class _FeatureSource:
    """O computed from features: D = squared Euclidean distance, normalised by the row maxima of D."""

    def __init__(self, qf: np.ndarray, gf: np.ndarray, backend: Backend = "auto") -> None:
        qf, gf = _as_float(qf), _as_float(gf)
        if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
            raise ValueError(f"features must be [Q, D] and [G, D], got {qf.shape} and {gf.shape}")
        dtype = np.result_type(qf, gf)
        self.nq, self.n = qf.shape[0], qf.shape[0] + gf.shape[0]
        x = np.concatenate([qf, gf]).astype(dtype, copy=False)
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        x -= x.mean(axis=0, dtype=np.float64).astype(dtype)  # translation invariant; less cancellation
        self.x = x
        self.sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(dtype)
        self.backend = _resolve_backend(backend, dtype)
        self.rowmax: np.ndarray | None = None
        self.qg_cache: np.ndarray | None = None

    def topk(self, kk: int, cuts: tuple[int, ...] = ()) -> np.ndarray:
        """The kk nearest items of every row by (distance, index); ``cuts`` is unused here."""
        if self.backend == "faiss":
            return self._topk_faiss(kk)
        nq, ng = self.nq, self.n - self.nq
        if nq * ng <= _CACHE_ELEMS:  # keep D[query, gallery] from the kNN pass instead of recomputing it
            self.qg_cache = np.empty((nq, ng), dtype=self.x.dtype)
        nbr, self.rowmax = _knn_symmetric(
            self.x, self.sq, kk, _KNN_BLOCK, _MERGE_ELEMS, split=nq, cache=self.qg_cache
        )
        return nbr

    def _topk_faiss(self, kk: int) -> np.ndarray:  # pragma: no cover - needs faiss
        import faiss

        kk = min(kk, self.n)
        x = np.ascontiguousarray(self.x, dtype=np.float32)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        _, nbr = index.search(x, kk)
        # farthest item per row: max_j |x_j|^2 - 2 x_i.x_j, an inner-product search on augmented vectors
        sq = self.sq.astype(np.float32)
        far = faiss.IndexFlatIP(x.shape[1] + 1)
        far.add(np.ascontiguousarray(np.hstack([x, sq[:, None]])))
        score, _ = far.search(np.ascontiguousarray(np.hstack([-2 * x, np.ones((self.n, 1), np.float32)])), 1)
        self.rowmax = np.maximum(score[:, 0] + sq, 0).astype(self.x.dtype)
        # re-sort each list by (exact distance, index) for argsort-compatible order
        rows = np.repeat(np.arange(self.n), kk)
        dist = self._pair_sqdist(rows, nbr.ravel()).reshape(self.n, kk)
        order = np.lexsort((nbr, dist), axis=1)
        return np.take_along_axis(nbr, order, axis=1).astype(np.int64)

    def _pair_sqdist(self, i: np.ndarray, m: np.ndarray) -> np.ndarray:
        out = np.empty(i.shape, dtype=self.x.dtype)
        step = max(1, (1 << 24) // self.x.shape[1])
        for a in range(0, i.size, step):
            xi, xm = self.x[i[a : a + step]], self.x[m[a : a + step]]
            dot = np.einsum("ij,ij->i", xi, xm)
            out[a : a + step] = self.sq[i[a : a + step]] + self.sq[m[a : a + step]] - 2 * dot
        np.maximum(out, 0, out=out)
        out[i == m] = 0
        return out

    def pairs(self, i: np.ndarray, m: np.ndarray) -> np.ndarray:
        assert self.rowmax is not None, "topk() first"
        return self._pair_sqdist(i, m) / self.rowmax[i]

    def query_rows(self, a: int, b: int) -> np.ndarray:
        """O[a:b, nq:] for query rows (distances from the same formula as the kNN pass)."""
        assert self.rowmax is not None, "topk() first"
        if self.qg_cache is not None:
            return self.qg_cache[a:b] / self.rowmax[a:b, None]
        d = self.x[a:b] @ self.x[self.nq :].T
        d *= -2
        d += self.sq[a:b, None]
        d += self.sq[None, self.nq :]
        np.maximum(d, 0, out=d)
        d /= self.rowmax[a:b, None]
        return d


def _resolve_backend(backend: Backend, dtype: np.dtype) -> str:
    """Backends: "auto" / "numpy" = the symmetric numpy kNN; "faiss" (opt-in) = two flat searches.

    The numpy path computes each pair distance once (half a dense pass); faiss needs a full nearest and a
    full farthest-neighbour pass, which makes it the slower one on CPU at Market-1501 size.
    """
    if backend not in ("auto", "numpy", "faiss"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'faiss', got {backend!r}")
    if backend == "faiss":
        import faiss  # noqa: F401  (ImportError when not installed)

        return "faiss"
    return "numpy"


def _reciprocal(nbr: np.ndarray) -> np.ndarray:
    """``nbr`` with entries c of row i set to -1 unless i is also among the neighbours of c."""
    n, k = nbr.shape
    out = np.empty_like(nbr)
    step = max(1, (1 << 22) // (k * k))
    for a in range(0, n, step):
        b = min(a + step, n)
        back = nbr[nbr[a:b]]  # [rows, k, k]
        ok = (back == np.arange(a, b)[:, None, None]).any(axis=2)
        out[a:b] = np.where(ok, nbr[a:b], -1)
    return out


def _expanded_sets(nbr: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR pattern (indptr, indices) of the expanded k-reciprocal set of every item."""
    n = nbr.shape[0]
    kset = _reciprocal(nbr[:, : k1 + 1])  # K(i), -1 padded
    half = int(np.around(k1 / 2.0))
    hset = _reciprocal(nbr[:, : half + 1])  # H(c)
    hlen = (hset >= 0).sum(axis=1)
    k = k1 + 1
    step = max(1, (1 << 21) // (k * (half + 1) * k))
    counts = np.empty(n, dtype=np.int64)
    parts = []
    for a in range(0, n, step):
        b = min(a + step, n)
        ks = kset[a:b]
        valid = ks >= 0
        cand = np.where(valid, ks, 0)
        hc = hset[cand]  # [rows, k, half + 1]
        in_k = (hc[..., None] == ks[:, None, None, :]).any(axis=3) & (hc >= 0)
        accept = valid & (in_k.sum(axis=2) > 2.0 / 3.0 * hlen[cand])
        members = np.concatenate([ks, np.where(accept[..., None], hc, -1).reshape(b - a, -1)], axis=1)
        members.sort(axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        counts[a:b] = keep.sum(axis=1)
        parts.append(members[keep])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _encode(source, k1: int, k2: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The (query-expanded) sparse encoding V, float64 CSR [N, N]."""
    n = source.n
    cuts = (k1 + 1, int(np.around(k1 / 2.0)) + 1) + ((k2,) if k2 != 1 else ())
    nbr = source.topk(max(k1 + 1, k2), cuts)
    indptr, indices = _expanded_sets(nbr, k1)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    weight = np.exp(-source.pairs(rows, indices).astype(np.float64))
    weight /= np.bincount(rows, weights=weight, minlength=n)[rows]
    v = sp.csr_matrix((weight, indices, indptr), shape=(n, n))
    if k2 != 1:
        kq = min(k2, nbr.shape[1])  # the reference averages initial_rank[i, :k2] (fewer if N < k2)
        avg = sp.csr_matrix(
            (np.ones(n * kq), nbr[:, :kq].ravel(), np.arange(0, n * kq + 1, kq)), shape=(n, n)
        )
        v = (avg @ v).tocsr()
        v.data /= kq
    v.sort_indices()
    return v, nbr


def _jaccard_rows(vq: sp.csr_matrix, vg_csc: sp.csc_matrix, n_gallery: int) -> np.ndarray:
    """Jaccard distance between the encoded query rows ``vq`` and every gallery row, float64."""
    nq = vq.shape[0]
    col_ptr, col_idx, col_val = vg_csc.indptr, vg_csc.indices, vg_csc.data
    col_nnz = np.diff(col_ptr)
    row_of = np.repeat(np.arange(nq), np.diff(vq.indptr))
    cnt = col_nnz[vq.indices]
    per_row = np.bincount(row_of, weights=cnt, minlength=nq)
    out = np.empty((nq, n_gallery), dtype=np.float64)
    a = 0
    while a < nq:  # sub-chunks of queries whose join fits the budget
        csum = np.cumsum(per_row[a:])
        b = a + max(1, int(np.searchsorted(csum, _JOIN_ELEMS, side="right")))
        lo, hi = vq.indptr[a], vq.indptr[b]
        c = cnt[lo:hi]
        total = int(c.sum())
        starts = col_ptr[vq.indices[lo:hi]]
        offs = np.repeat(starts - (np.cumsum(c) - c), c) + np.arange(total)
        w = np.minimum(np.repeat(vq.data[lo:hi], c), col_val[offs])
        flat = np.repeat(row_of[lo:hi] - a, c) * n_gallery + col_idx[offs]
        s = np.bincount(flat, weights=w, minlength=(b - a) * n_gallery).reshape(b - a, n_gallery)
        out[a:b] = 1 - s / (2 - s)
        a = b
    return out


def _rerank_chunks(
    source, k1: int, k2: int, lambda_value: float, chunk_size: int
) -> Iterator[tuple[slice, np.ndarray]]:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    nq, n = source.nq, source.n
    v, _ = _encode(source, k1, k2)
    vg = v[nq:].tocsc()
    for a in range(0, nq, chunk_size):
        b = min(a + chunk_size, nq)
        jac = _jaccard_rows(v[a:b], vg, n - nq)
        jac *= 1 - lambda_value
        jac += lambda_value * source.query_rows(a, b)
        yield slice(a, b), jac.astype(np.float32)


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
) -> np.ndarray:
    """k-reciprocal re-ranked ``[Q, G]`` distance (float32) from Euclidean (not squared) distances.

    Same inputs and result as the reference function of Zhong et al. 2017 (see module docstring), but
    vectorised and without its dense ``N x N`` work arrays: O is read block by block from the inputs.
    """
    src = _DenseSource(q_g_dist, q_q_dist, g_g_dist)
    out = np.empty(src.qg.shape, dtype=np.float32)
    for rows, chunk in _rerank_chunks(src, k1, k2, lambda_value, chunk_size):
        out[rows] = chunk
    return out


def re_ranking_features(
    qf: np.ndarray,
    gf: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
    backend: Backend = "auto",
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yields ``(query_rows, rerank_dist[query_rows])`` (float32 ``[rows, G]``) from features.

    Equal to :func:`re_ranking` on the Euclidean distances of the raw features (normalise them beforehand
    if wanted). Memory is O(N * k) for the sparse encoding plus one ``[rows, N]`` distance block; no
    ``N x N`` array is formed, and the ``Q x G`` result exists only if the caller assembles the chunks
    (feed them to `RankingAccumulator.update` to evaluate without it).
    ``backend``: "auto" / "numpy" (blocked symmetric kNN in numpy) or "faiss" (opt-in, float32 search).
    """
    return _rerank_chunks(_FeatureSource(qf, gf, backend), k1, k2, lambda_value, chunk_size)
