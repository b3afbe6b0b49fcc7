"""Retrieval accuracy of every exported artefact on a labelled split, next to the Keras model's.

A quantized model is good enough when it ranks the gallery as the float model does, which a cosine bound
on a few images cannot tell; so the export runs each artefact through the evaluation pipeline's own
feature extraction (flip-averaged, as `python -m mgn_tf.evaluate` does) and ranking (normalised
Euclidean, no re-ranking) on a labelled query/gallery split, and flags every artefact whose mAP is more
than `max_map_drop` points (percentage points) below the Keras model's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from mgn_tf.data.datasets import Split
from mgn_tf.evaluation.features import extract_split_features
from mgn_tf.evaluation.metrics import FeatureDistance, evaluate_ranking
from mgn_tf.evaluation.ranking import item_arrays
from mgn_tf.evaluation.settings import EvalSettings

DEFAULT_MAX_MAP_DROP = 1.0  # points of mAP


@dataclass
class Accuracy:
    """Rank-1 / mAP (fractions) of one artefact on the accuracy split."""

    name: str
    rank1: float
    mAP: float
    mINP: float
    seconds: float
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ok": self.ok}


def subset_identities(split: Split, max_identities: int, seed: int = 0) -> Split:
    """`split` with query and gallery restricted to a seeded sample of `max_identities` query identities
    (0: all). Gallery images of other identities are dropped too: the task gets smaller, not harder."""
    pids = sorted({pid for _, pid, _ in split.query})
    if max_identities <= 0 or max_identities >= len(pids):
        return split
    keep = set(np.random.default_rng(seed).choice(pids, size=max_identities, replace=False).tolist())
    query = [item for item in split.query if item[1] in keep]
    gallery = [item for item in split.gallery if item[1] in keep]
    return dataclasses.replace(split, query=query, gallery=gallery, multi_query=None)


def retrieval_accuracy(name: str, embedder, split: Split, batch_size: int = 32) -> Accuracy:
    """Rank-1, mAP and mINP of `embedder` on `split` (flip-averaged features, normalised Euclidean)."""
    started = time.perf_counter()
    settings = EvalSettings(eval_batch_size=batch_size, rerank=None, progress=False)
    features = extract_split_features(embedder, split, settings)
    _, q_pids, q_cams = item_arrays(features.query_items)
    _, g_pids, g_cams = item_arrays(features.gallery_items)
    distances = FeatureDistance(features.query, features.gallery, "euclidean", normalize=True)
    result = evaluate_ranking(distances, q_pids, g_pids, q_cams, g_cams, max_rank=1)
    return Accuracy(
        name,
        float(result["cmc"][0]),
        float(result["mAP"]),
        float(result["mINP"]),
        round(time.perf_counter() - started, 3),
    )


def apply_gate(results: list[Accuracy], reference: Accuracy, max_map_drop: float) -> None:
    """Adds a failure to every result whose mAP is more than `max_map_drop` points below `reference`'s."""
    for result in results:
        drop = 100 * (reference.mAP - result.mAP)
        if drop > max_map_drop:
            result.failures.append(
                f"mAP {100 * result.mAP:.2f}% is {drop:.2f} points below Keras's {100 * reference.mAP:.2f}% "
                f"(bound {max_map_drop:g})"
            )


def format_table(results: list[Accuracy], reference: Accuracy) -> str:
    header = f"{'artefact':36s} {'rank-1':>7s} {'mAP':>7s} {'ΔmAP':>7s} {'mINP':>7s} {'seconds':>8s}  status"
    lines = [header, "-" * len(header)]
    for r in [reference, *results]:
        delta = 100 * (r.mAP - reference.mAP)
        status = "ok" if r.ok else "FAIL: " + "; ".join(r.failures)
        lines.append(
            f"{r.name:36s} {100 * r.rank1:6.2f}% {100 * r.mAP:6.2f}% {delta:+7.2f} {100 * r.mINP:6.2f}% "
            f"{r.seconds:8.1f}  {status}"
        )
    return "\n".join(lines)
