"""CMC / mAP / mINP / official Market-1501 mAP against reference vectors, hand arithmetic and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.protocol import brute_force_metrics

from mgn_tf.evaluation.metrics import (
    FeatureDistance,
    RankingAccumulator,
    _sortable_u32,
    evaluate_ranking,
    l2_normalize,
    pairwise_distance,
)


def _case(vectors, k: int) -> dict[str, np.ndarray]:
    return {name: vectors[f"c{k}_{name}"] for name in ("qf", "gf", "qp", "gp", "qc", "gc", "qg", "rr")} | {
        name: vectors[f"c{k}_{name}"] for name in ("cmc", "mAP", "cmc_rr", "mAP_rr")
    }


@pytest.mark.parametrize("k", range(4))
def test_reference_vectors(reid_vectors, k):
    c = _case(reid_vectors, k)
    for dist, cmc_ref, map_ref in ((c["qg"], c["cmc"], c["mAP"]), (c["rr"], c["cmc_rr"], c["mAP_rr"])):
        result = evaluate_ranking(dist, c["qp"], c["gp"], c["qc"], c["gc"], max_rank=50)
        cmc, mean_ap = result["cmc"], result["mAP"]
        assert cmc.shape == (50,)
        np.testing.assert_allclose(cmc, cmc_ref, rtol=0, atol=1e-6)
        assert abs(mean_ap - float(map_ref)) < 1e-6


@pytest.mark.parametrize("k", range(4))
def test_chunked_equals_unchunked_and_features(reid_vectors, k):
    c = _case(reid_vectors, k)
    ids = (c["qp"], c["gp"], c["qc"], c["gc"])
    full = evaluate_ranking(c["qg"], *ids, chunk_size=10_000)
    for chunk in (1, 7, 32):
        part = evaluate_ranking(c["qg"], *ids, chunk_size=chunk)
        assert all(np.array_equal(full[key], part[key]) for key in full)
    via_callable = evaluate_ranking(lambda rows: c["qg"][rows], *ids, chunk_size=9)
    assert all(np.array_equal(full[key], via_callable[key]) for key in full)
    # distances recomputed from the features rank the gallery the same way as the reference qg
    rows = FeatureDistance(c["qf"], c["gf"], "euclidean", normalize=False)
    feats = evaluate_ranking(rows, *ids, chunk_size=5)
    np.testing.assert_allclose(feats["cmc"], c["cmc"], atol=1e-6)
    assert abs(feats["mAP"] - float(c["mAP"])) < 1e-6


def test_features_chunked_equals_dense():
    rng = np.random.default_rng(3)
    qf, gf = rng.standard_normal((40, 16), np.float32), rng.standard_normal((90, 16), np.float32)
    qp, gp = rng.integers(1, 8, 40), rng.integers(0, 8, 90)
    qc, gc = rng.integers(0, 3, 40), rng.integers(0, 3, 90)
    for metric in ("euclidean", "cosine"):
        dense = evaluate_ranking(pairwise_distance(qf, gf, metric), qp, gp, qc, gc)
        chunked = evaluate_ranking(FeatureDistance(qf, gf, metric), qp, gp, qc, gc, chunk_size=7)
        assert all(np.array_equal(dense[key], chunked[key]) for key in dense)


def test_pairwise_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((5, 8)) * 10 + 100, rng.standard_normal((7, 8)) * 10 + 100
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-3)):
        q, g = qf.astype(dtype), gf.astype(dtype)
        d = pairwise_distance(q, g, normalize=False)
        assert d.dtype == dtype
        np.testing.assert_allclose(d, np.linalg.norm(qf[:, None] - gf[None], axis=2), atol=tol)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    np.testing.assert_allclose(pairwise_distance(qf, gf, "cosine"), 1 - qn @ gn.T, atol=1e-12)
    np.testing.assert_allclose(
        pairwise_distance(qf, gf), np.linalg.norm(qn[:, None] - gn[None], axis=2), atol=1e-7
    )
    same = pairwise_distance(qf[:3], qf[:3], normalize=False)
    assert np.all(same >= 0) and np.all(np.isfinite(same))
    with pytest.raises(ValueError):
        FeatureDistance(qf, gf[:, :3])


# Hand example. Query A (pid 1, cam 0); gallery (pid, cam) with A's distances:
#   g0 (1,0) 0.1 junk (same pid+cam) | g1 (2,1) 0.2 neg | g2 (1,1) 0.3 GOOD | g3 (-1,2) 0.35 junk (pid -1)
#   g4 (0,1) 0.4 distractor (neg)    | g5 (1,2) 0.5 GOOD | g6 (3,1) 0.6 neg
# Non-junk ranking: g1 g2 g4 g5 g6 -> goods at positions 2 and 4 (ngood = 2).
#   AP   = (1/2 + 2/4) / 2 = 0.5;  INP = 2/4 = 0.5;  first hit at rank 2.
#   official: k=1 at i=2: (p_old 0/1 + p_new 1/2)/2 = 1/4; k=2 at i=4: (1/3 + 2/4)/2 = 5/12
#             AP_off = (1/4 + 5/12) / 2 = 1/3
# Query B (pid 2, cam 1): its only same-pid item g1 has its camera -> junk -> invalid
#   (skipped by mAP; AP 0 in the official mAP).
# Query C (pid 3, cam 0): g6 (3,1) is nearest -> AP = INP = AP_off = 1, first hit at rank 1.
# => mAP = (0.5 + 1)/2 = 0.75, mINP = 0.75, CMC = [1/2, 1, 1, ...], official mAP = (1/3 + 0 + 1)/3 = 4/9.
HAND_GP = np.array([1, 2, 1, -1, 0, 1, 3])
HAND_GC = np.array([0, 1, 1, 2, 1, 2, 1])
HAND_QP, HAND_QC = np.array([1, 2, 3]), np.array([0, 1, 0])
HAND_D = np.array(
    [
        [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6],
        [0.5, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.05],
    ],
    dtype=np.float32,
)


def test_hand_example_all_metrics():
    res = evaluate_ranking(HAND_D, HAND_QP, HAND_GP, HAND_QC, HAND_GC, max_rank=5)
    assert res["num_valid_queries"] == 2
    np.testing.assert_allclose(res["cmc"], [0.5, 1, 1, 1, 1], atol=1e-12)
    assert res["mAP"] == pytest.approx(0.75, abs=1e-12)
    assert res["mINP"] == pytest.approx(0.75, abs=1e-12)
    assert res["mAP_official"] == pytest.approx(4 / 9, abs=1e-12)
    # query A alone: official 1/3 vs non-interpolated 0.5
    alone = evaluate_ranking(HAND_D[:1], HAND_QP[:1], HAND_GP, HAND_QC[:1], HAND_GC)
    assert alone["mAP_official"] == pytest.approx(1 / 3)
    assert alone["mAP"] == pytest.approx(0.5)
    # max_rank larger than the gallery is clamped to G
    assert evaluate_ranking(HAND_D, HAND_QP, HAND_GP, HAND_QC, HAND_GC)["cmc"].shape == (7,)


def test_minp_hand_example():
    # one query (pid 1, cam 0), no junk; matches at ranks 1, 3 and 6 of 6
    # AP = (1/1 + 2/3 + 3/6) / 3 = 13/18; INP = 3/6 = 0.5
    gp = np.array([1, 5, 1, 6, 7, 1])
    gc = np.ones(6, dtype=int)
    d = np.arange(6, dtype=np.float32)[None, :]
    res = evaluate_ranking(d, np.array([1]), gp, np.array([0]), gc, max_rank=3)
    assert res["mINP"] == pytest.approx(0.5)
    assert res["mAP"] == pytest.approx(13 / 18)
    np.testing.assert_array_equal(res["cmc"], [1, 1, 1])


def test_ties_keep_gallery_order():
    gp, gc = np.array([2, 1]), np.array([1, 1])
    d = np.array([[0.5, 0.5]], dtype=np.float32)
    # equal distances: gallery order -> negative first, match at rank 2
    assert evaluate_ranking(d, np.array([1]), gp, np.array([0]), gc)["mAP"] == pytest.approx(0.5)
    assert evaluate_ranking(d, np.array([1]), gp[::-1], np.array([0]), gc)["mAP"] == pytest.approx(1.0)
    # -0.0 and 0.0 are equal distances too
    d0 = np.array([[0.0, -0.0]], dtype=np.float32)
    assert evaluate_ranking(d0, np.array([1]), gp, np.array([0]), gc)["mAP"] == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
def test_random_with_ties_and_negatives_vs_brute_force(dtype):
    rng = np.random.default_rng(11)
    q, g = 23, 61
    dist = rng.integers(-6, 7, size=(q, g)).astype(dtype)  # many ties, negative values
    qp, gp = rng.integers(1, 6, q), rng.integers(-1, 6, g)
    qc, gc = rng.integers(0, 3, q), rng.integers(0, 3, g)
    expected = brute_force_metrics(dist, qp, gp, qc, gc, max_rank=20)
    res = evaluate_ranking(dist, qp, gp, qc, gc, max_rank=20, chunk_size=4)
    assert res["num_valid_queries"] == expected["num_valid_queries"]
    np.testing.assert_allclose(res["cmc"], expected["cmc"], atol=1e-12)
    assert res["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert res["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)


def test_sortable_keys_order():
    vals = np.array([3.5, -0.0, 0.0, -1e-30, 1e-30, -np.inf, np.inf, np.nan, -2.0, 7e30, -7e30], np.float32)
    keys = _sortable_u32(vals.copy())
    np.testing.assert_array_equal(np.argsort(keys, kind="stable"), np.argsort(vals, kind="stable"))


def test_query_without_match_is_skipped():
    d = HAND_D[:2]
    res = evaluate_ranking(d, HAND_QP[:2], HAND_GP, HAND_QC[:2], HAND_GC)
    assert res["num_valid_queries"] == 1
    assert res["mAP"] == pytest.approx(0.5)


def test_all_invalid_raises():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_ranking(HAND_D[1:2], HAND_QP[1:2], HAND_GP, HAND_QC[1:2], HAND_GC)
    with pytest.raises(ValueError, match="shape"):
        evaluate_ranking(HAND_D[:, :3], HAND_QP, HAND_GP, HAND_QC, HAND_GC)


def test_accumulator_any_order_and_missing_rows():
    acc = RankingAccumulator(HAND_QP, HAND_GP, HAND_QC, HAND_GC)
    acc.update(np.array([2, 0]), HAND_D[[2, 0]])
    with pytest.raises(ValueError, match="never added"):
        acc.result()
    acc.update(slice(1, 2), HAND_D[1:2])
    assert acc.result()["mAP"] == pytest.approx(0.75)


def test_l2_normalize_by_hand():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], np.float32)
    out = l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32 and l2_normalize(x.astype(np.float16)).dtype == np.float32
    assert l2_normalize(x.astype(np.float64)).dtype == np.float64
