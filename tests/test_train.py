"""`python -m mgn_tf.train` end to end on small generated data: outputs, flags, bad data, NaN guard,
exact resume after SIGKILL, and two local MultiWorkerMirroredStrategy workers.

Every run is a subprocess at the smallest valid input (96×32) with a handful of steps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ["--input_height=96", "--input_width=32", "--backbone_weights=none", "--p=2", "--k=2", "--verbose=2"]


def make_folder_dataset(root: Path, train_ids: int = 6, per_id: int = 4, test_ids: int = 3) -> Path:
    """`folder` layout: train/<id>/*.png, query/<id>/*_c1_*.png, gallery/<id>/*_c2_*.png; a colour per id."""
    rng = np.random.default_rng(0)

    def person(colour: np.ndarray) -> np.ndarray:
        image = rng.integers(0, 60, (64, 32, 3)).astype(np.int16)
        image[10:60, 6:26] += colour
        return np.clip(image, 0, 255).astype(np.uint8)

    colours = rng.integers(40, 200, (train_ids + test_ids, 3))
    for i in range(train_ids):
        folder = root / "train" / f"person{i:02d}"
        folder.mkdir(parents=True)
        for j in range(per_id):
            Image.fromarray(person(colours[i])).save(folder / f"{j}_c{j % 2 + 1}_.png")
    for i in range(train_ids, train_ids + test_ids):
        for subset, camera in (("query", 1), ("gallery", 2)):
            folder = root / subset / f"person{i:02d}"
            folder.mkdir(parents=True)
            for j in range(2):
                Image.fromarray(person(colours[i])).save(folder / f"{j}_c{camera}_.png")
    return root


def run_train(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mgn_tf.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def read_weights(path: Path) -> list[np.ndarray]:
    arrays = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder_dataset"))


# --- bad flags fail before any work -------------------------------------------------------------------


def test_cli_rejects_bad_flags_before_work(tmp_path, dataset):
    unknown = run_train("--no_such_flag=3", timeout=120)
    assert unknown.returncode == 2 and "no_such_flag" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    missing = run_train("--flagfile=/nonexistent/run.flags", timeout=120)
    assert missing.returncode == 2 and "run.flags" in missing.stderr
    bad = run_train(
        "--dataset=folder", f"--data_dir={tmp_path}", f"--run_dir={tmp_path / 'run'}", "--p=1", timeout=120
    )
    assert bad.returncode == 2
    assert "--p=1" in bad.stderr and ">= 2" in bad.stderr
    assert not (tmp_path / "run").exists(), "nothing may be written for an invalid configuration"
    # an evaluation the dataset cannot give is refused before training, not after it
    no_gt_bbox = run_train(
        "--dataset=folder",
        f"--data_dir={dataset}",
        f"--run_dir={tmp_path / 'mq'}",
        *TINY,
        "--multi_query=avg",
    )
    assert no_gt_bbox.returncode == 2 and "--multi_query=avg" in no_gt_bbox.stderr, no_gt_bbox.stderr[-2000:]
    assert not (tmp_path / "mq" / "checkpoints").exists()


# --- a full small run, with bad files in the data ------------------------------------------------------


@pytest.mark.own_worker_unit(minutes=2)
def test_training_skips_bad_files_and_writes_the_run_directory(dataset, tmp_path):
    data = tmp_path / "data"
    make_folder_dataset(data)
    bad_files = {
        data / "train" / "person00" / "zero_c1_.png": b"",
        data / "train" / "person01" / "text_c1_.png": b"this is not an image",
    }
    for path, content in bad_files.items():
        path.write_bytes(content)
    Image.fromarray(np.full((64, 32), 128, np.uint8), "L").save(data / "train" / "person02" / "gray_c1_.png")
    run = tmp_path / "run"
    result = run_train(
        "--dataset=folder",
        f"--data_dir={data}",
        f"--run_dir={run}",
        *TINY,
        "--epochs=1",
        "--steps_per_epoch=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = (run / "skipped_images.txt").read_text()
    for path in bad_files:
        assert str(path) in skipped
    scan = json.loads((run / "data_scan.json").read_text())
    assert any("gray_c1_" in entry["original"] for entry in scan["converted"])
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 6 and config["input_height"] == 96 and config["num_train_images"] == 25
    assert (run / "final.weights.h5").is_file()
    assert (run / "checkpoints" / "step_00000002" / "trainer.weights.h5").is_file()
    evaluation = json.loads((run / "eval" / "results.json").read_text())
    results = evaluation["results"]["without_rerank"]
    assert 0.0 <= results["rank1"] <= 1.0 and 0.0 <= results["mAP"] <= 1.0
    assert evaluation["dataset"]["num_query"] == 6 and evaluation["dataset"]["num_gallery"] == 6
    assert (run / "eval" / "cmc.png").is_file() and (run / "eval" / "ranked_list.png").is_file()
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:1] == ["epoch"] and len(history) == 2
    assert "softmax" in history[0] and "triplet" in history[0]
    values = dict(zip(history[0].split(","), history[1].split(","), strict=True))
    assert float(values["softmax"]) > 0 and float(values["triplet"]) >= 0  # not the 0.0 of an unused tracker

    # Training's final evaluation is the one `python -m mgn_tf.evaluate` runs: the same flags on the run
    # give the same results.
    command = [sys.executable, "-m", "mgn_tf.evaluate", "--dataset=folder", f"--data_dir={data}",
               f"--run_dir={run}", f"--out_dir={tmp_path / 'later'}", "--noprogress"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    later = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert later.returncode == 0, later.stderr[-3000:]
    again = json.loads((tmp_path / "later" / "results.json").read_text())
    for key in ("results", "chance", "dataset"):
        assert again[key] == evaluation[key], key
    same = {k: v for k, v in evaluation["settings"].items() if k != "save_features"}
    assert {k: again["settings"][k] for k in same} == same

    strict = run_train(
        "--dataset=folder", f"--data_dir={data}", f"--run_dir={tmp_path / 'strict'}", *TINY, "--strict_data"
    )
    assert strict.returncode != 0
    assert "zero_c1_.png" in strict.stderr and "text_c1_.png" in strict.stderr
    assert not (tmp_path / "strict" / "final.weights.h5").exists()


# --- NaN guard -----------------------------------------------------------------------------------------


@pytest.mark.own_worker_unit(minutes=2)
def test_non_finite_loss_stops_with_step_term_and_last_good_checkpoint(dataset, tmp_path):
    run = tmp_path / "nan"
    result = run_train(
        "--dataset=folder",
        f"--data_dir={dataset}",
        f"--run_dir={run}",
        *TINY,
        "--epochs=2",
        "--steps_per_epoch=3",
        "--lr=1e30",
        "--checkpoint_every_steps=1",
        "--scan_data=false",
    )
    assert result.returncode == 3, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if "non-finite loss" in line]
    assert message, result.stderr[-3000:]
    assert "training step" in message[0] and ("loss=nan" in message[0] or "loss=inf" in message[0])
    bad_step = int(message[0].split("training step ")[1].split()[0])
    kept = sorted((run / "checkpoints").glob("step_*"))
    assert not (run / "final.weights.h5").exists()
    if bad_step > 1:
        assert kept and int(kept[-1].name.split("_")[1]) < bad_step
        assert all(
            np.isfinite(a).all() for a in read_weights(kept[-1] / "trainer.weights.h5") if a.dtype.kind == "f"
        )
    else:
        assert not kept


# --- exact resume after SIGKILL ------------------------------------------------------------------------


def _kill_when(
    process: subprocess.Popen, checkpoints: Path, step: int, log: Path, timeout: float = 500
) -> None:
    """SIGKILL the run once the checkpoint of `step` has been published."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (checkpoints / f"step_{step:08d}" / "state.json").is_file():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no checkpoint of step {step} within {timeout} s")


@pytest.mark.own_worker_unit(minutes=5)
def test_killed_and_resumed_twice_ends_with_the_same_weights(dataset, tmp_path):
    """Two SIGKILLs at random steps, two resumes: the run resumes from the right step, leaves no half-written
    checkpoint, and (with --deterministic: oneDNN and grappler off) ends with weights bit-identical to an
    uninterrupted run. The uninterrupted run goes on beside the killed ones (each uses one thread)."""
    common = [
        "--dataset=folder",
        f"--data_dir={dataset}",
        *TINY,
        "--epochs=2",
        "--steps_per_epoch=2",
        "--checkpoint_every_steps=1",
        "--deterministic",
        "--eval_at_end=false",
        "--scan_data=false",
        "--seed=3",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def start(run_dir: Path, log: Path, **extra_env: str) -> subprocess.Popen:
        with open(log, "w") as out:  # a file, not a pipe nobody reads while the run goes on
            return subprocess.Popen(
                [sys.executable, "-m", "mgn_tf.train", *common, f"--run_dir={run_dir}"],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, **extra_env},
            )

    straight = start(tmp_path / "straight", tmp_path / "straight.log")  # as typed: turns oneDNN off itself
    run = tmp_path / "killed"
    rng = np.random.default_rng()
    first, second = sorted(rng.choice(np.arange(1, 4), 2, replace=False))
    try:
        for kill_at in (first, second):  # oneDNN already off: the same run without the restart
            log = tmp_path / f"killed_at_{kill_at}.log"
            _kill_when(start(run, log, TF_ENABLE_ONEDNN_OPTS="0"), run / "checkpoints", int(kill_at), log)
        resumed = run_train(*common, f"--run_dir={run}", env={"TF_ENABLE_ONEDNN_OPTS": "0"})
        straight.wait(timeout=600)
    finally:
        if straight.poll() is None:  # the test failed early: leave no training behind
            straight.kill()
    out = (tmp_path / "straight.log").read_text()
    assert straight.returncode == 0, out[-3000:]
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":  # set before TensorFlow loads: no restart needed
        assert "--deterministic: TF_ENABLE_ONEDNN_OPTS=0 (oneDNN kernels off)" in out
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {second})" in resumed.stdout
    assert not list((run / "checkpoints").glob(".tmp_*")), "no half-written checkpoint is left behind"
    a, b = read_weights(tmp_path / "straight" / "final.weights.h5"), read_weights(run / "final.weights.h5")
    assert len(a) == len(b) > 0
    differ = sum(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    worst = max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))
    assert differ == 0, f"killed at {first} and {second}: {differ}/{len(a)} arrays differ (max {worst:.3g})"


# --- two local workers ---------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.own_worker_unit(minutes=3)
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_two_local_workers_end_with_identical_weights(dataset, tmp_path, deterministic):
    """Two MultiWorkerMirrored workers on 127.0.0.1 train 2 steps together. With --deterministic (grappler
    off) their weights are bit-identical; by default grappler may rewrite the two processes' step
    differently (a kernel can end ulp-level apart), so the default run is compared to float32 rounding."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    run = tmp_path / "multi"
    args = [
        "--dataset=folder",
        f"--data_dir={dataset}",
        f"--run_dir={run}",
        *TINY,
        "--epochs=1",
        "--steps_per_epoch=2",
        "--eval_at_end=false",
        "--scan_data=false",
        *(["--deterministic"] if deterministic else []),
    ]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "mgn_tf.train", *args],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)},
            )
        )
    outputs = [p.communicate(timeout=900) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["num_replicas"] == 2
    chief, other = (
        read_weights(run / "final.weights.h5"),
        read_weights(run / "workers/worker_1/final.weights.h5"),
    )
    assert len(chief) == len(other) > 0
    for x, y in zip(chief, other, strict=True):
        if deterministic:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # Both trained the 2 steps (each keeps its own resume state) and logged a finite loss.
    for folder in (run, run / "workers/worker_1"):
        assert (folder / "checkpoints/step_00000002/state.json").is_file()
        history = (folder / "history.csv").read_text().splitlines()
        loss = float(history[1].split(",")[history[0].split(",").index("loss")])
        assert np.isfinite(loss) and loss > 0
