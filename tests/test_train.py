"""`python -m mgn_tf.train` end to end on small generated data: outputs, flags, bad data, NaN guard,
exact resume after SIGKILL, and two local MultiWorkerMirroredStrategy workers.

Every run is a subprocess at the smallest valid input (96×32) with a handful of steps.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers.folder_data import make_folder_dataset
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ["--input_height=96", "--input_width=32", "--backbone_weights=none", "--p=2", "--k=2", "--verbose=2"]


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
    return list(_named_weights(path).values())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder_dataset"))


# --- bad flags fail before any work -------------------------------------------------------------------


def test_cli_rejects_bad_flags_before_work(tmp_path, dataset):
    bare = subprocess.run(
        [sys.executable, "-m", "mgn_tf.train"], cwd=REPO, capture_output=True, text=True, timeout=120
    )  # the user's environment as it is: no TF_CPP_MIN_LOG_LEVEL
    assert bare.returncode == 2 and bare.stderr.startswith("error: no flags given")
    assert "configs/synthetic.flags" in bare.stderr and not bare.stdout
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
    assert strict.returncode == 4
    assert "zero_c1_.png" in strict.stderr and "text_c1_.png" in strict.stderr
    assert not (tmp_path / "strict" / "final.weights.h5").exists()


# --- a file that goes bad after the scan ----------------------------------------------------------------


def _optimizer_iterations(checkpoint: Path) -> int:
    with h5py.File(checkpoint / "trainer.weights.h5", "r") as f:
        return int(f["optimizer/vars/0"][()])  # the optimizer's first variable is its iteration count


@pytest.mark.own_worker_unit(minutes=4)
def test_a_file_gone_bad_after_the_scan_is_replaced_and_the_run_keeps_its_steps(tmp_path):
    """Three epochs, a training image emptied as soon as the scan has passed it: every step and epoch
    boundary of a clean run is kept, each of its samples is replaced by another image of its identity and
    listed; with --on_bad_file=stop the run exits 4 naming it."""
    data = make_folder_dataset(tmp_path / "data")
    clean_data = make_folder_dataset(tmp_path / "clean_data")
    target = data / "train" / "person01" / "0_c1_.png"
    common = [*TINY, "--epochs=3", "--eval_at_end=false", "--checkpoint_every_steps=0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("bad", "clean")}  # noqa: SIM115
    try:
        runs = {
            name: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mgn_tf.train",
                    "--dataset=folder",
                    f"--data_dir={folder}",
                    f"--run_dir={tmp_path / name}",
                    *common,
                ],
                cwd=REPO,
                stdout=logs[name],
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
            for name, folder in (("bad", data), ("clean", clean_data))
        }
        deadline = time.time() + 300
        while not (tmp_path / "bad" / "data_scan.json").is_file():  # the scan has read every file
            assert runs["bad"].poll() is None and time.time() < deadline, (tmp_path / "bad.log").read_text()
            time.sleep(0.02)
        target.write_bytes(b"")
        for process in runs.values():
            process.wait(timeout=900)
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
        for log in logs.values():
            log.close()
    out = {name: (tmp_path / f"{name}.log").read_text() for name in runs}
    for name, process in runs.items():
        assert process.returncode == 0, out[name][-3000:]
    scan = json.loads((tmp_path / "bad" / "data_scan.json").read_text())
    assert scan["num_bad"] == 0 and any(item[0] == str(target) for item in scan["items"])  # read fine
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    steps = config["steps_per_epoch"]
    assert config["num_train_images"] == 24 and steps == 6  # 12 K-groups of 2, P=2: each image every epoch
    record = json.loads((tmp_path / "bad" / "replaced_images.json").read_text())
    replaced = record["replacements"]
    assert record["count"] == len(replaced) >= 3 and record["per_file"] == {str(target): len(replaced)}
    assert {(r["step"] - 1) // steps for r in replaced} == set(range(3))  # in every epoch
    for r in replaced:
        assert Path(r["replacement"]).parent == target.parent and r["replacement"] != str(target)
    assert out["bad"].count(f"warning: training image {target} could not be read") == len(replaced)
    assert not (tmp_path / "clean" / "replaced_images.json").exists()
    for name in runs:  # same steps, same epoch boundaries, same position of the learning-rate schedule
        history = (tmp_path / name / "history.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in history[1:]] == [str(e) for e in range(3)]
        published = sorted(p.name for p in (tmp_path / name / "checkpoints").glob("step_*"))
        assert published == ["step_00000012", "step_00000018"]
        assert _optimizer_iterations(tmp_path / name / "checkpoints" / "step_00000018") == 18

    stop = run_train("--dataset=folder", f"--data_dir={data}", f"--run_dir={tmp_path / 'stop'}", *TINY,
                     "--epochs=1", "--scan_data=false", "--on_bad_file=stop")  # fmt: skip
    assert stop.returncode == 4, stop.stderr[-3000:]
    errors = [line for line in stop.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(target) in errors[0] and "--on_bad_file=stop" in errors[0]
    assert "Traceback" not in stop.stderr and not (tmp_path / "stop" / "final.weights.h5").exists()


# --- resume validation -----------------------------------------------------------------------------------


@pytest.mark.own_worker_unit(minutes=2)
def test_resume_refuses_other_settings_and_lets_epochs_grow(dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    run = tmp_path / "run"
    common = ["--dataset=folder", f"--data_dir={data}", f"--run_dir={run}", *TINY, "--steps_per_epoch=2",
              "--eval_at_end=false", "--scan_data=false"]  # fmt: skip
    first = run_train(*common, "--epochs=2", "--max_steps=2")  # stops after epoch 1; `longer` goes on
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Training stopped by --max_steps=2 after step 2" in first.stdout
    config_before = (run / "config.json").read_text()

    changed = run_train(*common, "--epochs=1", "--margin=0.5", "--lr=0.02", "--noflip")
    assert changed.returncode == 2, changed.stderr[-3000:]
    for named in ("--margin: 1.2 -> 0.5", "--lr: 0.01 -> 0.02", "--flip: True -> False"):
        assert named in changed.stderr
    assert "Traceback" not in changed.stderr
    (data / "train" / "person03" / "1_c2_.png").unlink()
    fewer = run_train(*common, "--epochs=1")
    assert fewer.returncode == 2 and "training images (num_train_images): 24 -> 23" in fewer.stderr
    assert (run / "config.json").read_text() == config_before  # refused runs leave the record alone
    (data / "train" / "person03" / "1_c2_.png").write_bytes(
        (dataset / "train" / "person03" / "1_c2_.png").read_bytes()
    )

    longer = run_train(*common, "--epochs=2")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "(step 2)" in longer.stdout and (run / "checkpoints" / "step_00000004").is_dir()
    shorter = run_train(*common, "--epochs=1")
    assert shorter.returncode == 2 and "--epochs=1" in shorter.stderr and "4 steps" in shorter.stderr


# --- NaN guard -----------------------------------------------------------------------------------------


@pytest.mark.own_worker_unit(minutes=2)
def test_non_finite_loss_stops_and_its_printed_command_resumes_with_a_lower_lr(dataset, tmp_path):
    run = tmp_path / "nan"
    args = [
        "--dataset=folder",
        f"--data_dir={dataset}",
        f"--run_dir={run}",
        *TINY,
        "--epochs=2",
        "--steps_per_epoch=3",
        "--lr=1e30",
        "--checkpoint_every_steps=1",
        "--scan_data=false",
        "--eval_at_end=false",
    ]
    result = run_train(*args)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if "non-finite loss" in line]
    assert message, result.stderr[-3000:]
    assert "training step" in message[0] and ("loss=nan" in message[0] or "loss=inf" in message[0])
    bad_step = int(message[0].split("training step ")[1].split()[0])
    assert not (run / "final.weights.h5").exists()
    kept = sorted((run / "checkpoints").glob("step_*"))
    # The loss of the bad step came from the weights after the step before it: no checkpoint of those.
    assert all(int(k.name.split("_")[1]) < bad_step - 1 for k in kept)
    for folder in kept:
        weights = read_weights(folder / "trainer.weights.h5")
        assert all(np.isfinite(a).all() for a in weights if a.dtype.kind == "f")
    if bad_step > 1:
        assert (run / "checkpoints" / "rejected" / f"step_{bad_step - 1:08d}").is_dir()
    lines = result.stderr.splitlines()
    command = shlex.split(lines[lines.index(next(x for x in lines if x.startswith("To resume"))) + 1])
    assert command[:3] == ["python", "-m", "mgn_tf.train"] and "--lr=1e+29" in command
    assert "--resume_override=lr" in command
    resumed = subprocess.run(
        [sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    # 1e29 may diverge again (exit 3): what matters is that the advice is accepted and applied.
    assert resumed.returncode in (0, 3), resumed.stderr[-3000:]
    start = int(kept[-1].name.split("_")[1]) if kept else 0
    assert f"lr 1e+30 -> 1e+29 from step {start}" in resumed.stdout
    overrides = json.loads((run / "config.json").read_text())["resume_overrides"]
    assert overrides == [{"step": start, "setting": "lr", "from": 1e30, "to": 1e29}]


# --- exact resume after SIGKILL ------------------------------------------------------------------------


def _kill_when(
    process: subprocess.Popen, checkpoints: Path, step: int, log: Path, writing: bool = False,
    timeout: float = 500,
) -> None:  # fmt: skip
    """SIGKILL the run once the checkpoint of `step` has been published or, with `writing`, while it is
    being written (its temporary folder exists)."""
    name = f"step_{step:08d}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if writing:
            hit = any(checkpoints.glob(f".tmp_{name}_*")) if checkpoints.is_dir() else False
        else:
            hit = (checkpoints / name / "state.json").is_file()
        if hit:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {log.read_text()[-2000:]}")
        time.sleep(0.005 if writing else 0.2)
    process.kill()
    raise AssertionError(f"no checkpoint of step {step} within {timeout} s")


@pytest.mark.own_worker_unit(minutes=5)
def test_killed_and_resumed_twice_ends_with_the_same_weights(dataset, tmp_path):
    """Two SIGKILLs, two resumes: the first while a checkpoint is being written, the second after a later
    one is published; the learning rate decays after epoch 1, so a resume crosses the decay. The run
    resumes from the right step, leaves no half-written checkpoint, and (with --deterministic: oneDNN and
    grappler off) ends with weights bit-identical to an uninterrupted run. The uninterrupted run goes on
    beside the killed ones (each uses one thread)."""
    common = [
        "--dataset=folder",
        f"--data_dir={dataset}",
        *TINY,
        "--epochs=2",
        "--steps_per_epoch=2",
        "--checkpoint_every_steps=1",
        "--lr_decay_epochs=1",
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
        for kill_at, writing in ((first, True), (second, False)):  # oneDNN already off: no restart
            log = tmp_path / f"killed_at_{kill_at}.log"
            process = start(run, log, TF_ENABLE_ONEDNN_OPTS="0")
            _kill_when(process, run / "checkpoints", int(kill_at), log, writing=writing)
            if writing:  # the half-written checkpoint is not resumed from
                done = [int(c.parent.name[5:]) for c in (run / "checkpoints").glob("step_*/state.json")]
                assert max(done, default=0) <= kill_at
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


def test_a_second_trainer_of_a_run_dir_is_refused_and_a_killed_one_resumes_at_once(dataset, tmp_path):
    """One process per run directory: a second mgn-train there exits 2 naming the first (pid, host, start
    time); after the first is SIGKILLed, the next one takes the directory at once and resumes."""
    run = tmp_path / "run"
    common = ["--dataset=folder", f"--data_dir={dataset}", f"--run_dir={run}", *TINY, "--epochs=50",
              "--steps_per_epoch=1", "--eval_at_end=false", "--scan_data=false"]  # fmt: skip
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "mgn_tf.train", *common], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
    try:
        from mgn_tf.locks import holder

        while (holder(run) or {}).get("pid") != first.pid:  # it holds the folder
            assert first.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        second = run_train(*common)  # while the first builds its model and trains
        while not (run / "checkpoints" / "step_00000001" / "state.json").is_file():
            assert first.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert second.returncode == 2 and len(errors) == 1, second.stderr[-3000:]
    assert f"--run_dir={run} is in use by pid {first.pid} on {socket.gethostname()} since " in errors[0]
    assert "python -m mgn_tf.train" in errors[0] and "Traceback" not in second.stderr
    done = max(int(c.parent.name[5:]) for c in (run / "checkpoints").glob("step_*/state.json"))
    resumed = run_train(*common, f"--max_steps={done}")  # takes the folder, restores, trains no step
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {done})" in resumed.stdout and f"the run is at step {done} already" in resumed.stdout


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


# --- distribution and mixed precision through the engine -------------------------------------------------


def _named_weights(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: arrays.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


@pytest.mark.own_worker_unit(minutes=4)
def test_two_cpu_replicas_with_sync_bn_end_like_one_device(dataset, tmp_path):
    """One training step of --cpu_replicas=2 --sync_bn through the real pipeline and engine ends like the
    same step on one device: every BatchNorm's moving mean and variance (the forward pass, normalised with
    the statistics of the whole global batch) and the eight classifiers (a gradient step through the
    softmax heads) agree to float32 rounding. Without --sync_bn the moving variances are the mean of the
    two halves' variances instead, which the same check sees.
    The other gradients pass through discrete choices, the max-pooling position among ties (the generated
    images have flat regions) and the hardest positive and negative of the triplet loss, which float32
    rounding in another summation order can flip; tests/test_trainer.py compares the whole step in
    float64, where it cannot."""
    common = ["--dataset=folder", f"--data_dir={dataset}", *TINY, "--p=4", "--epochs=1",
              "--steps_per_epoch=1", "--eval_at_end=false", "--scan_data=false", "--seed=5"]  # fmt: skip
    runs = {
        "one": ["--strategy=one_device", "--sync_bn"],
        "two": ["--cpu_replicas=2", "--sync_bn"],
        "two_unsynced": ["--cpu_replicas=2"],
    }
    weights = {}
    for name, extra in runs.items():
        result = run_train(*common, f"--run_dir={tmp_path / name}", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        weights[name] = _named_weights(tmp_path / name / "final.weights.h5")
    assert json.loads((tmp_path / "two" / "config.json").read_text())["num_replicas"] == 2
    one, two, unsynced = weights["one"], weights["two"], weights["two_unsynced"]
    assert one.keys() == two.keys() == unsynced.keys()

    def relative(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-3))

    # BatchNormalization variables: gamma, beta, moving_mean, moving_variance (vars/0..3)
    statistics = [k for k in one if "batch_normalization" in k and k.endswith(("vars/2", "vars/3"))]
    classifiers = [k for k in one if "/dense" in k]
    assert len(statistics) == 2 * 111 and len(classifiers) == 8
    for key in statistics + classifiers:
        assert relative(one[key], two[key]) < 2e-4, f"{key}: {relative(one[key], two[key]):.2e}"
    variances = [k for k in statistics if k.endswith("vars/3")]
    assert max(relative(one[k], unsynced[k]) for k in variances) > 1e-2  # the check can fail


@pytest.mark.own_worker_unit(minutes=3)
def test_mixed_precision_runs_on_cpu_and_its_checkpoints_resume(dataset, tmp_path):
    """Loss scaling skips the steps whose fp16 gradients overflow (the optimizer's iteration count does
    not move then); the run's position still counts every batch, so checkpoints name the step reached and
    a resume continues there."""
    run = tmp_path / "mixed"
    common = ["--dataset=folder", f"--data_dir={dataset}", f"--run_dir={run}", *TINY, "--mixed_precision",
              "--steps_per_epoch=2", "--checkpoint_every_steps=1", "--eval_at_end=false",
              "--scan_data=false"]  # fmt: skip
    first = run_train(*common, "--epochs=2", "--max_steps=2")  # stops after epoch 1; `longer` goes on
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Training stopped by --max_steps=2 after step 2" in first.stdout
    assert (run / "checkpoints" / "step_00000002").is_dir()
    resumed = run_train(*common, "--epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 2)" in resumed.stdout
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000004"]
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3
    loss = [float(row.split(",")[history[0].split(",").index("loss")]) for row in history[1:]]
    assert all(np.isfinite(loss))
    weights = read_weights(run / "final.weights.h5")
    assert all(np.isfinite(w).all() for w in weights if w.dtype.kind == "f")
