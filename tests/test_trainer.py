"""MGNTrainer: loss terms reported, multi-replica equivalence, BatchNorm statistics synchronised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.training import make_trainer, tiny_batch

from mgn_tf.losses import softmax_per_example, triplet_per_example

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def batch():
    return tiny_batch()


@pytest.mark.own_worker_unit(minutes=2)
def test_every_loss_term_is_reported_and_combined_with_its_weight(batch):
    images, labels = batch
    trainer = make_trainer(weights=(0.7, 2.0))
    # The reported terms are those of the forward pass that computes the gradient (weights before the step).
    out = trainer.mgn(images, training=True)
    softmax = float(tf.reduce_mean(softmax_per_example(labels, out["logits"])))
    triplet = float(tf.reduce_mean(triplet_per_example(labels, out["triplet_features"], 1.2)))
    keras.utils.set_random_seed(0)
    trainer = make_trainer(weights=(0.7, 2.0))
    history = trainer.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0).history
    assert set(history) >= {"loss", "softmax", "triplet", "id_accuracy"}
    assert history["softmax"][0] == pytest.approx(softmax, rel=1e-4)
    assert history["triplet"][0] == pytest.approx(triplet, rel=1e-4)
    assert history["loss"][0] == pytest.approx(0.7 * softmax + 2.0 * triplet, rel=1e-4)
    assert softmax == pytest.approx(np.log(4), rel=0.05)  # small initial logits: cross-entropy ~ log(C)


@pytest.mark.own_worker_unit(minutes=4)
def test_two_replica_step_equals_one_device():
    """Subprocess: logical CPU devices must be configured before TensorFlow starts."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.mirrored_step", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["variables"] > 300
    assert report["max_diff_over_update"] < 1e-8
    assert report["global_diff_over_update"] < 1e-9


def test_sync_moving_statistics_sets_every_replica_to_the_mean():
    """Per-replica BatchNorm moving statistics (2 logical CPUs) become their mean on every replica."""
    script = Path(__file__).parent / "helpers" / "bn_sync.py"
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    before, after = np.array(out["before"]), np.array(out["after"])  # [replica, mean|variance, channel]
    assert not np.allclose(before[0], before[1]), "the replicas must start with different statistics"
    expected = before.mean(axis=0)
    for replica in after:
        np.testing.assert_allclose(replica, expected, rtol=1e-6)
