"""The gallery's nearest-neighbour search and files, on features (no model): exact search against a
dense brute force, faiss against exact, re-ranking against the reference re-ranked distances, and the
on-disk index read back memory-mapped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mgn_tf.evaluation.settings import RerankParams
from mgn_tf.gallery import Gallery, GalleryError, knn
from mgn_tf.gallery.index import ModelInfo, parse_name


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, people: int, seed: int, noise: float = 0.6) -> np.ndarray:
    """Re-ID-like features: unit vectors around one centre per identity."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((people, dim)))
    return unit(centres[rng.integers(0, people, n)] + noise / np.sqrt(dim) * rng.standard_normal((n, dim)))


def brute_force(q, g, k):
    d = np.linalg.norm(q.astype(np.float64)[:, None] - g.astype(np.float64)[None], axis=2)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, 1)


def gallery_of(features: np.ndarray, normalize: bool = True, dtype: str = "float32") -> Gallery:
    probe = unit(np.ones((4, features.shape[1])))
    model = ModelInfo("features", "none", (8, 4), True, normalize, probe)
    gallery = Gallery(model, dtype)
    gallery.add_features(features, [f"/g/{i:04d}_c{i % 6 + 1}s1_000000_00.jpg" for i in range(len(features))])
    return gallery


def test_exact_search_over_uneven_shards_equals_a_dense_brute_force(monkeypatch):
    monkeypatch.setattr(knn, "BLOCK_ROWS", 37)  # many blocks per shard
    monkeypatch.setattr(knn, "QUERY_ROWS", 5)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((300, 24)).astype(np.float32)
    q = rng.standard_normal((13, 24)).astype(np.float32)
    shards = [g[:100], g[100:101], g[101:]]
    found = knn.exact_search(q, shards, 7)
    order, dist = brute_force(q, g, 7)
    np.testing.assert_array_equal(found.indices, order)
    np.testing.assert_allclose(found.distances, dist, rtol=1e-6)
    small = knn.exact_search(q, [g[:3]], 5)  # fewer gallery rows than k: padded
    assert (small.indices[:, 3:] == -1).all() and np.isinf(small.distances[:, 3:]).all()
    np.testing.assert_array_equal(small.indices[:, :3], brute_force(q, g[:3], 3)[0])


def test_float16_gallery_saved_and_memory_mapped_searches_like_the_stored_values(tmp_path):
    g = clustered(500, 64, 50, seed=1)
    gallery = gallery_of(g, dtype="float16")
    gallery.add_features(g[:10] * 1, [f"/h/{i}.jpg" for i in range(10)])  # a second shard
    gallery.save(tmp_path / "idx")
    loaded = Gallery.load(tmp_path / "idx")
    assert isinstance(loaded.features[0], np.memmap) and loaded.features[0].dtype == np.float16
    assert len(loaded) == 510 and loaded.items[3] == parse_name("/g/0003_c4s1_000000_00.jpg")
    assert loaded.items[3].pid == 3 and loaded.items[3].camera == 4 and loaded.items[505].pid is None
    stored = np.concatenate([np.asarray(f, np.float32) for f in loaded.features])
    q = clustered(9, 64, 50, seed=2)
    result = loaded.search(q, k=5)
    order, dist = brute_force(q, stored, 5)
    assert [[m.index for m in row] for row in result.matches] == order.tolist()
    np.testing.assert_allclose([[m.distance for m in row] for row in result.matches], dist, rtol=1e-5)
    record = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert [s["count"] for s in record["shards"]] == [500, 10] and record["dtype"] == "float16"
    with pytest.raises(GalleryError, match="already holds an index"):
        gallery_of(g).save(tmp_path / "idx")


def test_a_gallery_image_finds_itself_first_at_distance_zero():
    g = clustered(200, 32, 20, seed=3)
    result = gallery_of(g).search(g[[5, 77]], k=3)
    assert [row[0].index for row in result.matches] == [5, 77]
    assert all(row[0].distance == 0.0 for row in result.matches)


def test_threshold_marks_matches_below_it():
    g = clustered(100, 16, 10, seed=4)
    result = gallery_of(g).search(g[:4], k=10, threshold=0.5)
    for row in result.matches:
        assert all(m.same_person == (m.distance < 0.5) for m in row)


def test_rerank_with_a_pool_covering_the_gallery_orders_like_the_reference(reid_vectors):
    """The candidates' re-ranking equals the published re-ranking of the whole gallery (reference rr)."""
    for case in range(2):
        qf, gf = reid_vectors[f"c{case}_qf"], reid_vectors[f"c{case}_gf"]
        k1, k2, lam = reid_vectors[f"c{case}_params"]
        gallery = gallery_of(gf, normalize=False)
        params = RerankParams(int(k1), int(k2), float(lam))
        result = gallery.search(qf, k=10, rerank=params, rerank_pool=len(gf))
        rr = reid_vectors[f"c{case}_rr"]
        for q, row in enumerate(result.matches):
            np.testing.assert_allclose([m.rerank_distance for m in row], np.sort(rr[q])[:10], atol=1e-5)
            np.testing.assert_allclose(
                [m.distance for m in row], reid_vectors[f"c{case}_qg"][q, [m.index for m in row]], rtol=1e-5
            )


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, 1], [5, -1, -1, -1]])
    assert knn.recall_at_k(approx, exact) == pytest.approx((3 / 4 + 1 / 4) / 2)


def test_faiss_flat_equals_exact_and_ivf_hnsw_reach_high_recall(tmp_path):
    pytest.importorskip("faiss")
    g = clustered(4000, 64, 400, seed=5)
    q = clustered(50, 64, 400, seed=5)[::-1].copy()
    gallery = gallery_of(g)
    exact = gallery.search(q, k=10)
    flat = gallery.search(q, k=10, backend="faiss_flat")
    assert [[m.index for m in r] for r in flat.matches] == [[m.index for m in r] for r in exact.matches]
    for backend, options in (
        ("faiss_ivfpq", {"nprobe": 8}),
        ("faiss_ivf", {"nprobe": 8}),
        ("faiss_hnsw", {"ef_search": 64}),
    ):
        approx = gallery.search(q, k=10, backend=backend, recall_queries=50, **options)
        truth = np.array([[m.index for m in r] for r in exact.matches])
        found = np.array([[m.index for m in r] for r in approx.matches])
        assert approx.recall_vs_exact["recall"] == pytest.approx(knn.recall_at_k(found, truth))
        assert approx.recall_vs_exact["recall"] >= 0.9, (backend, approx.recall_vs_exact)
        for row_a, row_e in zip(approx.matches, exact.matches, strict=True):  # distances are exact ones
            d_e = {m.index: m.distance for m in row_e}
            assert all(abs(m.distance - d_e[m.index]) < 1e-6 for m in row_a if m.index in d_e)
    gallery.save(tmp_path / "idx")
    loaded = Gallery.load(tmp_path / "idx")
    loaded.search(q, k=10, backend="faiss_ivf")
    assert list((tmp_path / "idx").glob("faiss_ivf_4000.index")), "the IVF index is cached beside the index"
    again = Gallery.load(tmp_path / "idx").search(q, k=10, backend="faiss_ivf", nprobe=8)
    assert [[m.index for m in r] for r in again.matches] == [
        [m.index for m in r] for r in gallery.search(q, k=10, backend="faiss_ivf", nprobe=8).matches
    ]


def test_bad_queries_and_empty_gallery_are_named():
    gallery = gallery_of(clustered(10, 16, 2, seed=6))
    with pytest.raises(GalleryError, match=r"\[Q, 16\]"):
        gallery.search(np.zeros((2, 15), np.float32))
    with pytest.raises(GalleryError, match="backend"):
        gallery.search(np.zeros((2, 16), np.float32), backend="annoy")
    empty = Gallery(gallery.model)
    with pytest.raises(GalleryError, match="empty"):
        empty.search(np.zeros((1, 16), np.float32))
