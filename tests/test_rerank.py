"""k-reciprocal re-ranking vs the reference vectors, a literal loop version, and dense vs sparse paths."""

from __future__ import annotations

import numpy as np
import pytest

import mgn_tf.evaluation.rerank as rerank
from mgn_tf.evaluation.metrics import RankingAccumulator, evaluate_ranking, pairwise_distance
from mgn_tf.evaluation.rerank import re_ranking, re_ranking_features


def features_dense(qf, gf, *args, **kwargs) -> np.ndarray:
    """The [Q, G] result of `re_ranking_features`, assembled from its chunks."""
    out = np.full((len(qf), len(gf)), np.nan, np.float32)
    for rows, chunk in re_ranking_features(qf, gf, *args, **kwargs):
        out[rows] = chunk
    return out


def _params(vectors, k: int) -> tuple[int, int, float]:
    k1, k2, lam = vectors[f"c{k}_params"]
    return int(k1), int(k2), float(lam)


def _loop_reference(qg, qq, gg, k1, k2, lam):
    """The published algorithm written out step by step with dense N x N arrays and Python loops."""
    nq, n = qg.shape[0], qg.shape[0] + qg.shape[1]
    d = np.square(np.block([[qq, qg], [qg.T, gg]])).astype(np.float32)
    o = (d / d.max(axis=0)).T
    rank = np.argsort(o, axis=1)
    half = int(np.around(k1 / 2.0))

    def recip(i, k):
        return [c for c in rank[i, : k + 1] if i in rank[c, : k + 1]]

    v = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        kset = recip(i, k1)
        expanded = set(kset)
        for c in kset:
            hset = recip(c, half)
            if len(set(hset) & set(kset)) > 2.0 / 3.0 * len(hset):
                expanded |= set(hset)
        idx = sorted(expanded)
        w = np.exp(-o[i, idx].astype(np.float64))
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.empty((nq, n))
    for i in range(nq):
        s = np.minimum(v[i][None, :], v).sum(axis=1)
        jac[i] = 1 - s / (2 - s)
    return ((1 - lam) * jac + lam * o[:nq])[:, nq:]


def _clustered(seed: int, n_ids=25, nq=60, ng=180, dim=24):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_ids + 1, dim)).astype(np.float32) * 1.5
    qp, gp = rng.integers(1, n_ids + 1, nq), rng.integers(0, n_ids + 1, ng)
    qf = centers[qp] + rng.standard_normal((nq, dim)).astype(np.float32)
    gf = centers[gp] + rng.standard_normal((ng, dim)).astype(np.float32)
    return qf, gf, qp, gp, rng.integers(0, 4, nq), rng.integers(0, 4, ng)


def _dists(qf, gf):
    return (
        pairwise_distance(qf, gf, normalize=False),
        pairwise_distance(qf, qf, normalize=False),
        pairwise_distance(gf, gf, normalize=False),
    )


@pytest.mark.parametrize("k", range(4))
def test_dense_matches_reference_vectors(reid_vectors, k):
    out = re_ranking(
        reid_vectors[f"c{k}_qg"],
        reid_vectors[f"c{k}_qq"],
        reid_vectors[f"c{k}_gg"],
        *_params(reid_vectors, k),
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reid_vectors[f"c{k}_rr"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", range(4))
def test_features_match_reference_vectors(reid_vectors, k, monkeypatch):
    qf, gf, rr = reid_vectors[f"c{k}_qf"], reid_vectors[f"c{k}_gf"], reid_vectors[f"c{k}_rr"]
    params = _params(reid_vectors, k)
    out = features_dense(qf, gf, *params, chunk_size=17, backend="numpy")
    np.testing.assert_allclose(out, rr, rtol=0, atol=1e-5)
    # multi-block symmetric kNN with frequent candidate merges, and no query x gallery cache
    monkeypatch.setattr(rerank, "_KNN_BLOCK", 37)
    monkeypatch.setattr(rerank, "_MERGE_ELEMS", 300)
    monkeypatch.setattr(rerank, "_CACHE_ELEMS", 0)
    out = features_dense(qf, gf, *params, chunk_size=1000, backend="numpy")
    np.testing.assert_allclose(out, rr, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (5, 2, 0.1), (7, 1, 0.9), (3, 6, 0.0)])
def test_loop_reference_dense_and_sparse_agree(k1, k2, lam, monkeypatch):
    qf, gf, *_ = _clustered(seed=k1 + k2)
    qg, qq, gg = _dists(qf, gf)
    expected = _loop_reference(qg, qq, gg, k1, k2, lam)
    dense = re_ranking(qg, qq, gg, k1, k2, lam, chunk_size=13)
    np.testing.assert_allclose(dense, expected, rtol=0, atol=1e-5)
    sparse = features_dense(qf, gf, k1, k2, lam, backend="numpy")
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-5)
    monkeypatch.setattr(rerank, "_KNN_BLOCK", 50)
    monkeypatch.setattr(rerank, "_MERGE_ELEMS", 1000)
    monkeypatch.setattr(rerank, "_JOIN_ELEMS", 500)
    sparse_small = features_dense(qf, gf, k1, k2, lam, chunk_size=7, backend="numpy")
    np.testing.assert_allclose(sparse_small, dense, rtol=0, atol=1e-5)


def test_reranking_changes_the_ranking():
    qf, gf, qp, gp, qc, gc = _clustered(seed=5)
    qg, qq, gg = _dists(qf, gf)
    rr = re_ranking(qg, qq, gg)
    assert not np.allclose(np.argsort(rr, axis=1), np.argsort(qg, axis=1))
    assert np.all((rr >= 0) & (rr <= 1 + 1e-6))


def test_tiny_problem_smaller_than_k1():
    qf, gf, *_ = _clustered(seed=1, n_ids=3, nq=4, ng=9, dim=8)
    qg, qq, gg = _dists(qf, gf)
    expected = _loop_reference(qg, qq, gg, 20, 20, 0.3)
    np.testing.assert_allclose(re_ranking(qg, qq, gg, 20, 20, 0.3), expected, atol=1e-5)
    np.testing.assert_allclose(features_dense(qf, gf, 20, 20, 0.3), expected, atol=1e-5)


def test_chunks_cover_the_queries_in_order_and_feed_metrics():
    qf, gf, qp, gp, qc, gc = _clustered(seed=9)
    qg, qq, gg = _dists(qf, gf)
    full = re_ranking(qg, qq, gg, k1=10, k2=3, lambda_value=0.4)
    acc = RankingAccumulator(qp, gp, qc, gc)
    seen = []
    for rows, chunk in re_ranking_features(qf, gf, 10, 3, 0.4, chunk_size=16):
        assert chunk.dtype == np.float32 and chunk.shape == (rows.stop - rows.start, gf.shape[0])
        np.testing.assert_allclose(chunk, full[rows], rtol=0, atol=1e-5)
        seen.append((rows.start, rows.stop))
        acc.update(rows, chunk)
    assert seen == [(0, 16), (16, 32), (32, 48), (48, 60)]
    expected = evaluate_ranking(features_dense(qf, gf, 10, 3, 0.4), qp, gp, qc, gc)
    result = acc.result()
    assert all(np.array_equal(expected[key], result[key]) for key in expected)


def test_input_validation():
    qf, gf, *_ = _clustered(seed=2, nq=5, ng=8)
    qg, qq, gg = _dists(qf, gf)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        re_ranking(qg, gg, qq)
    with pytest.raises(ValueError, match="features"):
        re_ranking_features(qf, gf[:, :3])
    with pytest.raises(ValueError, match="k1 and k2"):
        re_ranking(qg, qq, gg, k1=0)
    with pytest.raises(ValueError, match="NaN"):
        re_ranking(np.where(qg > qg.mean(), np.nan, qg), qq, gg)
    with pytest.raises(ValueError, match="NaN"):
        re_ranking_features(np.full_like(qf, np.nan), gf)
    with pytest.raises(ValueError, match="k1 and k2"):
        next(re_ranking_features(qf, gf, k1=0))
    with pytest.raises(ValueError, match="backend"):
        re_ranking_features(qf, gf, backend="gpu")
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            re_ranking_features(qf, gf, backend="faiss")


def test_dense_ties_follow_reference_argsort():
    # distances rounded to a coarse grid: many exactly equal O values, also across the k1+1 / k2 cuts
    qf, gf, *_ = _clustered(seed=4)
    qg, qq, gg = (np.round(d * 2) / 2 for d in _dists(qf, gf))
    expected = _loop_reference(qg, qq, gg, 10, 4, 0.3)
    np.testing.assert_allclose(re_ranking(qg, qq, gg, 10, 4, 0.3), expected, rtol=0, atol=1e-5)
