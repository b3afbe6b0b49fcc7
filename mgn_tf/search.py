"""Search your own images:  python -m mgn_tf.search index|query [--flag=value ...]  (or mgn-search)

    python -m mgn_tf.search index --weights runs/market --images /data/cams --index my_index
    python -m mgn_tf.search index --index my_index --images /data/more_cams --add
    python -m mgn_tf.search query --index my_index --images who.jpg,others/ --top_k 10 \\
        --threshold_from runs/market/evaluation/results.json --fpr 1e-3 --out found

index: embeds every image under the --images folders (recursively), image files or list files (.txt,
one path per line) with any model `mgn_tf.inference.load` reads (run dir, checkpoint, SavedModel,
TFLite, ONNX), flip-averaged and L2-normalised by default, and stores them as plain files (see
`mgn_tf.gallery.index`). --add appends to an existing index, with its model (or a --weights that is
the same model in another format). Images that cannot be decoded are skipped, listed and counted.
query: the --top_k nearest gallery images of each query image by Euclidean distance on the stored
features (exact by default; faiss by --backend), optionally re-ranked (--rerank), each flagged "same
person" when its distance is below --threshold (or the one `mgn_tf.evaluate` measured at --fpr on a
labelled split, --threshold_from its results.json). Writes results.json, results.csv, ranked-list
PNGs and index.html (self-contained) to --out.
Exit codes: 0 ok; 2 a bad flag, path, or model (another model than the index's), one line `error: ...`.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags

from mgn_tf import cli
from mgn_tf.errors import ConfigError
from mgn_tf.files import atomic_path, atomic_write_json, image_files, is_image_name

F = flags.FLAGS
VERBS = ("index", "query")
LIST_SUFFIXES = (".txt", ".lst")


def define_flags() -> list[str]:
    from mgn_tf.evaluation.settings import RerankParams
    from mgn_tf.flags import define_runtime_flag
    from mgn_tf.gallery import knn

    before = set(F)
    rr = RerankParams()
    flags.DEFINE_string("index", None, "The gallery index folder (index: written; query: read).")
    flags.DEFINE_list(
        "images", [], "Image files, folders (searched recursively) and list files (.txt: one path per line)."
    )
    flags.DEFINE_string(
        "weights",
        None,
        "index: the model (run dir, checkpoint, *.weights.h5, SavedModel, .tflite, .onnx). With --add or "
        "query: default the index's model; another file must be the same model (its fingerprint is checked).",
    )
    flags.DEFINE_bool(
        "add", False, "index: append the images to an existing index (already indexed ones skipped)."
    )
    flags.DEFINE_bool(
        "flip", True, "index: average each image's features with its mirror image's (paper §4.1)."
    )
    flags.DEFINE_float(
        "lock_timeout",
        600,
        "index: seconds to wait while another process writes the same index (-1: as long as it takes, "
        "0: fail at once).",
    )
    flags.DEFINE_bool("normalize", True, "index: L2-normalise the features (distances are then in [0, 2]).")
    flags.DEFINE_bool("float16", False, "index: store the features as float16 (half the disk and memory).")
    flags.DEFINE_integer("batch_size", 32, "Images per inference batch.")
    define_runtime_flag()
    flags.DEFINE_bool("progress", True, "Show progress bars.")
    flags.DEFINE_integer("top_k", 10, "query: matches per query.")
    flags.DEFINE_enum("backend", "exact", list(knn.BACKENDS), "query: nearest-neighbour search.")
    flags.DEFINE_integer("nlist", None, "query, faiss_ivfpq/ivf: cells (default about sqrt(gallery size)).")
    flags.DEFINE_integer("nprobe", knn.DEFAULT_NPROBE, "query, faiss_ivfpq/ivf: cells visited per query.")
    flags.DEFINE_integer("ef_search", knn.DEFAULT_EF_SEARCH, "query, faiss_hnsw: search breadth.")
    flags.DEFINE_integer(
        "recall_queries",
        100,
        "query, approximate backends: queries also searched exactly to report recall@k.",
    )
    flags.DEFINE_bool(
        "rerank", False, "query: k-reciprocal re-ranking (Zhong et al. 2017) of the candidates."
    )
    flags.DEFINE_integer("k1", rr.k1, "Re-ranking k1.")
    flags.DEFINE_integer("k2", rr.k2, "Re-ranking k2.")
    flags.DEFINE_float("lambda_value", rr.lambda_value, "Re-ranking weight of the original distance.")
    flags.DEFINE_integer("rerank_pool", 100, "query: top candidates per query that re-ranking reorders.")
    flags.DEFINE_float("threshold", None, "query: same person when the distance is below this.")
    flags.DEFINE_string(
        "threshold_from", None, "query: results.json of mgn_tf.evaluate; its threshold at --fpr is used."
    )
    flags.DEFINE_float(
        "fpr", 1e-3, "query: the false-positive rate whose --threshold_from threshold is used."
    )
    flags.DEFINE_string("out", "search_results", "query: output folder.")
    define_video_flags()
    flags.DEFINE_integer("rows_per_figure", 8, "query: queries per ranked-list PNG (0: no PNG).")
    return [name for name in F if name not in before]


def define_video_flags() -> None:
    from mgn_tf.video.tracking import TRACKERS
    from mgn_tf.video.tracklets import POOLINGS

    flags.DEFINE_list(
        "videos", [], "index: video files or frame folders (MOTChallenge img1/ layout), one per camera."
    )
    flags.DEFINE_list(
        "detections",
        [],
        "index: one detection file per --videos entry, in order: MOTChallenge text (frame,id,x,y,w,h,conf; "
        "id -1 for plain detections), CSV with a header, or JSON.",
    )
    flags.DEFINE_enum("detector", None, ["hog"], "index: find people with OpenCV's HOG detector instead.")
    flags.DEFINE_enum(
        "tracker",
        None,
        list(TRACKERS),
        "index: link plain detections into tracklets with this boxmot tracker",
    )
    flags.DEFINE_integer("frame_stride", 1, "index: use every n-th frame of the videos.")
    flags.DEFINE_float("min_confidence", None, "index: drop boxes of lower detection confidence.")
    flags.DEFINE_float("min_box_height", 0, "index: drop boxes lower than this many pixels.")
    flags.DEFINE_float("fps", None, "index: frame rate of the videos (default: the video's own).")
    flags.DEFINE_enum("tracklet_pooling", "avg", list(POOLINGS), "index: how box features make a tracklet's.")
    flags.DEFINE_bool("per_box", False, "index: every box its own gallery item instead of tracklets.")
    flags.DEFINE_string("query_tracklet", None, "query: search with an indexed tracklet, CAMERA:TRACK_ID.")
    flags.DEFINE_list("cameras", [], "query: only matches from these cameras.")
    flags.DEFINE_string("time_from", None, "query: only tracklets seen at or after this time (s or H:MM:SS).")
    flags.DEFINE_string("time_to", None, "query: only tracklets seen at or before this time (s or H:MM:SS).")
    flags.DEFINE_bool("exclude_same_camera", False, "query: no matches from the query's own camera.")


# ------------------------------------------------------------------------------------------ inputs


def collect_images(entries: list[str], flag: str = "--images") -> list[str]:
    """Image paths of files, folders (recursive) and list files; ConfigError naming a bad entry."""
    paths: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            paths += [str(p) for p in image_files(path)]
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            listed = [str(p if p.is_absolute() else path.parent / p) for p in map(Path, filter(None, lines))]
            missing = [p for p in listed if not Path(p).is_file()]
            if missing:
                raise ConfigError(f"{flag}: {path} lists {len(missing)} missing file(s), e.g. {missing[0]}")
            paths += listed
        elif path.is_file() and is_image_name(path.name):
            paths.append(str(path))
        elif path.exists():
            raise ConfigError(f"{flag}: {entry} is not an image file, a folder or a .txt list")
        else:
            raise ConfigError(f"{flag}: {entry} does not exist")
    if not paths:
        raise ConfigError(
            f"{flag}={','.join(entries)}: no image files found" if entries else f"{flag}: not given"
        )
    return paths


def load_embedder(path: str, flag: str = "--weights"):
    from mgn_tf import inference

    if not Path(path).exists():
        raise ConfigError(f"{flag}={path}: does not exist")
    try:
        return inference.load(path, runtime=F.runtime)
    except inference.RuntimeChoiceError as exc:
        raise ConfigError(f"--runtime={F.runtime}: {exc}") from exc
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(f"{flag}={path}: {str(exc).strip().splitlines()[0]}") from exc


def report_skipped(skipped: list[dict], what: str) -> None:
    if skipped:
        print(f"Skipped {len(skipped)} unreadable {what} image(s):", file=sys.stderr)
        for entry in skipped:
            print(f"  {entry['path']}: {entry['error'].splitlines()[0]}", file=sys.stderr)


# ------------------------------------------------------------------------------------------- index


def video_jobs() -> list:
    """One VideoJob per --videos entry, paired in order with --detections; ConfigError when they do not
    pair up or two videos would share a camera name."""
    from mgn_tf.video.tracklets import VideoJob, check_job

    if F.detections and len(F.detections) != len(F.videos):
        raise ConfigError(
            f"--detections: give one file per --videos entry ({len(F.videos)} videos, {len(F.detections)} "
            "detection files)"
        )
    if F.videos and not F.detections and F.detector is None:
        raise ConfigError("--videos: give their --detections files, or --detector=hog")
    for path in [*F.videos, *F.detections]:
        if not Path(path).exists():
            raise ConfigError(f"--{'videos' if path in F.videos else 'detections'}: {path} does not exist")
    jobs = [VideoJob(v, F.detections[i] if F.detections else None) for i, v in enumerate(F.videos)]
    options = video_options() if jobs else None
    for job in jobs:  # before loading the model: a bad detection file fails in a second, not a minute
        check_job(job, options)
    return jobs


def video_options():
    import math

    from mgn_tf.video.tracklets import Options, check_options

    options = Options(
        F.frame_stride, -math.inf if F.min_confidence is None else F.min_confidence, F.min_box_height, F.fps,
        F.tracklet_pooling, F.per_box, F.detector, F.tracker, batch_size=F.batch_size, progress=F.progress,
    )  # fmt: skip
    check_options(options)
    return options


DROPPED = {"confidence": "below --min_confidence", "height": "below --min_box_height",
           "stride": "off --frame_stride", "not kept by the tracker": "not kept by the tracker"}  # fmt: skip


def add_videos(gallery, jobs, directory: Path) -> dict:
    """Indexes the videos' tracklets (or boxes) into `gallery`; prints what each gave and its problems."""
    from mgn_tf.video.frames import camera_name
    from mgn_tf.video.tracklets import index_video

    counts = {"added": 0, "skipped": 0, "already_indexed": 0}
    options = video_options()
    cameras = {item.camera: item.tracklet["video"] for item in gallery.items if item.tracklet}
    known = {item.path for item in gallery.items}
    for job in jobs:  # a camera's files are written under its name: two videos must not share one
        camera, source = camera_name(job.source), str(Path(job.source).resolve())
        if cameras.setdefault(camera, source) != source:
            raise ConfigError(
                f"--videos: {job.source} has the camera name {camera!r} of {cameras[camera]}; rename one"
            )
    for job in jobs:
        items, features, report = index_video(
            gallery.embedder, job, directory, options, gallery.model.flip, gallery.model.normalize
        )
        fresh = [i for i, item in enumerate(items) if item.path not in known]
        if fresh:
            gallery.add_features(features[fresh], [items[i].path for i in fresh], [items[i] for i in fresh])
        known.update(items[i].path for i in fresh)
        dropped = ", ".join(f"{n} {DROPPED[why]}" for why, n in report.dropped.items())
        print(
            f"{report.camera}: {report.embedded} box(es) from {report.frames_used} frame(s) embedded"
            f"{f' (dropped: {dropped})' if dropped else ''} -> {len(items)} "
            f"{'box item' if options.per_box else 'tracklet'}(s), {len(items) - len(fresh)} already indexed",
            flush=True,
        )
        for problem in report.problems:
            print(f"warning: {problem}", file=sys.stderr, flush=True)
        gallery.skipped += [{"path": job.source, "error": problem} for problem in report.problems]
        counts["added"] += len(fresh)
        counts["already_indexed"] += len(items) - len(fresh)
    return counts


def run_index() -> int:
    from mgn_tf.gallery import Gallery, GalleryError
    from mgn_tf.gallery.index import model_info

    if not F.index:
        raise ConfigError("--index: give the index folder to write")
    jobs = video_jobs()
    paths = collect_images(F.images) if F.images or not jobs else []
    directory = Path(F.index)
    exists = (directory / "index.json").exists()
    started = time.perf_counter()
    try:
        if F.add:
            if not exists:
                raise ConfigError(f"--add: {directory} holds no index yet (run index without --add first)")
            gallery = Gallery.load(directory)
            embedder = load_embedder(
                F.weights or gallery.model.source, "--weights" if F.weights else "index model"
            )
            gallery.attach(embedder)
        else:
            if exists:
                raise ConfigError(f"--index={directory}: already holds an index (pass --add to append to it)")
            if not F.weights:
                raise ConfigError("--weights: give the model to index with")
            embedder = load_embedder(F.weights)
            model = model_info(embedder, flip=F.flip, normalize=F.normalize)
            gallery = Gallery(model, "float16" if F.float16 else "float32", embedder)
        counts = {"added": 0, "skipped": 0, "already_indexed": 0}
        if paths:
            counts = gallery.add(paths, F.batch_size, F.progress)
            report_skipped(gallery.skipped[len(gallery.skipped) - counts["skipped"] :], "gallery")
        if jobs:
            for key, value in add_videos(gallery, jobs, directory).items():
                counts[key] += value
        gallery.save(directory, lock_timeout=None if F.lock_timeout < 0 else F.lock_timeout)
    except GalleryError as exc:
        raise ConfigError(f"--index={directory}: {exc}") from exc
    if merged := gallery.merged["others"]:
        print(f"Meanwhile another process added {merged} image(s) to {directory}; they are kept", flush=True)
    if duplicates := gallery.merged["duplicates"]:
        counts["added"] -= duplicates
        counts["already_indexed"] += duplicates
    what = "item(s)" if jobs else "image(s)"
    print(
        f"Indexed {counts['added']} {what} into {directory} ({len(gallery)} in all; {counts['skipped']} "
        f"skipped as unreadable, {counts['already_indexed']} already indexed) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return 0


# ------------------------------------------------------------------------------------------- query


def threshold_from_flags(model) -> tuple[float | None, dict | None]:
    """(threshold, where it came from) from --threshold or --threshold_from/--fpr."""
    import math

    from mgn_tf.evaluation.verification import threshold_at

    if F.threshold is not None and F.threshold_from:
        raise ConfigError("--threshold and --threshold_from: pass at most one of them")
    if F.threshold is not None:
        if not F.threshold > 0:
            raise ConfigError(f"--threshold={F.threshold}: must be > 0")
        return F.threshold, {"value": F.threshold, "source": "--threshold"}
    if not F.threshold_from:
        return None, None
    name = f"--threshold_from={F.threshold_from}"
    try:
        record = json.loads(Path(F.threshold_from).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot be read ({exc})") from exc
    pairs = record.get("verification") if isinstance(record, dict) else None
    if not pairs:
        raise ConfigError(f"{name}: no 'verification' record (a results.json of mgn_tf.evaluate)")
    try:
        value = threshold_at(pairs, F.fpr)
    except ValueError as exc:
        raise ConfigError(f"--fpr={F.fpr:g}: {exc} in {F.threshold_from}") from exc
    if bool(pairs["normalize"]) != model.normalize:
        raise ConfigError(
            f"{name}: measured on {'' if pairs['normalize'] else 'un'}normalised features, the index holds "
            f"{'' if model.normalize else 'un'}normalised ones"
        )
    if pairs["distance"] == "cosine":  # on unit vectors, euclidean = sqrt(2 * cosine distance)
        if not model.normalize:
            raise ConfigError(f"{name}: a cosine-distance threshold; the index ranks by Euclidean distance")
        value = math.sqrt(2 * value)
    settings = record.get("settings", {})
    if settings.get("flip") is not None and bool(settings["flip"]) != model.flip:
        print(f"warning: {name} was measured with flip={settings['flip']}, the index uses flip={model.flip}")
    source = {"value": value, "source": F.threshold_from, "fpr": F.fpr, "evaluated": settings.get("weights")}
    return value, source


def run_query() -> int:
    from mgn_tf.evaluation.settings import RerankParams
    from mgn_tf.gallery import Gallery, GalleryError, knn
    from mgn_tf.gallery.index import parse_name
    from mgn_tf.gallery.knn import import_faiss

    if not F.index:
        raise ConfigError("--index: give the index folder to search")
    for name in ("top_k", "batch_size", "rerank_pool", "nprobe", "ef_search"):
        if F[name].value < 1:
            raise ConfigError(f"--{name}={F[name].value}: must be >= 1")
    paths = collect_images(F.images) if F.images or not F.query_tracklet else []
    try:
        gallery = Gallery.load(F.index)
    except GalleryError as exc:
        raise ConfigError(f"--index={F.index}: {exc}") from exc
    threshold, threshold_info = threshold_from_flags(gallery.model)
    if F.backend != "exact":
        try:
            import_faiss()
        except ImportError as exc:
            raise ConfigError(f"--backend={F.backend}: {exc}") from exc
    features, queries, skipped = np.zeros((0, gallery.dim), np.float32), [], []
    started = time.perf_counter()
    if paths:  # a query by an indexed tracklet needs no model: its feature is in the index
        source = F.weights or gallery.model.source
        embedder = load_embedder(source, "--weights" if F.weights else "index model")
        try:
            gallery.attach(embedder)
        except GalleryError as exc:
            raise ConfigError(f"--weights={source}: {exc}") from exc
        features, queries, skipped = gallery.embed_queries(paths, F.batch_size, F.progress)
        report_skipped(skipped, "query")
        if not queries:
            raise ConfigError(f"--images: none of the {len(paths)} query image(s) can be read")
    embed_seconds = round(time.perf_counter() - started, 3)
    cameras = [parse_name(q).camera for q in queries]
    own: list[int | None] = [None] * len(queries)
    if F.query_tracklet:
        g = find_tracklet(gallery, F.query_tracklet)
        features = np.concatenate([features, knn.gather(gallery.rows, np.array([g]))])
        item = gallery.items[g]
        queries, cameras, own = [*queries, item.path], [*cameras, item.camera], [*own, g]
    keep = keep_mask(gallery, cameras, own)
    rerank = RerankParams(F.k1, F.k2, F.lambda_value) if F.rerank else None
    try:
        result = gallery.search(
            features, F.top_k, backend=F.backend, nprobe=F.nprobe, ef_search=F.ef_search, nlist=F.nlist,
            rerank=rerank, rerank_pool=F.rerank_pool, threshold=threshold, recall_queries=F.recall_queries,
            keep=keep,
        )  # fmt: skip
    except GalleryError as exc:
        raise ConfigError(f"--index={F.index}: {exc}") from exc
    result.seconds["embed_queries"] = embed_seconds
    write_results(Path(F.out), gallery, queries, skipped, result, threshold_info)
    return 0


TRACK_COLUMNS = ("video", "track_id", "first_frame", "last_frame", "start", "end", "boxes", "boxes_file")


def describe(match) -> str:
    """A match in one line: its path, or for a tracklet its camera, track, time span and frames."""
    t = match.tracklet
    if t is None:
        return match.path
    span = f"{t['start']:.1f}-{t['end']:.1f} s, " if t.get("start") is not None else ""
    what = f"track {t['track_id']}" if t.get("track_id") is not None else "box"
    return f"{match.camera} {what}: {span}frames {t['first_frame']}-{t['last_frame']} ({t['boxes']} boxes)"


def find_tracklet(gallery, spec: str) -> int:
    """Gallery position of the tracklet --query_tracklet=CAMERA:TRACK_ID names; ConfigError if none."""
    camera, _, track = spec.rpartition(":")
    if not camera or not track.lstrip("-").isdigit():
        raise ConfigError(f"--query_tracklet={spec}: give CAMERA:TRACK_ID, e.g. cam1:12")
    tracklets = [(g, item) for g, item in enumerate(gallery.items) if item.tracklet is not None]
    for g, item in tracklets:
        if str(item.camera) == camera and item.tracklet.get("track_id") == int(track):
            return g
    cameras = sorted({str(item.camera) for _, item in tracklets})
    raise ConfigError(
        f"--query_tracklet={spec}: no such tracklet in {gallery.root} (its cameras: "
        f"{', '.join(cameras) or 'none'})"
    )


def parse_time(value: str | None, flag: str) -> float | None:
    """Seconds from `12.5`, `1:02` (M:SS) or `1:02:03.5` (H:MM:SS)."""
    if value is None:
        return None
    try:
        parts = [float(p) for p in value.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts):
        raise ConfigError(f"--{flag}={value}: give seconds or H:MM:SS")
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def keep_mask(gallery, cameras: list, own: list[int | None]):
    """bool [Q, N]: the items each query may match under --cameras, --time_from/--time_to,
    --exclude_same_camera, never its own tracklet; None when nothing is filtered."""
    time_from, time_to = parse_time(F.time_from, "time_from"), parse_time(F.time_to, "time_to")
    if not (
        F.cameras
        or F.exclude_same_camera
        or time_from is not None
        or time_to is not None
        or any(g is not None for g in own)
    ):
        return None
    items = gallery.items
    item_cameras = np.array([str(item.camera) for item in items])
    base = np.ones(len(items), bool)
    if F.cameras:
        unknown = sorted(set(F.cameras) - set(item_cameras))
        if unknown:
            raise ConfigError(
                f"--cameras: {', '.join(unknown)} not in the index (its cameras: "
                f"{', '.join(sorted(set(item_cameras)))})"
            )
        base &= np.isin(item_cameras, F.cameras)
    if time_from is not None or time_to is not None:
        low, high = time_from or 0.0, np.inf if time_to is None else time_to
        spans = [(item.tracklet or {}).get("start") for item in items]
        base &= np.array([
            start is not None and item.tracklet["end"] >= low and start <= high
            for start, item in zip(spans, items, strict=True)
        ])  # fmt: skip
    keep = np.repeat(base[None], len(cameras), 0)
    for q, (camera, g) in enumerate(zip(cameras, own, strict=True)):
        if F.exclude_same_camera:
            if camera is None:
                raise ConfigError(
                    "--exclude_same_camera: the camera of a query image is unknown (a Market-1501 style name "
                    "like 0001_c1s1_000001_00.jpg gives it); use --query_tracklet"
                )
            keep[q] &= item_cameras != str(camera)
        if g is not None:
            keep[q, g] = False
    return keep


def write_results(out: Path, gallery, queries, skipped, result, threshold_info) -> None:
    from mgn_tf.evaluation.plots import RankedQuery, plot_ranked_lists
    from mgn_tf.gallery.html import write_page

    out.mkdir(parents=True, exist_ok=True)
    record = {
        "index": str(gallery.root), "gallery_size": len(gallery), "model": gallery.model.to_json(),
        "backend": result.backend, "top_k": F.top_k, "distance": "euclidean", "threshold": threshold_info,
        "rerank": result.rerank, "recall_vs_exact": result.recall_vs_exact, "skipped_queries": skipped,
        "seconds": result.seconds,
        "queries": [
            {"path": q, "matches": [m.to_json() for m in ms]}
            for q, ms in zip(queries, result.matches, strict=True)
        ],
    }  # fmt: skip
    files = {"results": str(atomic_write_json(out / "results.json", record))}
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "query",
                "rank",
                "path",
                "distance",
                "rerank_distance",
                "same_person",
                "pid",
                "camera",
                *TRACK_COLUMNS,
            ]  # fmt: skip
        )
        for query, matches in zip(queries, result.matches, strict=True):
            for m in matches:
                same = "" if m.same_person is None else ("yes" if m.same_person else "no")
                rerank_d = "" if m.rerank_distance is None else f"{m.rerank_distance:.6f}"
                track = [("" if (v := (m.tracklet or {}).get(c)) is None else v) for c in TRACK_COLUMNS]
                writer.writerow(
                    [query, m.rank, m.path, f"{m.distance:.6f}", rerank_d, same, m.pid, m.camera, *track]
                )
    files["csv"] = str(out / "results.csv")
    notes = [f"Gallery {gallery.root} ({len(gallery)} images), model {gallery.model.source}; backend "
             f"{result.backend}; Euclidean distance d on "
             f"{'L2-normalised ' if gallery.model.normalize else ''}"
             "features."]  # fmt: skip
    if threshold_info:
        notes.append(f"Same person when d < {threshold_info['value']:.4f} (from {threshold_info['source']}"
                     + (f" at FPR {threshold_info['fpr']:g})" if "fpr" in threshold_info else ")")
                     )  # fmt: skip
    if result.rerank:
        notes.append(f"Order: k-reciprocal re-ranking of the top {result.rerank['pool']} candidates.")
    if F.rows_per_figure > 0:
        rows = [
            RankedQuery(q, Path(q).name[:18], [m.path for m in ms],
                        [f"{m.rank}: {m.distance:.3f}" for m in ms],
                        [m.same_person for m in ms])
            for q, ms in zip(queries, result.matches, strict=True)
        ]  # fmt: skip
        title = " ".join(notes) + " Frames: green = same person, red = different, grey = no threshold given."
        for n, a in enumerate(range(0, len(rows), F.rows_per_figure), 1):
            name = f"ranked_list_{n:03d}"
            files[name] = str(plot_ranked_lists(rows[a : a + F.rows_per_figure], out / f"{name}.png", title))
    files["html"] = str(write_page(out / "index.html", queries, result.matches, "mgn_tf search", notes))
    for query, matches in list(zip(queries, result.matches, strict=True))[:20]:
        print(f"{query}:")
        for m in matches:
            flag = "" if m.same_person is None else ("  same person" if m.same_person else "  different")
            print(f"  {m.rank:3d}. d={m.distance:.4f}{flag}  {describe(m)}")
    if len(queries) > 20:
        print(f"... {len(queries) - 20} more queries in {files['results']}")
    if result.recall_vs_exact:
        r = result.recall_vs_exact
        print(
            f"recall@{r['k']} of {result.backend} against exact search on {r['queries']} queries: "
            f"{r['recall']:.4f}"
        )
    print(f"Wrote {', '.join(files.values())}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in VERBS:
        return cli.error(f"give a verb: {' or '.join(VERBS)} (e.g. python -m mgn_tf.search index --help)")
    extra = argv[2:]
    if extra:
        F.images = [*F.images, *extra]  # images may also follow the verb
    cli.import_tensorflow()
    try:
        return run_index() if argv[1] == "index" else run_query()
    except ConfigError as exc:
        return cli.error(exc)


def run() -> None:
    cli.run(main, define_flags, __doc__)


if __name__ == "__main__":
    run()
