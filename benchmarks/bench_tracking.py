"""Tracking and cross-camera retrieval with mgn_tf embeddings, on generated videos with ground truth.

    pip install -e ".[tracking]" trackeval     # boxmot (PyTorch) and TrackEval
    python benchmarks/bench_tracking.py --weights runs/synthetic [--people 8 --frames 80]
    # writes docs/results/bench_tracking.{json,md}

Videos: mgn_tf.video.synthetic (drawn pedestrians walking both ways across two cameras, crossing and
occluding each other; every person in both cameras). Detections: the ground-truth boxes jittered by up
to --jitter pixels, a seeded --drop fraction of them removed, ids removed (id -1), so the tracker must
link them. Each boxmot tracker runs through `mgn_tf.video.tracklets.index_video` (what `mgn-search
index --tracker` runs) twice: fed mgn_tf's embeddings of the boxes, and on motion and overlap alone
(`use_embeddings=False`; StrongSORT has no such mode). boxmot's own default re-ID model is not compared:
its weights are downloaded on first use, which these machines cannot do. Metrics: TrackEval's HOTA,
CLEAR (MOTA, ID switches) and Identity (IDF1) per camera, summed over cameras as TrackEval combines
sequences. Retrieval: the ground-truth tracklets of camera 1 queried against those of camera 2 and the
reverse (mgn_tf.evaluation.metrics: rank-1, mAP), with the tracklet features `mgn-search` stores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

RUNS = [
    ("botsort", True),
    ("botsort", False),
    ("deepocsort", True),
    ("deepocsort", False),
    ("strongsort", True),
]


def read_mot(path: str | Path) -> dict[int, list[tuple[int, float, float, float, float]]]:
    """frame -> [(id, x, y, w, h)] of a MOTChallenge file."""
    frames: dict[int, list] = {}
    for line in Path(path).read_text().splitlines():
        f, i, x, y, w, h = (float(v) for v in line.split(",")[:6])
        frames.setdefault(int(f), []).append((int(i), x, y, w, h))
    return frames


def noisy_detections(gt: str, out: Path, jitter: float, drop: float, rng: np.random.Generator) -> Path:
    lines = []
    for frame, boxes in sorted(read_mot(gt).items()):
        for _, x, y, w, h in boxes:
            if rng.random() < drop:
                continue
            dx, dy, dw, dh = rng.uniform(-jitter, jitter, 4)
            lines.append(
                f"{frame},-1,{x + dx:.1f},{y + dy:.1f},{w + dw:.1f},{h + dh:.1f},{rng.uniform(0.6, 1):.3f}"
            )
    out.write_text("\n".join(lines) + "\n")
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [n, 4] and [m, 4] given as x, y, w, h."""
    a, b = a[:, None], b[None]
    w = np.clip(
        np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None
    )
    h = np.clip(
        np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None
    )
    inter = w * h
    return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter)


def trackeval_data(gt: dict, tracked: dict, frames: int) -> dict:
    """TrackEval's per-sequence input: ids renumbered 0..n-1, IoU similarity per frame."""
    gt_ids = {i: n for n, i in enumerate(sorted({b[0] for v in gt.values() for b in v}))}
    tr_ids = {i: n for n, i in enumerate(sorted({b[0] for v in tracked.values() for b in v}))}
    data = {
        "gt_ids": [], "tracker_ids": [], "similarity_scores": [], "num_timesteps": frames,
        "num_gt_ids": len(gt_ids), "num_tracker_ids": len(tr_ids), "num_gt_dets": 0, "num_tracker_dets": 0,
    }  # fmt: skip
    for t in range(1, frames + 1):
        g, r = gt.get(t, []), tracked.get(t, [])
        data["gt_ids"].append(np.array([gt_ids[b[0]] for b in g], int))
        data["tracker_ids"].append(np.array([tr_ids[b[0]] for b in r], int))
        ga, ra = (
            np.array([b[1:] for b in g], float).reshape(-1, 4),
            np.array([b[1:] for b in r], float).reshape(-1, 4),
        )
        data["similarity_scores"].append(iou(ga, ra) if len(ga) and len(ra) else np.zeros((len(ga), len(ra))))
        data["num_gt_dets"] += len(g)
        data["num_tracker_dets"] += len(r)
    return data


def tracked_boxes(items) -> dict[int, list]:
    """frame -> [(track id, x, y, w, h)] from the sidecars index_video wrote (the tracker's output)."""
    frames: dict[int, list] = {}
    for item in items:
        record = json.loads(Path(item.tracklet["boxes_file"]).read_text())
        for b in record["boxes"]:
            frames.setdefault(b["frame"], []).append(
                (item.tracklet["track_id"], b["x"], b["y"], b["w"], b["h"])
            )
    return frames


def evaluate_tracking(sequences: list[dict]) -> dict:
    from trackeval.metrics import CLEAR, HOTA, Identity

    out = {}
    quiet = {"PRINT_CONFIG": False}
    for metric in (HOTA(quiet), CLEAR(quiet), Identity(quiet)):
        with contextlib.redirect_stdout(io.StringIO()):
            per_sequence = {str(i): metric.eval_sequence(d) for i, d in enumerate(sequences)}
            combined = metric.combine_sequences(per_sequence)
        out.update(combined)
    scores = {name: float(np.mean(out[name])) for name in ("HOTA", "DetA", "AssA")}
    return {**scores, "MOTA": float(out["MOTA"]), "IDF1": float(out["IDF1"]), "IDSW": int(out["IDSW"])}


def retrieval(features: dict, identities: dict) -> dict:
    """Cross-camera tracklet retrieval, both directions pooled: rank-1 and mAP."""
    from mgn_tf.evaluation.metrics import evaluate_ranking

    ranks, aps = [], []
    cams = sorted(features)
    for qc in cams:
        for gc in cams:
            if qc == gc:
                continue
            q_ids, qf = zip(*features[qc].items(), strict=True)
            g_ids, gf = zip(*features[gc].items(), strict=True)
            q_pids = np.array([identities[qc][str(t)] for t in q_ids])
            g_pids = np.array([identities[gc][str(t)] for t in g_ids])
            dist = np.linalg.norm(np.array(qf)[:, None] - np.array(gf)[None], axis=2)
            r = evaluate_ranking(dist, q_pids, g_pids, np.zeros(len(q_ids)), np.ones(len(g_ids)))
            ranks.append(r["cmc"][0] * len(q_ids))
            aps.append(r["mAP"] * len(q_ids))
    count = sum(len(features[c]) for c in cams)
    return {"rank1": float(sum(ranks) / count), "mAP": float(sum(aps) / count), "queries": count,
            "chance_rank1": 1 / len(features[cams[1]])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="any model mgn_tf.inference.load reads")
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--jitter", type=float, default=3.0, help="pixels of detection noise")
    parser.add_argument("--drop", type=float, default=0.1, help="fraction of boxes the detector misses")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="bench_tracking")
    args = parser.parse_args()

    from mgn_tf import inference
    from mgn_tf.video.synthetic import generate_videos
    from mgn_tf.video.tracklets import Options, VideoJob, index_video

    embedder = inference.load(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate_videos(root / "videos", 2, args.people, args.frames, fps=args.fps, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        dets = [
            noisy_detections(g, root / f"det{i}.txt", args.jitter, args.drop, rng)
            for i, g in enumerate(data["gt"])
        ]
        rows = []
        for tracker, appearance in RUNS:
            started = time.perf_counter()
            sequences = []
            for i, video in enumerate(data["videos"]):
                options = Options(tracker=tracker, appearance=appearance)
                items, _, _ = index_video(
                    embedder, VideoJob(video, str(dets[i])), root / f"idx_{tracker}_{appearance}", options
                )
                sequences.append(trackeval_data(read_mot(data["gt"][i]), tracked_boxes(items), args.frames))
            scores = evaluate_tracking(sequences)
            rows.append({"tracker": tracker, "appearance": "mgn_tf" if appearance else "none", **scores,
                         "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
            print(rows[-1], flush=True)
        features = {}
        for i, video in enumerate(data["videos"]):
            items, feats, _ = index_video(embedder, VideoJob(video, data["gt"][i]), root / "idx_gt")
            features[f"cam{i + 1}"] = {it.tracklet["track_id"]: f for it, f in zip(items, feats, strict=True)}
        cross = retrieval(features, data["identities"])
        print(cross, flush=True)
    table = [
        "| tracker | appearance | HOTA | DetA | AssA | MOTA | IDF1 | ID switches | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{100 * r[m]:.1f}" for m in ("HOTA", "DetA", "AssA", "MOTA", "IDF1")]
        table.append(
            f"| {r['tracker']} | {r['appearance']} | {' | '.join(cells)} | {r['IDSW']} | {r['seconds']} |"
        )
    table += [
        "",
        "| cross-camera tracklet retrieval | rank-1 | mAP | queries | chance rank-1 |",
        "|---|---|---|---|---|",
        f"| ground-truth tracklets, {args.weights} | {100 * cross['rank1']:.1f}% | {100 * cross['mAP']:.1f}% "
        f"| {cross['queries']} | {100 * cross['chance_rank1']:.1f}% |",
    ]
    notes = (
        f"Two generated cameras ({args.people} people each, {args.frames} frames at {args.fps:g} fps, seed "
        f"{args.seed}); detections = ground truth jittered by up to {args.jitter:g} px with "
        f"{100 * args.drop:g}% dropped, no ids. Model: {args.weights}. Metrics: TrackEval (HOTA, DetA, AssA "
        "averaged over its IoU thresholds; MOTA, ID switches and IDF1 at IoU 0.5), both cameras combined. "
        "'none' = the same tracker with use_embeddings=False (motion and overlap only). boxmot's own re-ID "
        "models are not compared: their weights download on first use, which these machines cannot do."
    )
    with_, without = ({r["tracker"]: r for r in rows if r["appearance"] == a} for a in ("mgn_tf", "none"))
    deltas = ", ".join(
        f"{t} {100 * (with_[t]['HOTA'] - without[t]['HOTA']):+.1f} HOTA / "
        f"{100 * (with_[t]['IDF1'] - without[t]['IDF1']):+.1f} IDF1"
        for t in with_
        if t in without
    )
    notes += f"\n\nmgn_tf embeddings vs none (points): {deltas}."
    payload = {"runs": rows, "retrieval": cross, "settings": vars(args)}
    print(
        results.write(
            args.name,
            "Tracking with mgn_tf embeddings (boxmot trackers, generated videos)",
            payload,
            "\n".join(table),
            notes,
        )
    )


if __name__ == "__main__":
    main()
