"""Videos in, tracklets searched across cameras: `mgn-search index --videos ... --detections ...` on
generated two-camera videos with ground truth (mgn_tf.video.synthetic), then `query` by a crop and by a
tracklet. The truths: the ground-truth files the generator wrote (tracklets, frames, times), and a
brute-force ranking of tracklet features computed here from the video decoded by OpenCV, the boxes cut
out with numpy, saved as PNG and embedded as image files (the documented equivalence of crops and files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_search import search

cv2 = pytest.importorskip("cv2", reason="the video extra (opencv-python-headless) is not installed")

FPS = 10.0
FRAMES = 16


def gt_tracks(gt_file: str) -> dict[int, list[tuple[int, int, int, int, int]]]:
    """track id -> [(frame, x, y, w, h)] read straight from a MOTChallenge file."""
    tracks: dict[int, list] = {}
    for line in Path(gt_file).read_text().splitlines():
        f, t, x, y, w, h = (int(v) for v in line.split(",")[:6])
        tracks.setdefault(t, []).append((f, x, y, w, h))
    return tracks


def decoded_frames(video: str) -> list[np.ndarray]:
    capture = cv2.VideoCapture(video)
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return frames
        frames.append(bgr[:, :, ::-1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from helpers.exported import make_run_dir

    from mgn_tf.video.synthetic import generate_videos

    root = tmp_path_factory.mktemp("video")
    data = generate_videos(root / "data", cameras=2, people=4, frames=FRAMES, fps=FPS, seed=3)
    run = make_run_dir(root / "model", seed=0)
    index = root / "index"
    done = search("index", "--weights", str(run), "--videos", ",".join(data["videos"]),
                  "--detections", ",".join(data["gt"]), "--index", str(index))  # fmt: skip
    return {"root": root, "data": data, "run": run, "index": index, "indexed": done}


@pytest.fixture(scope="module")
def truth(setup):
    """Per camera and track id, the tracklet feature computed independently (see the module docstring),
    and the embedder."""
    from mgn_tf import inference

    embedder = inference.load(setup["run"])
    crops_dir = setup["root"] / "crops"
    features = {}
    for camera, (video, gt) in enumerate(zip(setup["data"]["videos"], setup["data"]["gt"], strict=True), 1):
        frames = decoded_frames(video)
        for track, boxes in gt_tracks(gt).items():
            files = []
            for f, x, y, w, h in boxes:
                crop = frames[f - 1][y : y + h, x : x + w]
                files.append(crops_dir / f"cam{camera}_{track}_{f}.png")
                files[-1].parent.mkdir(exist_ok=True)
                cv2.imwrite(str(files[-1]), crop[:, :, ::-1])
            box_features = embedder.embed([str(p) for p in files], flip=True, normalize=True).astype(
                np.float64
            )
            mean = box_features.mean(0)
            features[(f"cam{camera}", track)] = mean / np.linalg.norm(mean)
    return features, embedder


def items_of(index: Path) -> list[dict]:
    record = json.loads((index / "index.json").read_text())
    return [
        json.loads(line) for s in record["shards"] for line in (index / s["items"]).read_text().splitlines()
    ]


def test_tracklets_match_the_ground_truth(setup):
    items = {(i["camera"], i["tracklet"]["track_id"]): i for i in items_of(setup["index"])}
    expected = {}
    for camera, gt in enumerate(setup["data"]["gt"], 1):
        for track, boxes in gt_tracks(gt).items():
            expected[(f"cam{camera}", track)] = boxes
    assert set(items) == set(expected)
    for key, boxes in expected.items():
        t = items[key]["tracklet"]
        first, last = boxes[0][0], boxes[-1][0]
        assert (t["first_frame"], t["last_frame"], t["boxes"]) == (first, last, len(boxes))
        assert t["start"] == pytest.approx((first - 1) / FPS) and t["end"] == pytest.approx((last - 1) / FPS)
        sidecar = json.loads(Path(t["boxes_file"]).read_text())
        assert [(b["frame"], b["x"], b["y"], b["w"], b["h"]) for b in sidecar["boxes"]] == boxes
        assert Path(items[key]["path"]).is_file() and Path(t["strip"]).is_file()
    assert "-> 4 tracklet(s)" in setup["indexed"].stdout


def test_a_crop_finds_the_tracklets_in_the_order_of_a_brute_force_ranking(setup, truth):
    features, embedder = truth
    tracks = gt_tracks(setup["data"]["gt"][0])
    person_x = min(tracks)  # cam1's first track
    f, x, y, w, h = tracks[person_x][len(tracks[person_x]) // 2]
    query = setup["root"] / "query.png"
    frame = decoded_frames(setup["data"]["videos"][0])[f - 1]
    cv2.imwrite(str(query), frame[y : y + h, x : x + w, ::-1])
    out = setup["root"] / "out_crop"
    search("query", "--index", str(setup["index"]), "--images", str(query), "--top_k", "8", "--out", str(out))
    q = embedder.embed([str(query)], flip=True, normalize=True)[0].astype(np.float64)
    keys = sorted(features)
    distances = np.array([np.linalg.norm(q - features[k]) for k in keys])
    expected = [keys[i] for i in np.argsort(distances, kind="stable")]
    matches = json.loads((out / "results.json").read_text())["queries"][0]["matches"]
    assert [(m["camera"], m["tracklet"]["track_id"]) for m in matches] == expected
    np.testing.assert_allclose([m["distance"] for m in matches], np.sort(distances), atol=2e-5)
    # where else person X went: the rank its camera-2 tracklet has in the brute-force ranking
    identities = setup["data"]["identities"]
    x_in_cam2 = next(int(t) for t, p in identities["cam2"].items() if p == identities["cam1"][str(person_x)])
    assert [m["tracklet"]["track_id"] for m in matches].index(x_in_cam2) == expected.index(
        ("cam2", x_in_cam2)
    )
    page = (out / "index.html").read_text()
    assert page.count('class="strip"') == 8 and "cam2 #" in page


def test_a_tracklet_query_with_filters_ranks_the_allowed_tracklets(setup, truth):
    features, _ = truth
    query_key = ("cam1", min(gt_tracks(setup["data"]["gt"][0])))
    cam2 = gt_tracks(setup["data"]["gt"][1])
    until = sorted((boxes[0][0] - 1) / FPS for boxes in cam2.values())[1]  # seen by then: 2 or 3 of the 4
    out = setup["root"] / "out_tracklet"
    search("query", "--index", str(setup["index"]), "--query_tracklet", f"{query_key[0]}:{query_key[1]}",
           "--exclude_same_camera", "--time_to", str(until), "--top_k", "8", "--out", str(out))  # fmt: skip
    allowed = [("cam2", t) for t, boxes in cam2.items() if (boxes[0][0] - 1) / FPS <= until]
    distances = np.array([np.linalg.norm(features[query_key] - features[k]) for k in allowed])
    matches = json.loads((out / "results.json").read_text())["queries"][0]["matches"]
    assert [(m["camera"], m["tracklet"]["track_id"]) for m in matches] == [
        allowed[i] for i in np.argsort(distances, kind="stable")
    ]
    assert 0 < len(matches) < 4  # the filter left out some of camera 2's four tracklets


def test_truncated_video_and_a_box_outside_the_frame_are_reported_not_fatal(setup):
    data, root = setup["data"], setup["root"]
    video = Path(data["videos"][0])
    truncated = root / "cut" / "cam1.avi"
    truncated.parent.mkdir()
    truncated.write_bytes(video.read_bytes()[: int(video.stat().st_size * 0.6)])
    frames_left = len(decoded_frames(str(truncated)))
    assert 0 < frames_left < FRAMES
    detections = root / "cut" / "cam1.txt"
    lines = Path(data["gt"][0]).read_text().splitlines()
    lines.insert(3, "2,99,5000,5000,40,100,1,1,1")  # line 4: wholly outside the 320 x 240 frame
    detections.write_text("\n".join(lines) + "\n")
    index = root / "index_cut"
    done = search("index", "--weights", str(setup["run"]), "--videos", str(truncated), "--detections",
                  str(detections), "--index", str(index), "--per_box")  # fmt: skip
    kept = [b for t in gt_tracks(str(detections)).values() for b in t if b[0] <= frames_left and b[1] < 1000]
    assert len(items_of(index)) == len(kept)  # --per_box: one item per box read
    assert f"{detections}:4: 1 box(es) lie wholly outside the frame" in done.stderr
    assert f"the video ends after frame {frames_left}" in done.stderr
    skipped = json.loads((index / "index.json").read_text())["skipped"]
    assert len(skipped) == 2 and all(s["path"] == str(truncated) for s in skipped)


def test_plain_detections_need_a_tracker_or_per_box_in_one_line(setup):
    data = setup["data"]
    mixed = setup["root"] / "mixed.txt"
    lines = Path(data["gt"][0]).read_text().splitlines()
    mixed.write_text("\n".join([lines[0].replace(lines[0].split(",")[1], "-1", 1), *lines[1:]]) + "\n")
    cases = [
        (data["det"][0], "plain detections (no track ids): pass --tracker"),
        (str(mixed), "boxes have track ids and 1 do not"),
    ]
    for detections, words in cases:
        done = search("index", "--weights", str(setup["run"]), "--videos", data["videos"][0], "--detections",
                      detections, "--index", str(setup["root"] / "refused"), check=False)  # fmt: skip
        assert done.returncode == 2 and words in done.stderr, done.stderr[-1500:]
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_frame_folder_reads_like_a_video(setup, truth, tmp_path):
    """The MOTChallenge layout (seq/img1/000001.jpg, seqinfo.ini): frame numbers, frame rate, tracklets."""
    from mgn_tf.video.synthetic import generate_videos
    from mgn_tf.video.tracklets import Options, VideoJob, index_video

    data = generate_videos(
        tmp_path / "seq", cameras=1, people=2, frames=8, fps=7.5, seed=5, frame_folders=True
    )
    items, features, report = index_video(
        truth[1], VideoJob(data["videos"][0], data["gt"][0]), tmp_path / "index", Options(pooling="max")
    )
    tracks = gt_tracks(data["gt"][0])
    assert (
        report.camera == "cam1"
        and report.fps == 7.5
        and report.frames_read == max(b[0] for t in tracks.values() for b in t)
    )
    assert {i.tracklet["track_id"]: i.tracklet["boxes"] for i in items} == {
        t: len(b) for t, b in tracks.items()
    }
    assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)


def test_detection_files_in_every_format_read_the_same_boxes(tmp_path):
    from mgn_tf.video.detections import DetectionError, read_detections

    rows = [(1, 3, 10.5, 20.0, 30.0, 60.0, 0.9), (2, -1, 11.0, 21.0, 31.0, 61.0, 0.8)]
    mot = tmp_path / "det.txt"
    mot.write_text("".join(",".join(f"{v:g}" for v in r) + ",-1,-1,-1\n" for r in rows))
    csv_file = tmp_path / "det.csv"
    csv_file.write_text("frame,track_id,left,top,width,height,score\n" + "".join(
        ",".join(f"{v:g}" for v in r) + "\n" for r in rows
    ))  # fmt: skip
    boxes = [dict(zip(("frame", "id", "x", "y", "w", "h", "conf"), r, strict=True)) for r in rows]
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(boxes))
    per_frame = tmp_path / "frames.json"
    per_frame.write_text(json.dumps([
        {"frame": b["frame"],
         "boxes": [{"id": b["id"], "bbox": [b["x"], b["y"], b["w"], b["h"]], "conf": b["conf"]}]}
        for b in boxes
    ]))  # fmt: skip
    expected = [(1, 3, 10.5, 20.0, 30.0, 60.0, 0.9), (2, -1, 11.0, 21.0, 31.0, 61.0, 0.8)]
    for path in (mot, csv_file, flat, per_frame):
        got = [(b.frame, b.track_id, b.x, b.y, b.w, b.h, b.conf) for b in read_detections(path)]
        assert got == pytest.approx(expected), path
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,0,0,10,20,1\n0,1,0,0,10,20,1\n")
    with pytest.raises(DetectionError, match=f"{bad}:2: frame 0 is not a 1-based frame number"):
        read_detections(bad)
    bad.write_text("1,1,0,0,10\n")
    with pytest.raises(DetectionError, match=f"{bad}:1: a MOTChallenge line needs"):
        read_detections(bad)


def test_a_version_1_image_index_still_loads(tmp_path):
    from mgn_tf.gallery import Gallery
    from mgn_tf.gallery.index import ModelInfo

    rng = np.random.default_rng(0)
    probe = rng.normal(size=(4, 8)).astype(np.float32)
    gallery = Gallery(
        ModelInfo("m", "keras", (96, 32), True, True, probe / np.linalg.norm(probe, axis=1)[:, None])
    )
    features = rng.normal(size=(3, 8)).astype(np.float32)
    gallery.add_features(features, ["/a/0001_c1s1_000001_00.jpg", "/a/b.jpg", "/a/c.jpg"])
    gallery.save(tmp_path / "v1")
    record = json.loads((tmp_path / "v1" / "index.json").read_text())
    record["version"] = 1  # what mgn_tf wrote before tracklets: the same files, images only
    (tmp_path / "v1" / "index.json").write_text(json.dumps(record))
    loaded = Gallery.load(tmp_path / "v1")
    assert [(i.path, i.pid, i.camera, i.tracklet) for i in loaded.items] == [
        ("/a/0001_c1s1_000001_00.jpg", 1, 1, None), ("/a/b.jpg", None, None, None),
        ("/a/c.jpg", None, None, None)
    ]  # fmt: skip
    assert "tracklet" not in (tmp_path / "v1" / "items_00000.jsonl").read_text()


def test_plain_detections_are_linked_by_a_boxmot_tracker_fed_the_embeddings(setup, truth, tmp_path):
    """Without ids, BoT-SORT links the boxes: its tracklets split the detections (the ground-truth boxes
    without ids) among them, each box kept once or counted as not kept, each tracklet mostly one person."""
    pytest.importorskip("boxmot", reason="the tracking extra (boxmot, PyTorch) is not installed")
    from mgn_tf.video.tracklets import Options, VideoJob, index_video

    data = setup["data"]
    items, _, report = index_video(
        truth[1], VideoJob(data["videos"][0], data["det"][0]), tmp_path, Options(tracker="botsort")
    )
    truth_boxes = {
        (f, x, y, w, h): t for t, boxes in gt_tracks(data["gt"][0]).items() for f, x, y, w, h in boxes
    }
    kept = pure = 0
    for item in items:
        boxes = json.loads(Path(item.tracklet["boxes_file"]).read_text())["boxes"]
        ids = [truth_boxes[(b["frame"], b["x"], b["y"], b["w"], b["h"])] for b in boxes]
        assert item.tracklet["boxes"] == len(boxes) and len(set(b["frame"] for b in boxes)) == len(boxes)
        kept += len(boxes)
        pure += max(ids.count(i) for i in set(ids))  # boxes of the person the tracklet mostly follows
    assert kept + report.dropped.get("not kept by the tracker", 0) == len(truth_boxes)
    # every detection in one tracklet at most, and most of a tracklet's boxes one person's; how well the
    # tracker does with and without the embeddings is measured by benchmarks/bench_tracking.py
    assert pure >= 0.75 * kept and len(items) >= len(gt_tracks(data["gt"][0]))


def test_the_hog_detector_finds_the_walkers(truth, tmp_path):
    """--detector hog (OpenCV's built-in people detector): most boxes it finds overlap a walker's
    ground-truth box (IoU >= 0.3), and they are indexed like a detection file's."""
    from mgn_tf.video.synthetic import generate_videos
    from mgn_tf.video.tracklets import Options, VideoJob, index_video

    data = generate_videos(
        tmp_path / "hog", 1, people=3, frames=6, size=(360, 480), seed=1, frame_folders=True
    )
    items, _, report = index_video(
        truth[1], VideoJob(data["videos"][0]), tmp_path / "index", Options(detector="hog", per_box=True)
    )
    walkers: dict[int, list] = {}
    for boxes in gt_tracks(data["gt"][0]).values():
        for f, x, y, w, h in boxes:
            walkers.setdefault(f, []).append((x, y, w, h))

    def iou(a, b):
        w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
        h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
        return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)

    found = [(i.tracklet["first_frame"], i.tracklet["box"]) for i in items]
    hits = [
        max((iou((b["x"], b["y"], b["w"], b["h"]), g) for g in walkers.get(f, [])), default=0)
        for f, b in found
    ]
    assert len(found) >= 2 and sum(h >= 0.3 for h in hits) >= 0.5 * len(found), hits
    assert report.frames_used == 6 and report.embedded == len(items)
