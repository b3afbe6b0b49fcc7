"""The session's one export, shared by test_export.py and test_inference.py (fixtures in conftest.py).

`python -m export` on a checkpoint folder of a run directory laid out as training writes it, holding a
fresh MGN at 96x32 with distinct branch weights, with flip-averaging and L2 normalisation baked in, in
both profiles (every default format, and boxmot's ONNX and OpenVINO IR); the static int8 variants
calibrated on the 32 real images of mini_market1501/bounding_box_train, and every artefact's rank-1 /
mAP checked on the mini_market1501 query/gallery split. The
truth is the Keras model rebuilt from the run's final weights file in the test process, independent of
`mgn_tf.inference`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_SIZE = (96, 32)
NUM_CLASSES = 4
EMBEDDING_DIM = 2048
CHECKPOINT = Path("checkpoints") / "step_00000001"
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass
class Exported:
    run_dir: Path
    out: Path
    stdout: str
    report: dict
    seconds: float

    @property
    def saved_model(self) -> Path:
        return self.out / "mgn" / "1"

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT


def make_run_dir(root: Path, seed: int = 0) -> Path:
    """config.json, final.weights.h5 and one resume checkpoint (trainer weights + state.json) of the same
    model (`distinct_fresh_model` of `seed`), as `mgn_tf.engine.train` writes them."""
    from helpers.perturb import distinct_fresh_model
    from mgn_tf.optimizer import make_optimizer
    from mgn_tf.trainer import MGNTrainer

    run = root / "run"
    (run / CHECKPOINT).mkdir(parents=True)
    model = distinct_fresh_model(NUM_CLASSES, INPUT_SIZE, seed=seed)
    model.save_weights(run / "final.weights.h5")
    trainer = MGNTrainer(model)
    trainer.compile(optimizer=make_optimizer("sgd", 0.01, 0.9, 5e-4))
    trainer.optimizer.build(trainer.trainable_variables)
    trainer.save_weights(run / CHECKPOINT / "trainer.weights.h5")
    (run / CHECKPOINT / "state.json").write_text(json.dumps({"step": 1, "epoch": 1, "step_in_epoch": 0}))
    config = {"num_classes": NUM_CLASSES, "input_height": INPUT_SIZE[0], "input_width": INPUT_SIZE[1]}
    (run / "config.json").write_text(json.dumps({**config, "epochs": 1}))
    return run


def export_run(root: Path, mini_market: Path) -> Exported:
    """Runs `python -m export` on the run's checkpoint folder, every format, flip/normalisation baked in."""
    run = make_run_dir(root)
    out = root / "out"
    command = [
        sys.executable, "-m", "export", "--weights", str(run / CHECKPOINT), "--out", str(out),
        "--bake_flip_norm", "--parity_images", str(mini_market / "bounding_box_test"), "--speed_seconds", "0",
        "--calibration_images", str(mini_market / "bounding_box_train"),
        "--accuracy_dataset=market1501", "--accuracy_data_dir", str(mini_market),
        # 32 queries: one query ranked differently moves mAP by up to 3 points
        "--max_map_drop=10",
        # the boxmot ONNX and IR from the same conversion (tests/test_export_boxmot.py)
        "--profile=default,boxmot",
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"export failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    report = json.loads((out / "export_report.json").read_text())
    return Exported(run, out, result.stdout, report, seconds)


class KerasTruth:
    """The Keras embedding model rebuilt from the run's weights (independent of mgn_tf.inference)."""

    def __init__(self, weights: Path):
        from mgn_tf.model import build_mgn, embedding_model

        model = build_mgn(NUM_CLASSES, INPUT_SIZE)
        model.load_weights(weights)
        self.model = embedding_model(model)

    def __call__(self, pixels: np.ndarray, flip_norm: bool = False) -> np.ndarray:
        features = self.model(pixels, training=False).numpy()
        if flip_norm:
            features = (features + self.model(pixels[:, :, ::-1], training=False).numpy()) / 2
            features /= np.linalg.norm(features, axis=1, keepdims=True)
        return features


def assert_close(actual: np.ndarray, expected: np.ndarray, precision: str = "float32") -> None:
    """`actual` within the export's parity bounds for `precision` of `expected` (parity.compare)."""
    from mgn_tf.export import parity

    assert actual.shape == expected.shape and actual.dtype == np.float32
    result = parity.compare("actual", precision, expected, actual)
    assert result.ok, f"{result.failures} ({result.to_dict()})"
