"""Evaluation of a model on a dataset split: features (with flip averaging) -> distances -> CMC / mAP."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mgn_tf.data.datasets import Split
from mgn_tf.features import extract_features, l2_normalize
from mgn_tf.metrics import cmc_map
from mgn_tf.model import embedding_model


def keras_embed_fn(model: keras.Model):
    """A compiled batch function float32 [B, H, W, 3] -> [B, 2048] numpy for a build_mgn model."""
    embedder = embedding_model(model)

    @tf.function(reduce_retracing=True)
    def run(images):
        return tf.cast(embedder(images, training=False), tf.float32)

    return lambda batch: run(tf.convert_to_tensor(batch)).numpy()


def euclidean(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    qf, gf = qf.astype(np.float64), gf.astype(np.float64)
    squared = (qf**2).sum(1)[:, None] - 2.0 * qf @ gf.T + (gf**2).sum(1)[None]
    return np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)


def ranking_metrics(distmat: np.ndarray, query: list, gallery: list, ranks=(1, 5, 10)) -> dict:
    """rank-k and mAP under the Market-1501 protocol, plus the same for random ranking (chance level)."""
    q_pids, q_cams = np.array([q[1] for q in query]), np.array([q[2] for q in query])
    g_pids, g_cams = np.array([g[1] for g in gallery]), np.array([g[2] for g in gallery])
    max_rank = min(50, len(gallery))
    cmc, mean_ap = cmc_map(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    random = np.random.default_rng(0).random(distmat.shape)
    chance_cmc, chance_map = cmc_map(random, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    results = {f"rank{r}": float(cmc[r - 1]) for r in ranks if r <= max_rank}
    results["mAP"] = float(mean_ap)
    results.update({f"chance_rank{r}": float(chance_cmc[r - 1]) for r in ranks if r <= max_rank})
    results["chance_mAP"] = float(chance_map)
    results["cmc"] = [float(c) for c in cmc]
    return results


def evaluate_model(model: keras.Model, split: Split, size: tuple[int, int], batch_size: int = 64) -> dict:
    """Flip-averaged, L2-normalised features of query and gallery; Euclidean distance; metrics."""
    embed = keras_embed_fn(model)
    qf = extract_features(embed, [q[0] for q in split.query], size, batch_size, description="query")
    gf = extract_features(embed, [g[0] for g in split.gallery], size, batch_size, description="gallery")
    results = ranking_metrics(euclidean(l2_normalize(qf), l2_normalize(gf)), split.query, split.gallery)
    results.update({"num_query": len(split.query), "num_gallery": len(split.gallery), "dataset": split.name})
    return results
