"""mgn_tf.evaluation: chance level against exhaustive enumeration and sampling, rankings and ranked lists
against the brute-force protocol, feature files, and the pipeline (the one training ends with) on real
images with a fresh model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers.protocol import brute_force_metrics, metrics_from_orders

from mgn_tf.evaluation import features as feature_files
from mgn_tf.evaluation.metrics import evaluate_ranking
from mgn_tf.evaluation.ranking import (
    TopRanks,
    chance_level,
    item_arrays,
    match_counts,
    rank_gallery,
    sample_queries,
)

# A small protocol case: junk (same pid + camera), a pid -1 item, a pid 0 distractor, a query without match.
Q_PIDS = np.array([1, 1, 2, 3, 4])
Q_CAMS = np.array([0, 1, 0, 2, 0])
G_PIDS = np.array([1, 1, 2, 0, -1, 3, 2])
G_CAMS = np.array([0, 2, 1, 1, 0, 2, 0])


def test_chance_level_equals_the_exact_average_over_every_gallery_order():
    max_rank = 7
    sums_cmc, sums_ap, count = np.zeros(max_rank), 0.0, 0
    perms = list(itertools.permutations(range(len(G_PIDS))))
    for perm in perms:
        result = metrics_from_orders([perm] * len(Q_PIDS), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank)
        sums_cmc += result["cmc"]
        sums_ap += result["mAP"]
        count += 1
    chance = chance_level(Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank)
    assert count == math.factorial(7)
    assert chance["num_valid_queries"] == 3  # query 0 (pid 1, cam 0): one match; pid 3 cam 2: only junk
    np.testing.assert_allclose(chance["cmc"], sums_cmc / count, rtol=0, atol=1e-12)
    assert chance["mAP"] == pytest.approx(sums_ap / count, abs=1e-12)


def test_chance_rank1_on_mini_market_matches_random_rankings(mini_market_dir):
    from mgn_tf.data.datasets import load_dataset

    split = load_dataset("market1501", mini_market_dir)
    _, qp, qc = item_arrays(split.query)
    _, gp, gc = item_arrays(split.gallery)
    chance = chance_level(qp, gp, qc, gc, max_rank=10)
    rng = np.random.default_rng(0)
    trials = 2000
    rank1 = np.array(
        [evaluate_ranking(rng.random((32, 32)), qp, gp, qc, gc, 10)["cmc"][0] for _ in range(trials)]
    )
    sem = rank1.std(ddof=1) / math.sqrt(trials)
    assert abs(rank1.mean() - chance["cmc"][0]) < 4 * sem
    # by hand: each valid query has n non-junk items, m matches; P(rank-1 hit) = m / n
    n, m = match_counts(qp, gp, qc, gc)
    assert chance["cmc"][0] == pytest.approx(np.mean((m / n)[m > 0]), abs=1e-12)
    assert chance["num_valid_queries"] == 30


def test_top_ranks_skip_junk_and_keep_distance_order():
    dist = np.array([[0.5, 0.1, 0.3, 0.2, 0.05, 0.4, 0.6]], np.float32)  # query 0: pid 1, camera 0
    tops = TopRanks([0], Q_PIDS[:1], G_PIDS, Q_CAMS[:1], G_CAMS, top=3)
    tops.update(slice(0, 1), dist)
    indices, distances = tops.lists[0]
    # by distance: 4 (pid -1: junk), 1, 3, 2, 5, 0 (pid 1 camera 0: junk), 6
    assert indices.tolist() == [1, 3, 2]
    np.testing.assert_allclose(distances, [0.1, 0.2, 0.3], rtol=1e-6)


def test_rank_gallery_matches_brute_force_and_chunking():
    rng = np.random.default_rng(1)
    qf, gf = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    summary, tops = rank_gallery(
        qf, gf, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=7, chunk_size=2, show_queries=[2], top=2
    )
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    dist = np.sqrt(((qn[:, None] - gn[None]) ** 2).sum(-1))
    expected = brute_force_metrics(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, 7)
    np.testing.assert_allclose(summary["cmc"], expected["cmc"], atol=1e-12)
    assert summary["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert summary["rank1"] == summary["cmc"][0] and summary["rank5"] == summary["cmc"][4]
    assert "rank10" not in summary  # only 7 gallery items
    junk = (G_PIDS == -1) | ((G_PIDS == Q_PIDS[2]) & (G_CAMS == Q_CAMS[2]))
    assert tops[2][0].tolist() == [g for g in np.argsort(dist[2]) if not junk[g]][:2]


def test_sample_queries_spread_over_the_list():
    assert sample_queries(32, 8) == [0, 4, 9, 13, 18, 22, 27, 31]
    assert sample_queries(3, 8) == [0, 1, 2]
    assert sample_queries(10, 0) == []


def test_feature_file_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    items = [(f"/data/{i}.jpg", i // 2, i % 2) for i in range(4)]
    saved = feature_files.FeatureSet(
        rng.normal(size=(4, 3)).astype(np.float32),
        rng.normal(size=(2, 3)).astype(np.float32),
        items,
        items[:2],
        rng.normal(size=(1, 3)).astype(np.float32),
        items[3:],
        {"dataset": "market1501", "flip": True},
    )
    loaded = feature_files.load_features(feature_files.save_features(tmp_path / "f.npz", saved))
    for name in ("query", "gallery", "multi_query"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(saved, name))
    assert (loaded.query_items, loaded.gallery_items, loaded.multi_query_items) == (
        items,
        items[:2],
        items[3:],
    )
    assert loaded.settings["dataset"] == "market1501" and loaded.settings["format_version"] == 1
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="--save_features"):
        feature_files.load_features(tmp_path / "bad.npz")


def test_pipeline_on_mini_market_with_a_keras_model_in_memory(mini_market_dir, tmp_path):
    """What training runs at its end: a Keras model in memory through the evaluation pipeline."""
    import keras

    from mgn_tf.data.datasets import load_dataset
    from mgn_tf.evaluation.pipeline import evaluate
    from mgn_tf.evaluation.settings import EvalSettings
    from mgn_tf.inference import KerasEmbedder
    from mgn_tf.model import build_mgn

    keras.utils.set_random_seed(0)
    split = load_dataset("market1501", mini_market_dir)
    model = build_mgn(split.num_train_pids, (96, 32))
    settings = EvalSettings(eval_batch_size=32, progress=False, num_ranked_queries=2)
    output = evaluate(KerasEmbedder(model, tmp_path), split, settings, tmp_path / "eval", tmp_path / "f.npz")
    results = output["results"]["without_rerank"]
    assert set(output["results"]) == {"without_rerank", "with_rerank"}
    assert {"rank1", "rank5", "rank10", "mAP", "mINP", "mAP_official", "cmc"} <= set(results)
    assert (output["dataset"]["num_query"], output["dataset"]["num_gallery"]) == (32, 32)
    assert output["dataset"]["name"] == "market1501"
    assert len(results["cmc"]) == 32 and results["cmc"][-1] == 1.0
    assert results["rank1"] == results["cmc"][0] and results["rank10"] == results["cmc"][9]
    assert np.all(np.diff(results["cmc"]) >= 0)
    for ranking in (results, output["results"]["with_rerank"], output["chance"]):
        for key in ("rank1", "rank5", "rank10", "mAP"):
            assert 0.0 <= ranking[key] <= 1.0, key
    _, qp, qc = item_arrays(split.query)
    _, gp, gc = item_arrays(split.gallery)
    chance = chance_level(qp, gp, qc, gc, 32)
    assert output["chance"]["rank1"] == pytest.approx(chance["cmc"][0])
    assert output["chance"]["mAP"] == pytest.approx(chance["mAP"])
    # the numbers are those of the brute-force protocol on the features the pipeline saved
    stored = feature_files.load_features(tmp_path / "f.npz")
    qn = stored.query / np.linalg.norm(stored.query, axis=1, keepdims=True)
    gn = stored.gallery / np.linalg.norm(stored.gallery, axis=1, keepdims=True)
    dist = np.sqrt(((qn[:, None].astype(np.float64) - gn[None]) ** 2).sum(-1))
    expected = brute_force_metrics(dist, qp, gp, qc, gc, 32)
    np.testing.assert_allclose(results["cmc"], expected["cmc"], atol=1e-6)
    assert results["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    for name in ("results.json", "cmc.png", "ranked_list.png", "ranked_list_rerank.png"):
        assert (tmp_path / "eval" / name).is_file(), name
