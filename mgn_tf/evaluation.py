"""Evaluation of a re-ID model on a dataset split, without flags (`mgn_tf.evaluate` is the command line).

    features (flip-averaged, batched)  ->  [multi-query pooling]  ->  distances, optionally k-reciprocal
    re-ranked (streamed by query chunks)  ->  CMC / mAP / mINP / official mAP  +  exact chance level

`evaluate_model` is the short path used at the end of training (Keras model in memory, no re-ranking).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from mgn_tf.features import extract_features, l2_normalize
from mgn_tf.images import ImageReadError, load_image
from mgn_tf.metrics import FeatureDistance, Metric, RankingAccumulator, distance_chunks

if TYPE_CHECKING:
    import keras

    from mgn_tf.data.datasets import Item, Split

POOLING: tuple[str, ...] = ("none", "avg", "max")
RANKS: tuple[int, ...] = (1, 5, 10)
FEATURES_FORMAT = 1  # version of the --save_features file layout


# ------------------------------------------------------------------------------------------- basics


def keras_embed_fn(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled batch function float32 [B, H, W, 3] -> [B, 2048] numpy for a build_mgn model."""
    from mgn_tf.model import embedding_model

    embedder = embedding_model(model)

    @tf.function(reduce_retracing=True)
    def run(images):
        return tf.cast(embedder(images, training=False), tf.float32)

    return lambda batch: run(tf.convert_to_tensor(batch)).numpy()


def item_arrays(items: Sequence[Item]) -> tuple[list[str], np.ndarray, np.ndarray]:
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

    Junk as in `mgn_tf.metrics`: the query's pid from the query's camera, and pid -1.
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


# ---------------------------------------------------------------------------------------- multi-query


def multi_query_groups(query: Sequence[Item], multi_query: Sequence[Item]) -> list[np.ndarray]:
    """For every query, the indices into `multi_query` of the images pooled with it.

    Those are the multi-query images (Market-1501 ``gt_bbox``) with the query's pid AND camera, except an
    image with the query's own file name (the query images are themselves gt_bbox boxes; the query is
    pooled once, from its own feature).
    """
    by_key: dict[tuple[int, int], list[int]] = {}
    for j, (_, pid, cam) in enumerate(multi_query):
        by_key.setdefault((pid, cam), []).append(j)
    groups = []
    for path, pid, cam in query:
        name = os.path.basename(path)
        members = [j for j in by_key.get((pid, cam), []) if os.path.basename(multi_query[j][0]) != name]
        groups.append(np.array(members, dtype=np.int64))
    return groups


def pool_multi_query(
    qf: np.ndarray, mqf: np.ndarray, groups: Sequence[np.ndarray], mode: str = "avg"
) -> np.ndarray:
    """Query features pooled over {the query} + its group: element-wise mean ("avg") or max ("max")."""
    if mode not in ("avg", "max"):
        raise ValueError(f"multi-query pooling must be 'avg' or 'max', got {mode!r}")
    if len(groups) != len(qf):
        raise ValueError(f"{len(groups)} groups for {len(qf)} queries")
    pooled = np.empty_like(qf)
    for i, group in enumerate(groups):
        stack = np.concatenate([qf[i : i + 1], mqf[group]]) if len(group) else qf[i : i + 1]
        pooled[i] = stack.mean(axis=0) if mode == "avg" else stack.max(axis=0)
    return pooled


# -------------------------------------------------------------------------------------------- ranking


@dataclass(frozen=True)
class RerankParams:
    """k-reciprocal re-ranking parameters (Zhong et al. 2017; their Market-1501 defaults)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


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


def rerank_features(qf: np.ndarray, gf: np.ndarray, distance: Metric, normalize: bool):
    """The features re-ranking works on: L2-normalised if `normalize` or cosine distance, else raw.

    Re-ranking always uses Euclidean distances, as the reference; on L2-normalised features the squared
    Euclidean distance is 2 x the cosine distance, so euclidean and cosine give the same re-ranking.
    """
    if normalize or distance == "cosine":
        return l2_normalize(qf.astype(np.float32)), l2_normalize(gf.astype(np.float32))
    return qf.astype(np.float32), gf.astype(np.float32)


def rank_gallery(
    qf: np.ndarray,
    gf: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    distance: Metric = "euclidean",
    normalize: bool = True,
    rerank: RerankParams | None = None,
    max_rank: int = 50,
    chunk_size: int = 256,
    show_queries: Sequence[int] = (),
    top: int = 10,
) -> tuple[dict, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Metrics of one ranking of the gallery, computed query chunk by query chunk (no [Q, G] matrix).

    Without `rerank`: `distance` between (L2-normalised if `normalize`) features. With `rerank`: the
    sparse k-reciprocal re-ranking of `mgn_tf.rerank` (equal to the reference) on `rerank_features`.
    Returns (`metrics_summary` dict + "seconds", {query: (top gallery indices, distances)} of
    `show_queries`).
    """
    from mgn_tf.rerank import iter_re_ranking_features

    started = time.perf_counter()
    acc = RankingAccumulator(q_pids, g_pids, q_camids, g_camids)
    tops = TopRanks(show_queries, q_pids, g_pids, q_camids, g_camids, top)
    if rerank is None:
        chunks = distance_chunks(FeatureDistance(qf, gf, distance, normalize), len(qf), chunk_size)
    else:
        rq, rg = rerank_features(qf, gf, distance, normalize)
        chunks = iter_re_ranking_features(
            rq, rg, rerank.k1, rerank.k2, rerank.lambda_value, chunk_size=chunk_size
        )
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


# ------------------------------------------------------------------------------------------- features


@dataclass
class FeatureSet:
    """Per-image features of a split (flip-averaged if `settings["flip"]`, never L2-normalised) and lists.

    `multi_query` holds only the multi-query images pooled with some query (or None when not extracted).
    """

    query: np.ndarray
    gallery: np.ndarray
    query_items: list[Item]
    gallery_items: list[Item]
    multi_query: np.ndarray | None = None
    multi_query_items: list[Item] | None = None
    settings: dict = field(default_factory=dict)


def multi_query_subset(query: Sequence[Item], multi_query: Sequence[Item]) -> list[Item]:
    """The multi-query images that `multi_query_groups` pools with at least one query, in list order."""
    used = sorted({int(j) for group in multi_query_groups(query, multi_query) for j in group})
    return [multi_query[j] for j in used]


def find_unreadable(paths: Sequence[str], size: tuple[int, int]) -> ImageReadError | None:
    """An ImageReadError naming the first file `mgn_tf.images.load_image` cannot decode (None if all can)."""
    bad = []
    for path in paths:
        try:
            load_image(path, size)
        except ImageReadError as exc:
            bad.append(exc)
    if not bad:
        return None
    more = f" (and {len(bad) - 1} more unreadable image(s))" if len(bad) > 1 else ""
    return ImageReadError(f"{bad[0]}{more}")


def extract_split_features(
    embedder,
    split: Split,
    flip: bool = True,
    batch_size: int = 64,
    multi_query: bool = False,
    progress: bool = True,
) -> FeatureSet:
    """Query / gallery (and, with `multi_query`, the needed gt_bbox) features with an `inference.Embedder`.

    An artefact exported with flip-averaging and normalisation baked in is not flipped again.
    """
    host_flip = flip and not embedder.baked_flip_norm

    def embed(batch: np.ndarray) -> np.ndarray:
        return embedder.embed(batch, batch_size=len(batch))

    def features(items: Sequence[Item], description: str) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        paths = [p for p, _, _ in items]
        try:
            out = extract_features(
                embed, paths, embedder.input_size, batch_size, host_flip, description, progress
            )
        except tf.errors.InvalidArgumentError as exc:  # tf.data does not say which file: find it
            raise find_unreadable(paths, embedder.input_size) or exc from exc
        return out, round(time.perf_counter() - started, 3)

    timings = {}
    qf, timings["query"] = features(split.query, "query")
    gf, timings["gallery"] = features(split.gallery, "gallery")
    mq_items = mqf = None
    if multi_query:
        if split.multi_query is None:
            raise ValueError(f"{split.name} at {split.root} has no multi-query images (gt_bbox/)")
        mq_items = multi_query_subset(split.query, split.multi_query)
        mqf, timings["multi_query"] = features(mq_items, "multi-query")
    settings = {
        "flip": bool(flip or embedder.baked_flip_norm),
        "flip_baked_into_model": bool(embedder.baked_flip_norm),
        "normalized_by_model": bool(embedder.baked_flip_norm),
        "input_size": list(embedder.input_size),
        "model_format": embedder.format,
        "weights": str(embedder.path),
        "dataset": split.name,
        "data_root": split.root,
        "extract_seconds": timings,
    }
    return FeatureSet(qf, gf, list(split.query), list(split.gallery), mqf, mq_items, settings)


def _items_to_arrays(prefix: str, items: Sequence[Item]) -> dict[str, np.ndarray]:
    paths, pids, camids = item_arrays(items)
    return {
        f"{prefix}_paths": np.array(paths, dtype=np.str_),
        f"{prefix}_pids": pids,
        f"{prefix}_camids": camids,
    }


def _arrays_to_items(data, prefix: str) -> list[Item]:
    paths, pids, camids = data[f"{prefix}_paths"], data[f"{prefix}_pids"], data[f"{prefix}_camids"]
    return [(str(p), int(i), int(c)) for p, i, c in zip(paths, pids, camids, strict=True)]


def save_features(path: str | os.PathLike, features: FeatureSet) -> Path:
    """Writes a FeatureSet to one .npz (written atomically; no pickles).

    Keys: ``{query,gallery[,multi_query]}_{features,paths,pids,camids}`` and ``settings`` (JSON text).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "query_features": features.query.astype(np.float32),
        "gallery_features": features.gallery.astype(np.float32),
        **_items_to_arrays("query", features.query_items),
        **_items_to_arrays("gallery", features.gallery_items),
        "settings": np.array(json.dumps({**features.settings, "format_version": FEATURES_FORMAT})),
    }
    if features.multi_query is not None:
        arrays["multi_query_features"] = features.multi_query.astype(np.float32)
        arrays.update(_items_to_arrays("multi_query", features.multi_query_items or []))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Reads a `save_features` file; raises ValueError for a file that is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            settings = json.loads(str(data["settings"]))
            multi = "multi_query_features" in data.files
            result = FeatureSet(
                query=data["query_features"],
                gallery=data["gallery_features"],
                query_items=_arrays_to_items(data, "query"),
                gallery_items=_arrays_to_items(data, "gallery"),
                multi_query=data["multi_query_features"] if multi else None,
                multi_query_items=_arrays_to_items(data, "multi_query") if multi else None,
                settings=settings,
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a feature file written by --save_features ({exc})") from exc
    for name, feats, items in (
        ("query", result.query, result.query_items),
        ("gallery", result.gallery, result.gallery_items),
    ):
        if feats.ndim != 2 or len(feats) != len(items):
            raise ValueError(f"{path}: {name} features {feats.shape} do not match {len(items)} images")
    return result


# ------------------------------------------------------------------------------------ during training


def evaluate_model(model: keras.Model, split: Split, size: tuple[int, int], batch_size: int = 64) -> dict:
    """Flip-averaged, L2-normalised features; Euclidean distance; metrics next to the exact chance level.

    Keys: rank1/5/10, mAP, mINP, mAP_official, num_valid_queries, cmc, chance_rank1/5/10, chance_mAP,
    num_query, num_gallery, dataset.
    """
    embed = keras_embed_fn(model)
    qf = extract_features(embed, [q[0] for q in split.query], size, batch_size, description="query")
    gf = extract_features(embed, [g[0] for g in split.gallery], size, batch_size, description="gallery")
    _, q_pids, q_cams = item_arrays(split.query)
    _, g_pids, g_cams = item_arrays(split.gallery)
    max_rank = min(50, len(split.gallery))
    results, _ = rank_gallery(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    results.pop("seconds")
    chance = chance_level(q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    results.update({f"chance_rank{r}": float(chance["cmc"][r - 1]) for r in RANKS if r <= max_rank})
    results["chance_mAP"] = chance["mAP"]
    results.update({"num_query": len(split.query), "num_gallery": len(split.gallery), "dataset": split.name})
    return results
