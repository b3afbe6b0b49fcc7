"""Training features through the engine and `python -m mgn_tf.train` on small generated data: evaluation
during training with the best model kept (and exact after a kill and resume), fine-tuning from a trained
run with frozen backbone epochs, several datasets in one run, --combine_all, user callbacks and the
*_strong.flags configs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers.folder_data import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = ["--input_height=96", "--input_width=32", "--backbone_weights=none", "--p=2", "--k=2", "--verbose=2"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("folder_dataset"), train_ids=8, per_id=4)


def run_train(*args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mgn_tf.train", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**ENV, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def history(run: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((run / "history.csv").read_text())))


def tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    """{step: value} of one scalar, read from the event files Keras's TensorBoard wrote in `folder`."""
    import tensorflow as tf

    values = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def named_weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


# --- evaluation during training ------------------------------------------------------------------------


@pytest.mark.own_worker_unit(minutes=3)
def test_evaluation_during_training_keeps_the_best_model_and_resumes_exactly(dataset, tmp_path):
    """Three epochs with --eval_every_epochs 1 on 2 held-out identities: val rank-1/mAP per epoch in
    history.csv and TensorBoard, best.weights.h5 re-evaluated equals the best recorded mAP. A run killed
    after its epoch-2 checkpoint and resumed ends with the same record and a bit-identical best model."""
    common = [
        "--dataset=folder", f"--data_dir={dataset}", *TINY, "--epochs=3", "--steps_per_epoch=2",
        "--eval_every_epochs=1", "--val_identities=2", "--eval_at_end=false", "--scan_data=false",
        "--deterministic", "--seed=5", "--lr=0.05",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    with open(tmp_path / "straight.log", "w") as log:  # beside the killed run, one thread each
        uninterrupted = subprocess.Popen(
            [sys.executable, "-m", "mgn_tf.train", *common, f"--run_dir={straight}"], cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, env={**ENV, "TF_ENABLE_ONEDNN_OPTS": "0"},
        )  # fmt: skip
    killed = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mgn_tf.train", *common, f"--run_dir={killed}"], cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, env={**ENV, "TF_ENABLE_ONEDNN_OPTS": "0"},
        )  # fmt: skip
    try:
        deadline = time.time() + 500
        while not (killed / "checkpoints" / "step_00000004" / "state.json").is_file():
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no epoch-2 checkpoint"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (killed / "final.weights.h5").exists()
        resumed = run_train(*common, f"--run_dir={killed}", TF_ENABLE_ONEDNN_OPTS="0")
        assert "(step 4)" in resumed.stdout
        uninterrupted.wait(timeout=600)
    finally:
        for p in (process, uninterrupted):
            if p.poll() is None:
                p.kill()
    out = (tmp_path / "straight.log").read_text()
    assert uninterrupted.returncode == 0, out[-3000:]
    assert "Validation: 2 training identities held out" in out

    rows = history(straight)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    val_map = [float(r["val_mAP"]) for r in rows]
    assert all(0 < m <= 1 for m in val_map) and all(0 <= float(r["val_rank1"]) <= 1 for r in rows)
    # Keras's TensorBoard writes "val_" logs to its validation writer, the prefix taken off
    scalars = tensorboard_scalars(straight / "logs" / "validation", "epoch_mAP")
    assert scalars == pytest.approx(dict(enumerate(val_map)), rel=1e-6)
    record = json.loads((straight / "validation.json").read_text())
    assert [e["epoch"] for e in record["evaluations"]] == [1, 2, 3]
    assert [e["mAP"] for e in record["evaluations"]] == pytest.approx(val_map)
    best = json.loads((straight / "best.json").read_text())
    assert best["mAP"] == pytest.approx(max(val_map)) and best["epoch"] == 1 + int(np.argmax(val_map))

    # best.weights.h5, loaded as a user would and evaluated on the same held-out identities
    from mgn_tf.data.datasets import load_dataset
    from mgn_tf.data.splits import hold_out
    from mgn_tf.evaluation.pipeline import evaluate
    from mgn_tf.evaluation.settings import EvalSettings
    from mgn_tf.inference import load

    _, validation = hold_out(load_dataset("folder", dataset), 2, seed=5)
    settings = EvalSettings(rerank=None, num_ranked_queries=0)
    again = evaluate(load(straight / "best.weights.h5"), validation, settings, tmp_path / "again")
    assert again["results"]["without_rerank"]["mAP"] == pytest.approx(best["mAP"], abs=1e-6)

    # killed and resumed: the same record, the same best model
    assert [r["val_mAP"] for r in history(killed)] == [r["val_mAP"] for r in rows]
    assert json.loads((killed / "validation.json").read_text())["evaluations"] == [
        {**e, "results": e["results"].replace(str(straight), str(killed))} for e in record["evaluations"]
    ]
    assert json.loads((killed / "best.json").read_text())["epoch"] == best["epoch"]
    a, b = (load_h5(run / "best.weights.h5") for run in (straight, killed))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def load_h5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return out


# --- fine-tuning, callbacks ----------------------------------------------------------------------------


class Snapshots(keras.callbacks.Callback):
    """Weights of the MGN model when training starts and after every epoch (a user callback)."""

    def __init__(self):
        super().__init__()
        self.begin: dict | None = None
        self.after: dict[int, dict] = {}

    def on_train_begin(self, logs=None):
        if self.begin is None:
            self.begin = named_weights(self.model.mgn)

    def on_epoch_end(self, epoch, logs=None):
        self.after[epoch] = named_weights(self.model.mgn)


def test_init_from_loads_all_but_the_classifiers_and_frozen_epochs_train_only_the_heads(dataset, tmp_path):
    from helpers.exported import NUM_CLASSES, make_run_dir

    from mgn_tf.config import TrainConfig
    from mgn_tf.engine import train
    from mgn_tf.model import build_mgn

    source = make_run_dir(tmp_path / "source", seed=3)
    reference = build_mgn(NUM_CLASSES, (96, 32))
    reference.load_weights(source / "final.weights.h5")  # the source, read independently of the engine
    expected = named_weights(reference)
    config = TrainConfig(
        dataset="folder", data_dir=str(dataset), run_dir=str(tmp_path / "tuned"), input_height=96,
        input_width=32, backbone_weights="none", p=2, k=2, epochs=2, steps_per_epoch=2, verbose=0,
        init_from=str(source), freeze_backbone_epochs=1, new_layer_lr_factor=10.0, eval_at_end=False,
        scan_data=False, lr=0.05,
    )  # fmt: skip
    snapshots = Snapshots()
    train(config, callbacks=[snapshots])
    begin, frozen, after = snapshots.begin, snapshots.after[0], snapshots.after[1]
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["num_classes"] == 8 != NUM_CLASSES
    classifiers = [k for k in begin if k.startswith("classifier_")]
    assert len(classifiers) == 8 and all(begin[k].shape[-1] == 8 for k in classifiers)
    others = [k for k in begin if not k.startswith("classifier_")]
    assert len(others) == len(expected) - 8
    assert all(np.array_equal(begin[k], expected[k]) for k in others), "a loaded weight differs"
    backbone = [k for k in others if not k.startswith(("reduce_", "classifier_"))]
    assert backbone and all(np.array_equal(frozen[k], begin[k]) for k in backbone), "a frozen weight moved"
    heads = [k for k in begin if k.startswith(("reduce_", "classifier_")) and "kernel" in k]
    assert all(not np.array_equal(frozen[k], begin[k]) for k in heads), "a head did not train while frozen"
    kernels = [k for k in backbone if "kernel" in k]
    assert all(not np.array_equal(after[k], frozen[k]) for k in kernels), "a backbone kernel stayed frozen"


def test_init_from_a_model_of_another_shape_is_one_line(dataset, tmp_path):
    run = tmp_path / "bad"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({"num_classes": 3, "input_height": 96, "input_width": 32}))
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(run / "final.weights.h5")
    result = subprocess.run(
        [sys.executable, "-m", "mgn_tf.train", "--dataset=folder", f"--data_dir={dataset}", *TINY,
         f"--run_dir={tmp_path / 'run'}", f"--init_from={run}", "--epochs=1", "--steps_per_epoch=1",
         "--scan_data=false", "--eval_at_end=false"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: --init_from={run}") and "Traceback" not in result.stderr


# --- datasets: several in one run, every split ---------------------------------------------------------


def test_two_datasets_train_together_and_are_evaluated_each(tmp_path):
    """Identities of two datasets kept apart; each test split evaluated after training; evaluation during
    training on the (first) test split, labelled test_*."""
    first = make_folder_dataset(tmp_path / "first", train_ids=4, per_id=4, test_ids=3)
    second = make_folder_dataset(tmp_path / "second", train_ids=5, per_id=4, test_ids=3)
    run = tmp_path / "run"
    result = run_train(
        "--dataset=folder,folder", f"--data_dir={first},{second}", *TINY, f"--run_dir={run}", "--epochs=1",
        "--steps_per_epoch=1", "--scan_data=false", "--norerank", "--num_ranked_queries=0",
        "--eval_every_epochs=1", "--eval_split=test",
    )  # fmt: skip
    assert "--eval_split=test: evaluating on the test split of folder" in result.stdout
    assert float(history(run)[0]["test_mAP"]) > 0  # labelled as the test split, not "val"
    assert json.loads((run / "best.json").read_text())["split"] == "folder"
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 4 + 5 and config["num_train_images"] == (4 + 5) * 4
    for name, root in (("folder", first), ("folder_2", second)):
        results = json.loads((run / "eval" / name / "results.json").read_text())
        assert results["dataset"]["root"] == str(root) and results["dataset"]["num_query"] == 6


def test_combine_all_trains_on_the_test_split_and_skips_its_evaluation(dataset, tmp_path):
    run = tmp_path / "run"
    result = run_train(
        "--dataset=folder", f"--data_dir={dataset}", *TINY, f"--run_dir={run}", "--combine_all",
        "--epochs=1", "--steps_per_epoch=1", "--scan_data=false",
    )  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 8 + 3 and config["num_train_images"] == 8 * 4 + 3 * 4
    assert "no evaluation after training" in result.stdout and not (run / "eval").exists()
