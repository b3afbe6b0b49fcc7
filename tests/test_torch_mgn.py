"""The PyTorch MGN of the speed benchmark (benchmarks/torch_mgn.py) against mgn_tf and hand-computed values.

Skipped without torch (the `bench` extra; CI does not install it).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_mgn  # noqa: E402

NUM_CLASSES = 11
SIZE = (96, 32)
# Four 2-d points, labels 0, 0, 1, 1: d(a0,a1)=1, d(a0,b0)=3, d(a0,b1)=5, d(a1,b0)=sqrt(10),
# d(a1,b1)=sqrt(18), d(b0,b1)=4. Margin 1.2 per anchor: a0 1.2+1-3 -> 0, a1 1.2+1-sqrt(10) -> 0,
# b0 1.2+4-3 = 2.2, b1 1.2+4-sqrt(18).
POINTS = [[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 4.0]]
LABELS = [0, 0, 1, 1]
HAND_TRIPLET = [0.0, 0.0, 2.2, 5.2 - math.sqrt(18)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torch_mgn.TorchMGN(NUM_CLASSES)


def test_constants_match_mgn_tf():
    from mgn_tf import model as mgn

    assert torch_mgn.FEATURE_NAMES == mgn.FEATURE_NAMES
    assert torch_mgn.TRIPLET_FEATURES == mgn.TRIPLET_FEATURES
    assert torch_mgn.BRANCHES == mgn.BRANCHES
    assert torch_mgn.CAFFE_BGR_MEAN == mgn.CAFFE_BGR_MEAN
    assert torch_mgn.REDUCTION_DIM == mgn.REDUCTION_DIM


def test_parameter_counts_equal_keras(model):
    from mgn_tf.model import build_mgn

    keras_model = build_mgn(NUM_CLASSES, SIZE, backbone_weights=None)
    expected = {
        "trainable": sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights),
        "non_trainable": sum(int(np.prod(w.shape)) for w in keras_model.non_trainable_weights),
    }
    assert torch_mgn.parameter_counts(model) == expected


def test_trunk_plus_one_branch_is_keras_resnet50(model):
    # Keras's ResNet50 without top: 23,587,712 weights, BN moving statistics included (tests/test_model.py).
    parts = torch.nn.ModuleList([model.trunk, model.branches["global"]])
    counts = torch_mgn.parameter_counts(parts)
    assert counts["trainable"] + counts["non_trainable"] == 23_587_712


def test_output_shapes(model):
    images = torch.rand(2, 3, *SIZE) * 255
    model.eval()
    with torch.inference_mode():
        outputs = model(images)
        embedding = model.embed(images)
    assert outputs["embedding"].shape == (2, 8 * 256)
    assert outputs["logits"].shape == (2, 8, NUM_CLASSES)
    assert outputs["triplet_features"].shape == (2, 3, 256)
    torch.testing.assert_close(embedding, outputs["embedding"])


def test_global_branch_keeps_stride_two(model):
    images = torch.zeros(1, 3, *SIZE)
    with torch.inference_mode():
        shared = model.trunk(images)
        maps = {name: model.branches[name](shared).shape[2:] for name, _, _ in torch_mgn.BRANCHES}
    assert tuple(shared.shape[1:]) == (1024, 6, 2)
    assert maps == {"global": (3, 1), "part2": (6, 2), "part3": (6, 2)}


def test_batch_hard_triplet_hand_example():
    loss = torch_mgn.batch_hard_triplet_per_anchor(torch.tensor(LABELS), torch.tensor(POINTS), margin=1.2)
    np.testing.assert_allclose(loss.numpy(), HAND_TRIPLET, rtol=1e-6, atol=1e-6)


def test_mgn_loss_hand_example():
    # Zero logits: every head's cross-entropy is log(C); the three triplet sets are the hand example.
    outputs = {
        "logits": torch.zeros(4, 8, NUM_CLASSES),
        "triplet_features": torch.tensor(POINTS)[:, None, :].repeat(1, 3, 1),
    }
    loss = torch_mgn.mgn_loss(outputs, torch.tensor(LABELS))
    assert float(loss) == pytest.approx(math.log(NUM_CLASSES) + sum(HAND_TRIPLET) / 4, rel=1e-6)


def test_sgd_is_coupled_l2_with_momentum():
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch_mgn.make_optimizer(torch.nn.ParameterList([weight]), lr=0.01)
    w, velocity = 1.0, 0.0
    for _ in range(2):
        optimizer.zero_grad()
        (2 * weight).sum().backward()
        optimizer.step()
        velocity = 0.9 * velocity + (2 + 5e-4 * w)  # v <- m v + (g + l2 w); w <- w - lr v
        w -= 0.01 * velocity
    assert weight.item() == pytest.approx(w, rel=1e-6)
