"""Static int8 on a trained model: the export tool's own parity and accuracy tables, kept as a results file.

    python benchmarks/bench_int8.py --weights runs/cuhk01 --name export_int8_cuhk01 [--out DIR] [-- FLAGS]
    python benchmarks/bench_int8.py --weights runs/cuhk01 --out DIR --reuse   # tables of an export in DIR

Runs `python -m export --weights W --out DIR --nosession_loader_check FLAGS` (calibration on the run's
training images, accuracy on the run's test split unless FLAGS say otherwise), then writes its
export_report.json's parity and accuracy tables, with the exit code, to docs/results/<name>.{json,md}.
The run is trained first (e.g. `python -m mgn_tf.train --flagfile configs/cuhk01.flags`): a fresh network's
rankings say nothing about what quantization costs a trained one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import results  # benchmarks/results.py, beside this file

REPO = Path(__file__).resolve().parents[1]


def parity_rows(report: dict) -> list[str]:
    lines = [
        "| artefact | precision | min cosine to Keras | size MB | img/s (batch 8) | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        size = f"{r['size_bytes'] / 1e6:.1f}" if r.get("size_bytes") else "-"
        speed = f"{r['images_per_s']:.1f}" if r.get("images_per_s") else "-"
        status = "ok" if r["ok"] else "FAIL: " + "; ".join(r["failures"])
        lines.append(
            f"| {r['name']} | {r['precision']} | {r['min_cosine']:.5f} | {size} | {speed} | {status} |"
        )
    return lines


def accuracy_rows(report: dict) -> list[str]:
    checked = report["accuracy"]
    keras = checked["keras"]
    lines = ["| artefact | rank-1 | mAP | ΔmAP (points) | mINP | status |", "|---|---|---|---|---|---|"]
    for r in [keras, *checked["artefacts"]]:
        status = "ok" if r["ok"] else "FAIL: " + "; ".join(r["failures"])
        delta = 100 * (r["mAP"] - keras["mAP"])
        lines.append(
            f"| {r['name']} | {100 * r['rank1']:.2f}% | {100 * r['mAP']:.2f}% | {delta:+.2f} | "
            f"{100 * r['mINP']:.2f}% | {status} |"
        )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="A trained run directory (or checkpoint).")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mgn_bench_int8"), help="Export folder.")
    parser.add_argument("--name", default="export_int8", help="Results file name under docs/results.")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Do not export: tabulate the export_report.json already in --out.",
    )
    parser.add_argument("--note", default="", help="A sentence added to the notes (e.g. what else ran).")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    command = [
        sys.executable, "-m", "export", "--weights", args.weights, "--out", str(args.out),
        "--nosession_loader_check", *extra,
    ]  # fmt: skip
    report_path = args.out / "export_report.json"
    started = time.perf_counter()
    if args.reuse:
        returncode, ran = None, f"The tables are those of the export already in {args.out} (--reuse)."
    else:
        returncode = subprocess.run(command, cwd=REPO).returncode
        minutes = (time.perf_counter() - started) / 60
        ran = f"`{' '.join(command[1:])}` exited {returncode} after {minutes:.1f} min."
    if not report_path.is_file():
        print(f"error: {report_path}: no export report (exit {returncode})", file=sys.stderr)
        return 1
    report = json.loads(report_path.read_text())
    if returncode is None:
        returncode = 0 if report["ok"] else 1
    if report.get("accuracy") is None:
        print(
            "error: the export ran no accuracy check (no labelled split); pass --accuracy_data_dir",
            file=sys.stderr,
        )
        return 1
    split = report["accuracy"]["split"]
    calibration = report.get("calibration") or {}
    table = "\n".join(
        [
            f"Accuracy on {split['dataset']} ({split['num_query']} queries / {split['num_gallery']} gallery "
            f"images, {split['num_query_ids']} identities), flip-averaged, no re-ranking:",
            "",
            *accuracy_rows(report),
            "",
            "Parity with the Keras model on the export's parity batch, and speed at batch 8 on this machine:",
            "",
            *parity_rows(report),
        ]
    )
    notes = (
        f"{ran} Static int8 calibrated "
        f"on {calibration.get('count')} images: {calibration.get('source')}. The gate fails an artefact "
        f"whose mAP is more than {report['accuracy']['max_map_drop']:g} points below the Keras model's."
    )
    fastest = (report.get("deployment") or {}).get("fastest") or {}
    if fastest:  # the export's own pick per precision (ExportReport.deployment), at its parity-batch speeds
        picks = "; ".join(
            f"{kind}: {p['name']} ({p['images_per_s']:.1f} img/s)" for kind, p in fastest.items()
        )
        cpu = report["deployment"]["cpu_class"]
        notes += f"\n\nFastest passing artefact per precision on this CPU ({cpu}): {picks}."
    if args.note:
        notes += f"\n\n{args.note}"
    data = {"exit_code": returncode, "report": report}
    path = results.write(args.name, "Static int8 on a trained model", data, table, notes)
    print(f"Wrote {path} and {path.with_suffix('.md')}")
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
