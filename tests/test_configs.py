"""Every flagfile in configs/ parses, validates, and the dataset ones carry the paper's §4.1 settings."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from helpers.layouts import dataset_root

from mgn_tf import train
from mgn_tf.flags import config_from_flags

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.flags"))
PAPER = {
    "input_height": 384,
    "input_width": 128,
    "p": 16,
    "k": 4,
    "epochs": 80,
    "lr": 0.01,
    "lr_decay_epochs": (40, 60),
    "lr_decay_factor": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "margin": 1.2,
    "flip": True,
    "backbone_weights": "imagenet",
}


def parse(path: Path):
    if "p" not in flags.FLAGS:  # once per process: the training command's flags
        train.define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", f"--flagfile={path}"])
    try:
        return config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()


def test_all_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"market1501", "dukemtmc", "cuhk03", "cuhk03_detected", "msmt17", "cuhk01", "synthetic"} <= names
    assert {"market1501_strong", "dukemtmc_strong", "cuhk03_strong", "msmt17_strong"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_validates(path, tmp_path, cuhk01_dir):
    config = parse(path)
    if config.dataset == "cuhk01":
        assert config.data_dir == "../shared/data/cuhk01"
        config.data_dir = str(cuhk01_dir)  # the same folder, wherever MGN_SHARED_DIR puts it
    elif config.dataset != "synthetic":
        config.data_dir = str(tmp_path)  # the real dataset is not on this machine
    if config.init_from:  # a finished run of another config, not on this machine
        assert config.init_from.startswith("runs/")
        config.init_from = str(tmp_path)
    if config.backbone_weights == "imagenet":
        assert path.stem not in ("synthetic", "cuhk01")
    config.validate()
    if path.stem in ("market1501", "dukemtmc", "cuhk03", "cuhk03_detected", "msmt17"):
        for key, value in PAPER.items():
            assert getattr(config, key) == pytest.approx(value), key
    if path.stem.startswith("cuhk03"):
        assert config.dataset_options == {"variant": "detected" if "detected" in path.stem else "labeled"}
    strong = {"pad_crop": 10, "random_erasing": 0.5, "label_smoothing": 0.1, "jitter_brightness": 0.2,
              "jitter_contrast": 0.15, "warmup_epochs": 10}  # fmt: skip
    if path.stem.endswith("_strong"):  # the paper's settings otherwise, and the regularisers on
        for key in set(PAPER) - {"lr_decay_epochs", "lr_decay_factor"}:
            assert getattr(config, key) == pytest.approx(PAPER[key]), key
        assert config.lr_schedule == "cosine"
        assert {k: getattr(config, k) for k in strong} == pytest.approx(strong)
    elif path.stem in ("market1501", "dukemtmc", "cuhk03", "cuhk03_detected", "msmt17"):  # all off
        assert config.lr_schedule == "step" and config.init_from == "" and not config.combine_all
        assert {k: getattr(config, k) for k in strong} == dict.fromkeys(strong, 0)


def test_importing_the_commands_defines_no_flags():
    """Flags are defined when a command runs, not when its module is imported (tests import them): so
    importing export and evaluate next to train cannot change how a training flagfile parses."""
    import importlib

    before = set(flags.FLAGS)
    for module in ("mgn_tf.export.cli", "mgn_tf.evaluate", "mgn_tf.train", "mgn_tf.serving.rest_client"):
        importlib.import_module(module)
    assert set(flags.FLAGS) == before
    assert parse(CONFIGS[0]).dataset


# --- every config trains with its own flags -------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
README_CONFIG = "synthetic"  # README command 1: python -m mgn_tf.train --flagfile configs/synthetic.flags
# The paper configs' 384x128 input and the 64-image batches, reduced to what two CPU cores train in seconds.
SMALL = {"input_height": 96, "input_width": 32, "p": 4, "k": 2}


@pytest.mark.own_worker_unit(minutes=3)
def test_the_readme_command_trains_with_every_flag_of_its_config(tmp_path):
    """README command 1 through the real command line, every flag of configs/synthetic.flags as it is
    (--xla included), only the data and run folders moved and each epoch cut to 6 steps: 3 epochs whose
    losses are finite and fall, then the evaluation."""
    config = REPO / "configs" / f"{README_CONFIG}.flags"
    assert "--xla" in config.read_text().split()
    command = [
        sys.executable, "-m", "mgn_tf.train", f"--flagfile={config}", f"--data_dir={tmp_path / 'data'}",
        f"--run_dir={tmp_path / 'run'}", "--steps_per_epoch=6", "--norerank", "--num_ranked_queries=0",
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "run" / "history.csv") as f:
        history = list(csv.DictReader(f))
    losses = [float(row["loss"]) for row in history]
    assert len(losses) == 3 and np.isfinite(losses).all(), losses
    assert losses[0] > losses[1] > losses[2], losses
    assert "rank-1" in result.stdout and (tmp_path / "run" / "eval" / "results.json").is_file()


OTHER_CONFIGS = [path for path in CONFIGS if path.stem != README_CONFIG]


def train_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "mgn_tf.train", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.own_worker_unit(minutes=0.5)
@pytest.mark.parametrize("path", OTHER_CONFIGS, ids=lambda p: p.stem)
def test_every_other_config_trains_two_steps_with_its_own_flags(path, tmp_path, mini_market_dir, cuhk01_dir):
    """Each config through the command line with its own reader, optimizer, schedule, augmentations and
    losses, on real images laid out as its dataset (tests/helpers/layouts.py), stopped by --max_steps=2
    with finite losses. Changed: the folders, the input size to 96x32 and the batch to 4 x 2 images,
    ImageNet weights (not downloadable here) for none (a run that --max_steps stopped resumes:
    tests/test_train.py)."""
    from helpers.exported import make_run_dir

    config = parse(path)
    data_dir = dataset_root(config.dataset, mini_market_dir, tmp_path / "data", cuhk01_dir)
    run = tmp_path / "run"
    args = [
        f"--flagfile={path}",
        f"--data_dir={data_dir}",
        f"--run_dir={run}",
        "--noeval_at_end",
        "--verbose=2",
    ]
    if config.init_from:  # a finished run of another config
        args.append(f"--init_from={make_run_dir(tmp_path / 'source')}")
    if config.backbone_weights == "imagenet":
        args.append("--backbone_weights=none")
    args += [f"--{name}={value}" for name, value in SMALL.items() if getattr(config, name) != value]
    result = train_command(*args, "--max_steps=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Training stopped by --max_steps=2 after step 2" in result.stdout
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert (
        len(history) == 1
        and np.isfinite([float(history[0][k]) for k in ("loss", "softmax", "triplet")]).all()
    )
    assert (run / "checkpoints" / "step_00000002").is_dir() and (run / "final.weights.h5").is_file()
    recorded = json.loads((run / "config.json").read_text())
    keys = ("dataset", "optimizer", "lr", "lr_schedule", "warmup_epochs", "momentum", "weight_decay",
            "margin", "flip", "pad_crop", "random_erasing", "label_smoothing", "xla", "epochs")  # fmt: skip
    assert {k: recorded[k] for k in keys} == {k: getattr(config, k) for k in keys}
