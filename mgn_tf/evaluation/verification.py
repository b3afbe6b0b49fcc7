"""The verification view of a labelled split: "are these two images the same person?" as a distance
threshold, with the true-positive rate it buys at a given false-positive rate (numpy only).

Pairs are every query-gallery pair the ranking protocol keeps: a pair with pid -1 (junk) or with the
query's identity seen from the query's camera is left out; the rest are positive (same identity) or
negative (different identities, distractors included). A pair is called "same person" when its
distance is strictly below the threshold. For a target FPR f with N negative pairs, at most
k = floor(f * N) negatives may be accepted, so the threshold is the (k+1)-th smallest negative
distance. The smallest negatives are kept exactly while streaming query chunks (no [Q, G] matrix), so
the thresholds and rates are exact; the ROC curve above the largest target FPR is drawn from a seeded
uniform sample of the negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mgn_tf.evaluation.metrics import FeatureDistance, distance_chunks

FPR_TARGETS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
CURVE_SAMPLE = 1_000_000  # negative distances sampled for the ROC curve above the largest target FPR
CURVE_POINTS = 400


def pair_masks(
    q_pid: np.ndarray, q_cam: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) boolean masks [rows, G] of query rows against the gallery, junk removed."""
    q_pid, q_cam = np.asarray(q_pid)[:, None], np.asarray(q_cam)[:, None]
    g_pids, g_cams = np.asarray(g_pids)[None, :], np.asarray(g_cams)[None, :]
    valid = (g_pids != -1) & (q_pid != -1)
    same = g_pids == q_pid
    positive = valid & same & (g_cams != q_cam)
    negative = valid & ~same
    return positive, negative


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    return values if len(values) <= k else np.partition(values, k - 1)[:k]


def verification(
    qf: np.ndarray,
    gf: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    distance: str = "euclidean",
    normalize: bool = True,
    fprs: Sequence[float] = FPR_TARGETS,
    chunk_size: int = 256,
    curve_sample: int = CURVE_SAMPLE,
    seed: int = 0,
) -> dict:
    """Thresholds, TPR and achieved FPR at each target FPR, plus a ROC curve; JSON-ready.

    The distance is `mgn_tf.evaluation.metrics.FeatureDistance` (what the ranking uses), so a
    threshold applies to the distances `mgn_tf.gallery` reports under the same distance and
    normalisation. Raises ValueError when the split has no positive or no negative pair.
    """
    fprs = sorted(float(f) for f in fprs)
    if not fprs or fprs[0] <= 0 or fprs[-1] >= 1:
        raise ValueError(f"target FPRs must be in (0, 1), got {fprs}")
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_neg = num_pos = 0
    for a in range(0, len(q_pids), chunk_size):
        rows = slice(a, a + chunk_size)
        pos, neg = pair_masks(q_pids[rows], q_camids[rows], g_pids, g_camids)
        num_pos, num_neg = num_pos + int(pos.sum()), num_neg + int(neg.sum())
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"verification needs positive and negative pairs, got {num_pos} and {num_neg}")
    keep = int(np.floor(fprs[-1] * num_neg)) + 1  # the tail every target threshold is read from
    rate = min(1.0, curve_sample / num_neg)
    rng = np.random.default_rng(seed)
    tail = np.zeros(0, np.float64)
    positives, sample = [], []
    dist = FeatureDistance(qf, gf, distance, normalize)
    for rows, chunk in distance_chunks(dist, len(q_pids), chunk_size):
        pos, neg = pair_masks(q_pids[rows], q_camids[rows], g_pids, g_camids)
        chunk = np.asarray(chunk, np.float64)
        positives.append(chunk[pos])
        negatives = chunk[neg]
        tail = _smallest(np.concatenate([tail, _smallest(negatives, keep)]), keep)
        sample.append(negatives[rng.random(len(negatives)) < rate] if rate < 1 else negatives)
    positives = np.sort(np.concatenate(positives))
    tail = np.sort(tail)
    points = []
    for f in fprs:
        k = int(np.floor(f * num_neg))
        threshold = float(tail[k])
        accepted_neg = int(np.searchsorted(tail, threshold, side="left"))
        accepted_pos = int(np.searchsorted(positives, threshold, side="left"))
        points.append(
            {
                "target_fpr": f,
                "threshold": threshold,
                "tpr": accepted_pos / len(positives),
                "fpr": accepted_neg / num_neg,
                "false_positives": accepted_neg,
                "resolvable": k >= 1,  # f * N >= 1: the split has enough negatives to measure f
            }
        )
    return {
        "distance": distance,
        "normalize": bool(normalize),
        "rule": "same person when distance < threshold",
        "num_positive_pairs": int(len(positives)),
        "num_negative_pairs": int(num_neg),
        "points": points,
        "curve": _curve(positives, tail, np.sort(np.concatenate(sample)), num_neg, rate),
    }


def _curve(positives: np.ndarray, tail: np.ndarray, sample: np.ndarray, num_neg: int, rate: float) -> dict:
    """ROC points (fpr, tpr, threshold): exact along the kept tail, from the sample above it."""
    exact = tail[np.unique(np.geomspace(1, len(tail), CURVE_POINTS // 2).astype(np.int64) - 1)]
    above = sample[sample > tail[-1]]
    if len(above):
        above = above[np.unique(np.linspace(0, len(above) - 1, CURVE_POINTS // 2).astype(np.int64))]
    thresholds = np.concatenate([exact, above, [np.inf]])
    fpr = np.where(
        thresholds <= tail[-1],
        np.searchsorted(tail, thresholds, side="left") / num_neg,
        np.minimum(1.0, (np.searchsorted(sample, thresholds, side="left") / max(rate, 1e-300)) / num_neg),
    )
    fpr = np.maximum.accumulate(fpr)
    tpr = np.searchsorted(positives, thresholds, side="left") / len(positives)
    finite = np.where(np.isfinite(thresholds), thresholds, None)
    return {
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        "threshold": [None if t is None else float(t) for t in finite],
    }


def threshold_at(results: dict, fpr: float) -> float:
    """The threshold of target `fpr` in a results.json "verification" record; ValueError if absent."""
    points = results.get("points", [])
    for point in points:
        if np.isclose(point["target_fpr"], fpr, rtol=1e-9, atol=0):
            return float(point["threshold"])
    have = ", ".join(f"{p['target_fpr']:g}" for p in points) or "none"
    raise ValueError(f"no threshold for FPR {fpr:g} (the evaluation reported FPR {have})")
