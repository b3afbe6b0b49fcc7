"""What a config reaches on this machine: one full training run, then the same network untrained.

    python benchmarks/bench_training.py --config synthetic --isa native,avx2   # training_synthetic.*
    python benchmarks/bench_training.py --config cuhk01               # the real CUHK01 images in ../shared
    python benchmarks/bench_training.py --config synthetic --name training_synthetic_no_zero_init \\
        --extra=--nozero_init_residual                                 # an ablation, its own results file
    python benchmarks/bench_training.py --config synthetic --from_run /tmp/fresh/runs/synthetic \\
        --from_log /tmp/fresh/train.log          # a run the README command made (e.g. in a fresh clone)

Runs `python -m mgn_tf.train --flagfile configs/<config>.flags` in a fresh run directory (the command a
user types) once per --isa (native: as this CPU allows; avx2: XLA and oneDNN capped at AVX2, so that an
AVX-512 machine also shows what an AVX2-only CPU trains), then `python -m mgn_tf.evaluate` with the same
flagfile on the network as initialised before its first step (same seed and settings, no training), and
writes rank-1 / rank-5 / mAP of each with and without re-ranking next to the exact chance level, the wall
time of each phase and the training log's step count to docs/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import results  # noqa: E402

from mgn_tf.runtime import ISA_CAPS, isa_environment  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

UNTRAINED = """
import json, sys
from pathlib import Path
import keras
from mgn_tf.model import build_mgn
config = json.loads(Path(sys.argv[1], "config.json").read_text())
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
keras.utils.set_random_seed(config["seed"])
backbone = None if config["backbone_weights"] in ("none", "") else config["backbone_weights"]
model = build_mgn(config["num_classes"], (config["input_height"], config["input_width"]),
                  backbone_weights=backbone, zero_init_residual=config["zero_init_residual"])
model.save_weights(out / "final.weights.h5")
(out / "config.json").write_text(json.dumps(config))
"""


def run(command: list[str], log: Path, env: dict | None = None) -> float:
    """Runs `command` from the repository root with its output in `log`; returns the wall seconds."""
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=REPO, env=env or ENV, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{' '.join(command[:4])} failed (exit {done.returncode}):\n{tail}")
    return time.perf_counter() - started


def summary(evaluation: dict) -> dict:
    """rank-1/5/10, mAP, mINP without and with re-ranking, and chance, from an eval results.json."""
    keys = ("rank1", "rank5", "rank10", "mAP", "mINP")
    out = {name: {k: r.get(k) for k in keys} for name, r in evaluation["results"].items()}
    out["chance"] = {k: evaluation["chance"].get(k) for k in keys if k in evaluation["chance"]}
    return out


def table(rows: dict[str, dict]) -> str:
    lines = ["| model | ranking | rank-1 | rank-5 | mAP | mINP |", "|---|---|---|---|---|---|"]
    for model, ranking in rows.items():
        for name, r in ranking.items():
            cells = [
                f"{100 * r[k]:.1f}%" if r.get(k) is not None else "-"
                for k in ("rank1", "rank5", "mAP", "mINP")
            ]
            lines.append(f"| {model} | {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a configs/<name>.flags file name without .flags")
    parser.add_argument("--name", help="results file name (default training_<config>)")
    parser.add_argument("--run_dir", help="where the run goes (default: a fresh folder under /tmp)")
    parser.add_argument("--extra", action="append", default=[], help="a further training flag (repeatable)")
    parser.add_argument(
        "--from_run",
        help="a finished run of this config's command to report instead of training one here (its "
        "training time read from --from_log, the command's output)",
    )
    parser.add_argument("--from_log", help="with --from_run: the training command's output")
    parser.add_argument(
        "--isa", default="native", help=f"comma-separated instruction-set caps to train under, of {ISA_CAPS}"
    )
    args = parser.parse_args()
    isas = results.parse_isas(parser, args.isa)
    flagfile = REPO / "configs" / f"{args.config}.flags"
    if not flagfile.is_file():
        parser.error(f"--config={args.config}: no {flagfile}")
    name = args.name or f"training_{args.config}"
    base_dir = Path(args.run_dir or f"/tmp/mgn_bench_{name}")
    common = [f"--flagfile={flagfile}", *args.extra, "--noprogress"]

    runs = {}
    if args.from_run:
        if len(isas) != 1 or not args.from_log:
            parser.error("--from_run: give --from_log and one --isa (the one the run was trained under)")
        run_dir = Path(args.from_run)
        took = re.search(r"Training took ([0-9.]+) s", Path(args.from_log).read_text(errors="replace"))
        if took is None or not (run_dir / "eval" / "results.json").is_file():
            parser.error(f"--from_run={run_dir}: no finished, evaluated run (or no training time in the log)")
        runs[isas[0]] = {
            "run_dir": run_dir,
            "training_seconds": float(took[1]),
            "evaluation": json.loads((run_dir / "eval" / "results.json").read_text()),
            "history": (run_dir / "history.csv").read_text().splitlines(),
        }
        isas = []  # nothing to train here
    for isa in isas:
        run_dir = base_dir if isa == isas[0] else Path(f"{base_dir}_{isa}")
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        print(f"training {flagfile.name} ({isa}) into {run_dir} (log: {run_dir}.train.log) ...", flush=True)
        seconds = run(
            [sys.executable, "-m", "mgn_tf.train", *common, f"--run_dir={run_dir}"],
            Path(f"{run_dir}.train.log"),
            isa_environment(isa, ENV),
        )
        runs[isa] = {
            "run_dir": run_dir,
            "seconds": seconds,
            "evaluation": json.loads((run_dir / "eval" / "results.json").read_text()),
            "history": (run_dir / "history.csv").read_text().splitlines(),
        }
    first = next(iter(runs))
    run_dir = runs[first]["run_dir"]
    trained = runs[first]["evaluation"]
    config = json.loads((run_dir / "config.json").read_text())

    untrained_dir = Path(f"{base_dir}_untrained")
    shutil.rmtree(untrained_dir, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-c", UNTRAINED, str(run_dir), str(untrained_dir)], cwd=REPO, env=ENV, check=True
    )
    print("evaluating the untrained network ...", flush=True)
    eval_seconds = run(
        [sys.executable, "-m", "mgn_tf.evaluate", *common, f"--weights={untrained_dir}",
         f"--out_dir={untrained_dir / 'eval'}"],
        Path(f"{untrained_dir}.eval.log"),
    )  # fmt: skip
    untrained = json.loads((untrained_dir / "eval" / "results.json").read_text())

    record = {
        "config": args.config,
        "extra_flags": args.extra,
        "train_command_seconds": {isa: round(r["seconds"], 1) for isa, r in runs.items() if "seconds" in r},
        "training_seconds_from_log": {
            isa: r["training_seconds"] for isa, r in runs.items() if "training_seconds" in r
        },
        "from_run": args.from_run,
        "untrained_eval_seconds": round(eval_seconds, 1),
        "epochs": config["epochs"],
        "steps_per_epoch": config["steps_per_epoch"],
        "batch_size": config["p"] * config["k"],
        "input_size": [config["input_height"], config["input_width"]],
        "num_train_images": config["num_train_images"],
        "num_classes": config["num_classes"],
        "dataset": trained["dataset"],
        "history": {isa: r["history"] for isa, r in runs.items()},
        "trained": {isa: summary(r["evaluation"]) for isa, r in runs.items()},
        "untrained": summary(untrained),
    }
    labels = {"native": "trained", "avx2": "trained, AVX2 cap"}
    rows = {labels[isa]: record["trained"][isa] for isa in runs}
    rows["untrained"] = record["untrained"]
    steps = config["epochs"] * config["steps_per_epoch"]
    minutes = ", ".join(
        f"{r['seconds'] / 60:.1f} min ({isa}) for the whole command (dataset generation or scan, training, "
        "final evaluation)"
        if "seconds" in r
        else f"{r['training_seconds'] / 60:.1f} min of training ({isa}; the command was run as typed, "
        f"e.g. in a fresh clone, and reported from its run directory {args.from_run} and its log)"
        for isa, r in runs.items()
    )
    notes = (
        f"`python -m mgn_tf.train --flagfile configs/{args.config}.flags {' '.join(args.extra)}`: "
        f"{config['epochs']} epochs = {steps} steps of {record['batch_size']} images at "
        f"{config['input_height']}x{config['input_width']} on {config['num_train_images']} training images "
        f"({config['num_classes']} identities), {minutes}. "
        + (
            "'AVX2 cap': the same command with XLA and oneDNN capped at AVX2 (`XLA_FLAGS=--xla_cpu_max_isa="
            "AVX2 ONEDNN_MAX_CPU_ISA=AVX2`), as an AVX2-only CPU computes it. "
            if "avx2" in runs
            else ""
        )
        + f"Evaluated on {trained['dataset']['num_query']} queries / "
        f"{trained['dataset']['num_gallery']} gallery images; 'untrained' is the same network as "
        "initialised before its first step; 'chance' is the exact expectation under a random order."
    )
    path = results.write(name, f"Training run: configs/{args.config}.flags", record, table(rows), notes)
    print(table(rows))
    print(f"Wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
