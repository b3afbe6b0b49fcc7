"""The features of a split: extracted with an `mgn_tf.inference` embedder, stored in and read from one
.npz file (no pickles), so distance, normalisation, multi-query pooling and re-ranking can change later
without running the model again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mgn_tf.data.datasets import Item, Split
from mgn_tf.evaluation.multi_query import multi_query_subset
from mgn_tf.evaluation.ranking import item_arrays
from mgn_tf.evaluation.settings import EvalSettings
from mgn_tf.files import atomic_path

if TYPE_CHECKING:
    from mgn_tf.inference import Embedder

FEATURES_FORMAT = 1  # version of the feature-file layout


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


def extract_split_features(embedder: Embedder, split: Split, settings: EvalSettings) -> FeatureSet:
    """Query / gallery (and for multi-query the needed gt_bbox) features of `split`, unnormalised.

    An artefact exported with flip-averaging and normalisation baked in is not flipped again.
    """

    def features(items: Sequence[Item], description: str) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        out = embedder.embed(
            [p for p, _, _ in items],
            batch_size=settings.eval_batch_size,
            flip=settings.eval_flip,
            normalize=False,
            progress=settings.progress,
            description=description,
        )
        return out, round(time.perf_counter() - started, 3)

    # Announced up front, so that query and gallery run on the same engine (a large job may freeze it).
    runs = len(split.query) + len(split.gallery)
    embedder.expect(runs * (2 if settings.eval_flip and not embedder.baked_flip_norm else 1))
    if settings.progress:
        print(f"Embedding with {embedder.engine}", flush=True)
    timings = {}
    qf, timings["query"] = features(split.query, "query")
    gf, timings["gallery"] = features(split.gallery, "gallery")
    mq_items = mqf = None
    if settings.multi_query != "none":
        if split.multi_query is None:
            raise ValueError(f"{split.name} at {split.root} has no multi-query images (gt_bbox/)")
        mq_items = multi_query_subset(split.query, split.multi_query)
        mqf, timings["multi_query"] = features(mq_items, "multi-query")
    baked = embedder.baked_flip_norm
    info = {
        "flip": bool(settings.eval_flip or baked),
        "flip_baked_into_model": bool(baked),
        "normalized_by_model": bool(baked),
        "input_size": list(embedder.input_size),
        "model_format": embedder.format,
        "engine": embedder.engine,
        "weights": str(embedder.path),
        "dataset": split.name,
        "data_root": split.root,
        "load_model_seconds": embedder.load_seconds,
        "extract_seconds": timings,
    }
    return FeatureSet(qf, gf, list(split.query), list(split.gallery), mqf, mq_items, info)


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
    """Writes a FeatureSet to one .npz (atomically; no pickles).

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
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
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
