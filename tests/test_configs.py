"""Every flagfile in configs/ parses, validates, and the dataset ones carry the paper's §4.1 settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags

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
