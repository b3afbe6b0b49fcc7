"""Checks an mgn_tf export made with `--profile boxmot` through boxmot's own ReID backend classes.

Run it with a Python that has boxmot (`pip install mgn_tf[tracking]`, or any environment with boxmot 25),
TensorFlow not needed:

    python benchmarks/check_boxmot.py --exported exported --crops ../shared/data/mini_market1501

The export stored the Keras model's embeddings of its parity images (`<model_name>_boxmot_reference.npz`;
export with --parity_images DIR, and --parity_count N for N crops) twice: of the crops as boxmot makes
them from those files (OpenCV decoding, cv2.resize to uint8, RGB: the pixels boxmot feeds the graph;
written when OpenCV is installed where the export runs), and through mgn_tf's own decoding and resizing
(what `mgn-search` and `mgn-evaluate` compute for the files). This script reads the same files from
--crops (their sha256 must match), as BGR images the way trackers get frames, and embeds them:

  1. through `boxmot.reid.core.ReID(weights=..., device="cpu", half=False)`, the runtime every boxmot
     tracker builds from `reid_weights` when it is given no embeddings: its ONNX backend for
     <model_name>_boxmot.onnx and its OpenVINO backend for <model_name>_boxmot_openvino_model/; the
     crops are laid out in one frame, one box each, and `get_features(boxes, frame)` crops, resizes
     (cv2, INTER_LINEAR), normalises and runs them as a tracker does;
  2. inside a tracker: `BotSort(reid_weights=<onnx>, device="cpu", half=False).update(dets, frame)` on
     that frame, and the features of the tracks it starts.

Each is compared by cosine (boxmot L2-normalises, so scale does not count) with mgn_tf's model on the
same crops, within --min_cosine (default 0.9999): that is the exported graph run by boxmot. The cosine
to mgn_tf's embeddings of the files is reported beside it, and so is the one between the two references
(both Keras): the input pipelines alone. They differ where OpenCV decodes JPEG with libjpeg's accurate
IDCT and TensorFlow's default IDCT differs by a few levels, and where boxmot resizes to uint8 and
mgn_tf to float; no exported graph can change that (boxmot resizes before the graph). Without the crop
reference (export made without OpenCV) the bound applies to the files' embeddings.

Writes <out>.json and <out>.md (default docs/results/boxmot_check). Exit codes: 0 every check within the
bound; 1 one is not; 2 a bad flag, an export or crop folder that cannot be used, or a runtime version that
boxmot would pip-install itself at its first use (onnxruntime==1.24.3 in boxmot 25) (one line
`error: ...`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from importlib import metadata
from math import ceil, sqrt
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402  (benchmarks/results.py: the machine description every result file carries)

DEFAULT_OUT = results.RESULTS_DIR / "boxmot_check"


class UsageError(Exception):
    """A flag or input that cannot be used: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


def parse_args(argv):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exported", required=True, help="The export folder (mgn-export --profile boxmot).")
    parser.add_argument("--crops", required=True, help="The folder the export's --parity_images named.")
    parser.add_argument("--model_name", default="mgn", help="The export's --model_name.")
    parser.add_argument("--min_cosine", type=float, default=0.9999, help="Smallest cosine allowed.")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="Writes <out>.json and <out>.md.")
    parser.add_argument(
        "--notracker", action="store_true", help="Skip the check inside BotSort (only the backends)."
    )
    parser.add_argument("--note", default="", help="A paragraph for the .md: where the model came from.")
    args = parser.parse_args(argv)
    if not 0 < args.min_cosine <= 1:
        raise UsageError(f"--min_cosine={args.min_cosine}: must be in (0, 1]")
    return args


def read_reference(exported: Path, crops: Path, model_name: str):
    """(files, BGR images, {"files": mgn_tf's embeddings of the files, "crops": of boxmot-made crops (if
    stored)}, export info); UsageError naming what is wrong."""
    import cv2

    path = exported / f"{model_name}_boxmot_reference.npz"
    if not exported.is_dir():
        raise UsageError(f"--exported={exported}: not a directory")
    if not path.is_file():
        raise UsageError(
            f"--exported={exported}: no {path.name}; export with --profile boxmot and --parity_images DIR"
        )
    if not crops.is_dir():
        raise UsageError(f"--crops={crops}: not a directory")
    with np.load(path) as data:
        names, digests = [str(n) for n in data["files"]], [str(d) for d in data["sha256"]]
        info = json.loads(str(data["info"]))
        references = {"files": data["embeddings"].astype(np.float64)}
        if "embeddings_opencv" in data:
            references["crops"] = data["embeddings_opencv"].astype(np.float64)
    files, images = [], []
    for name, digest in zip(names, digests, strict=True):
        file = crops / name
        if not file.is_file():
            raise UsageError(f"--crops={crops}: no {name} (the export embedded {len(names)} files under it)")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise UsageError(f"--crops={crops}: {name} is not the image the export embedded (sha256 differs)")
        image = cv2.imread(str(file))  # BGR uint8, as trackers get their frames
        if image is None:
            raise UsageError(f"--crops={crops}: OpenCV cannot decode {name}")
        files.append(name)
        images.append(image)
    return files, images, references, info


def runtime_install_pending(backends: list[str]) -> str | None:
    """What boxmot's backends for `backends` would pip-install at their first use here, or None.

    boxmot 25 checks its runtime pins when a backend loads (onnxruntime==1.24.3 for ONNX on CPU,
    openvino>=2025.2.0) and installs a missing one into the running environment; a check should not
    change the environment it checks, so it stops first and says what to install."""
    from boxmot.reid.backends.dependencies import reid_backend_requirements
    from boxmot.utils.checks import requirement_satisfied

    missing = []
    for backend in backends:
        wanted = reid_backend_requirements(backend, device="cpu")
        if not any(requirement_satisfied(r) for r in wanted):
            missing.append(wanted[0])
    return " ".join(repr(r) for r in missing) or None


def mosaic(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One frame holding every crop in a grid, and their boxes (x1, y1, x2, y2): the crops as a detector
    would hand them to a tracker, several per frame."""
    columns = max(1, ceil(sqrt(len(images))))
    rows = ceil(len(images) / columns)
    cell_h, cell_w = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    frame = np.zeros((rows * cell_h, columns * cell_w, 3), np.uint8)
    boxes = np.zeros((len(images), 4), np.float32)
    for n, image in enumerate(images):
        y, x = (n // columns) * cell_h, (n % columns) * cell_w
        frame[y : y + image.shape[0], x : x + image.shape[1]] = image
        boxes[n] = (x, y, x + image.shape[1], y + image.shape[0])
    return frame, boxes


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def compare(features: np.ndarray, references: dict, rows, bound: float) -> dict:
    """Cosines of `features` to both references (rows `rows` of each); ok: within `bound` of mgn_tf's
    model on the same crops (else, without that reference, of its embeddings of the files)."""
    found = {name: cosines(features, ref[rows]) for name, ref in references.items()}
    gate = found.get("crops", found["files"])
    return {
        "crops": len(gate),
        "min_cosine": float(gate.min()) if len(gate) else None,
        "mean_cosine": float(gate.mean()) if len(gate) else None,
        "compared_with": "same crops" if "crops" in found else "files",
        "min_cosine_to_file_embeddings": float(found["files"].min()) if len(gate) else None,
        "ok": bool(len(gate) and gate.min() >= bound),
    }


def check_backend(kind: str, weights: Path, frame, boxes, references, bound: float) -> dict:
    """Embeds the crops with the backend boxmot's ReID runtime picks for `weights`."""
    from boxmot.reid.core import ReID

    started = time.perf_counter()
    runtime = ReID(weights=weights, device="cpu", half=False)
    backend = runtime.model
    features = backend.get_features(boxes, frame)
    return {
        "check": f"{kind} through boxmot's ReID backend",
        "weights": str(weights),
        "format": runtime.format.id,
        "backend": type(backend).__name__,
        "input_shape": list(backend.input_shape),
        **compare(features, references, slice(None), bound),
        "seconds": round(time.perf_counter() - started, 2),
    }


def check_tracker(weights: Path, frame, boxes, references, bound: float) -> dict:
    """BoT-SORT given only `reid_weights`: it builds the backend itself on its first update and starts one
    track per detection (all confident), each holding the embedding of its detection."""
    from boxmot import BotSort

    started = time.perf_counter()
    tracker = BotSort(reid_weights=weights, device="cpu", half=False)
    detections = np.column_stack([boxes, np.full(len(boxes), 0.9, np.float32), np.zeros(len(boxes))])
    tracker.update(detections.astype(np.float32), frame)
    tracks = [t for t in tracker.active_tracks if t.curr_feat is not None]
    order = [int(t.det_ind) for t in tracks]
    width = references["files"].shape[1]
    features = np.stack([t.curr_feat for t in tracks]) if tracks else np.zeros((0, width))
    result = compare(features, references, order, bound)
    result["ok"] = result["ok"] and len(tracks) == len(boxes)  # one track per confident detection
    backend = tracker._get_live_reid_model()  # built by the tracker on its first update
    return {
        "check": "onnx inside BotSort(reid_weights=...)",
        "weights": str(weights),
        "format": "onnx",
        "backend": type(backend).__name__,
        "input_shape": list(backend.input_shape),
        **result,
        "tracks": len(tracks),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _cos(value) -> str:
    return "-" if value is None else f"{value:.7f}"


def write(out: Path, data: dict) -> None:
    """<out>.json and <out>.md, with the command and machine as every result file of benchmarks/ has."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args, shown = sys.argv[1:], []
    while args:  # the note is printed below the table, not repeated in the command
        arg = args.pop(0)
        if arg == "--note":
            args = args[1:]
        elif not arg.startswith("--note="):
            shown.append(arg)
    command = " ".join(shlex.quote(a) for a in ["benchmarks/check_boxmot.py", *shown])
    run = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": results.machine()}
    for name in ("boxmot", "torch", "openvino", "opencv-python", "opencv-python-headless"):
        try:
            run["machine"]["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps({**run, **data}, indent=2) + "\n")
    m = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    info = data["export_info"]
    same = data["reference"] == "same crops"
    lines = [
        "# mgn_tf's boxmot export through boxmot's own ReID backends",
        "",
        f"Written by `{command}` on {run['date']}: {m['cpu']}, {m['cpus']} CPUs; {versions}. "
        f"Data: [{json_path.name}]({json_path.name}).",
        "",
        f"Model: {info.get('weights')} at {info.get('input_height')}x{info.get('input_width')}, "
        f"flip-averaging and normalisation {'baked in' if info.get('flip_norm') else 'not baked in'}. "
        f"{data['crops']['count']} real crops from {data['crops']['root']}. 'min cosine': to mgn_tf's Keras "
        + (
            "model on the same crops (made from the files as boxmot makes them: OpenCV decoding, "
            "cv2.resize to uint8), stored by the export"
            if same
            else "embeddings of the same files (the export stored no embeddings of boxmot-made crops)"
        )
        + f"; bound {data['min_cosine']}. 'to files': to mgn_tf's embeddings of the files (its own "
        "decoding and resizing), for information.",
        "",
        "| check | boxmot backend | input (H, W) | crops | min cosine | mean cosine | to files (min) "
        "| seconds | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in data["checks"]:
        lines.append(
            f"| {c['check']} | {c['backend']} | {tuple(c['input_shape'])} | {c['crops']} "
            f"| {_cos(c['min_cosine'])} | {_cos(c['mean_cosine'])} "
            f"| {_cos(c['min_cosine_to_file_embeddings'])} "
            f"| {c['seconds']} | {'ok' if c['ok'] else 'FAIL'} |"
        )
    if data["pipelines_min_cosine"] is not None:
        lines += [
            "",
            "Between the two references (both the Keras model; only the input pipelines differ) the "
            f"smallest cosine is {data['pipelines_min_cosine']:.7f}: OpenCV decodes JPEG with libjpeg's "
            "accurate IDCT where TensorFlow's default IDCT differs by up to a few levels, and boxmot "
            "resizes to uint8 where mgn_tf resizes to float. That part is boxmot's preprocessing, before "
            "the exported graph; the graph itself is what 'min cosine' measures.",
        ]
    if data["note"]:
        lines += ["", data["note"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        exported, crops = Path(args.exported), Path(args.crops)
        files, images, references, info = read_reference(exported, crops, args.model_name)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frame, boxes = mosaic(images)
    onnx_path = exported / f"{args.model_name}_boxmot.onnx"
    ir_dir = exported / f"{args.model_name}_boxmot_openvino_model"
    pending = runtime_install_pending(
        [k for k, w in (("onnx", onnx_path), ("openvino", ir_dir)) if w.exists()]
    )
    if pending:
        print(
            f"error: boxmot would pip-install {pending} into this environment at its first use: "
            f"install it first (pip install {pending})",
            file=sys.stderr,
        )
        return 2
    checks = []
    for kind, weights in (("onnx", onnx_path), ("openvino", ir_dir)):
        if weights.exists():
            checks.append(check_backend(kind, weights, frame, boxes, references, args.min_cosine))
    if not checks:
        print(f"error: --exported={exported}: neither {onnx_path.name} nor {ir_dir.name}", file=sys.stderr)
        return 2
    if onnx_path.exists() and not args.notracker:
        checks.append(check_tracker(onnx_path, frame, boxes, references, args.min_cosine))
    pipelines = (
        float(cosines(references["crops"], references["files"]).min()) if "crops" in references else None
    )
    data = {
        "exported": str(exported),
        "export_info": info,
        "crops": {"root": str(crops), "count": len(files), "files": files},
        "min_cosine": args.min_cosine,
        "reference": "same crops" if "crops" in references else "files",
        "pipelines_min_cosine": pipelines,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
        "note": args.note,
    }
    write(Path(args.out), data)
    for c in checks:
        print(
            f"{c['check']:40s} {c['backend']:16s} min cos {_cos(c['min_cosine'])} (to files "
            f"{_cos(c['min_cosine_to_file_embeddings'])})  {'ok' if c['ok'] else 'FAIL'}"
        )
    if pipelines is not None:
        print(f"mgn_tf's model on boxmot-made crops vs on its decoding of the files: min cos {pipelines:.7f}")
    print(f"Written: {Path(args.out).with_suffix('.json')}, {Path(args.out).with_suffix('.md')}")
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
