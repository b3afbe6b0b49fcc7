"""Same-person thresholds (mgn_tf.evaluation.verification) against a brute force over every pair of the
reference vectors' query-gallery distance matrices (computed by the published reference code)."""

from __future__ import annotations

import numpy as np
import pytest

from mgn_tf.evaluation.verification import threshold_at, verification

FPRS = (1e-1, 3e-2, 1e-2, 1e-3, 1e-4)


def brute_force(qg: np.ndarray, qp, gp, qc, gc, fpr: float) -> tuple[float, float, float]:
    """(threshold, tpr, fpr) by listing every kept pair and sorting the negatives."""
    pos, neg = [], []
    for i in range(qg.shape[0]):
        for j in range(qg.shape[1]):
            if qp[i] == -1 or gp[j] == -1 or (qp[i] == gp[j] and qc[i] == gc[j]):
                continue
            (pos if qp[i] == gp[j] else neg).append(qg[i, j])
    neg = sorted(neg)
    allowed = int(np.floor(fpr * len(neg)))  # false positives the target permits
    threshold = neg[allowed]
    return (
        threshold,
        sum(d < threshold for d in pos) / len(pos),
        sum(d < threshold for d in neg) / len(neg),
    )


@pytest.mark.parametrize("case", range(4))
def test_thresholds_equal_a_brute_force_over_every_pair(reid_vectors, case):
    v = {k: reid_vectors[f"c{case}_{k}"] for k in ("qf", "gf", "qp", "gp", "qc", "gc", "qg")}
    out = verification(
        v["qf"], v["gf"], v["qp"], v["gp"], v["qc"], v["gc"], distance="euclidean", normalize=False,
        fprs=FPRS, chunk_size=7,  # many chunks: the kept tail is merged across them
    )  # fmt: skip
    assert [p["target_fpr"] for p in out["points"]] == sorted(FPRS)
    for point in out["points"]:
        threshold, tpr, fpr = brute_force(v["qg"], v["qp"], v["gp"], v["qc"], v["gc"], point["target_fpr"])
        assert point["threshold"] == pytest.approx(threshold, rel=1e-5, abs=1e-5)
        assert point["tpr"] == pytest.approx(tpr, abs=1e-12)
        assert point["fpr"] == pytest.approx(fpr, abs=1e-12)
        assert point["fpr"] <= point["target_fpr"]
    assert threshold_at(out, 1e-3) == out["points"][1]["threshold"]
    curve = out["curve"]
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)
    assert curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0


def test_a_sampled_curve_stays_close_to_the_exact_one(reid_vectors):
    v = {k: reid_vectors[f"c0_{k}"] for k in ("qf", "gf", "qp", "gp", "qc", "gc")}
    args = (v["qf"], v["gf"], v["qp"], v["gp"], v["qc"], v["gc"])
    exact = verification(*args, normalize=False, fprs=(1e-2,))
    sampled = verification(*args, normalize=False, fprs=(1e-2,), curve_sample=3000, seed=1)
    assert sampled["points"] == exact["points"]  # thresholds never come from the sample
    grid = np.linspace(0.05, 0.95, 19)
    e = np.interp(grid, exact["curve"]["fpr"], exact["curve"]["tpr"])
    s = np.interp(grid, sampled["curve"]["fpr"], sampled["curve"]["tpr"])
    assert np.max(np.abs(e - s)) < 0.05


def test_no_negative_pair_is_an_error_and_an_absent_fpr_is_named():
    f = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="positive and negative pairs"):
        verification(f, f, np.array([1, 1, 1]), np.array([1, 1, 1]), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="FPR 0.05"):
        threshold_at({"points": [{"target_fpr": 1e-3, "threshold": 0.5}]}, 0.05)
