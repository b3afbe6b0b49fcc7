"""MGN architecture against the paper's §3.1 / Table 1 and against the ResNet50 it is cloned from."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mgn_tf.geometry import feature_map_sizes
from mgn_tf.model import (
    BRANCHES,
    CAFFE_BGR_MEAN,
    FEATURE_NAMES,
    build_mgn,
    embedding_model,
)

NUM_CLASSES = 751


@pytest.fixture(scope="module")
def full_model() -> keras.Model:
    """The full-size model: Table 1 sizes and parameter counts are about the full size."""
    return build_mgn(NUM_CLASSES, (384, 128))


def test_table1_map_sizes(full_model):
    assert full_model.get_layer("backbone_trunk").output.shape[1:] == (24, 8, 1024)
    assert full_model.get_layer("global_branch").output.shape[1:] == (12, 4, 2048)
    assert full_model.get_layer("part2_branch").output.shape[1:] == (24, 8, 2048)
    assert full_model.get_layer("part3_branch").output.shape[1:] == (24, 8, 2048)
    assert feature_map_sizes((384, 128)) == ((12, 4), (24, 8))


def test_parameter_counts(full_model):
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(384, 128, 3))
    assert resnet.count_params() == 23_587_712
    for branch, _, _ in BRANCHES:
        assert full_model.get_layer(f"{branch}_branch").count_params() == 20_607_488
    reductions = sum(
        full_model.get_layer(f"reduce_{f}_{kind}").count_params()
        for f in FEATURE_NAMES
        for kind in ("conv", "bn")
    )
    assert reductions == 8 * (2048 * 256 + 4 * 256)
    classifiers = 3 * 2048 * NUM_CLASSES + 5 * 256 * NUM_CLASSES
    assert full_model.count_params() == 69_005_184 + classifiers


def test_output_shapes_and_strides(full_model):
    out = full_model(np.zeros((2, 384, 128, 3), np.float32))
    assert out["embedding"].shape == (2, 2048)
    assert out["logits"].shape == (2, 8, NUM_CLASSES)
    assert out["triplet_features"].shape == (2, 3, 256)
    strides = {
        b: full_model.get_layer(f"{b}_branch").get_layer(f"{b}_conv5_block1_1_conv").strides
        for b in ("global", "part2")
    }
    assert strides == {"global": (2, 2), "part2": (1, 1)}


def test_classifiers_have_no_bias_and_reductions_are_independent(full_model):
    for feature in FEATURE_NAMES:
        classifier = full_model.get_layer(f"classifier_{feature}")
        assert classifier.use_bias is False and len(classifier.weights) == 1
        width = 2048 if feature in ("global", "p2_global", "p3_global") else 256
        assert classifier.kernel.shape == (width, NUM_CLASSES)
        conv = full_model.get_layer(f"reduce_{feature}_conv")
        assert conv.kernel.shape == (1, 1, 2048, 256) and conv.use_bias is False
    kernels = {id(full_model.get_layer(f"reduce_{f}_conv").kernel) for f in FEATURE_NAMES}
    assert len(kernels) == 8


def test_branches_share_no_variable_and_start_equal(full_model):
    branches = [full_model.get_layer(f"{b}_branch") for b, _, _ in BRANCHES]
    ids = [{id(v) for v in b.weights} for b in branches]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    trunk_ids = {id(v) for v in full_model.get_layer("backbone_trunk").weights}
    assert not any(trunk_ids & branch for branch in ids)
    for a, b, c in zip(*(branch.get_weights() for branch in branches), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_branches_are_copies_of_the_backbone_and_global_reproduces_conv5(tmp_path):
    """With a weights file, trunk + Global branch must reproduce ResNet50's conv5 output exactly."""
    size = (96, 32)
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(*size, 3))
    rng = np.random.default_rng(0)
    # Non-trivial BatchNorm statistics, so that a mismatched copy could not go unnoticed.
    for layer in resnet.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    gamma * rng.uniform(0.5, 1.5, gamma.shape),
                    beta + rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.1, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )
    weights_file = str(tmp_path / "resnet50_notop.weights.h5")
    resnet.save_weights(weights_file)
    model = build_mgn(10, size, backbone_weights=weights_file)
    images = rng.uniform(0, 255, (2, *size, 3)).astype(np.float32)
    bgr = images[..., ::-1] - np.array(CAFFE_BGR_MEAN, np.float32)
    expected = resnet(bgr, training=False).numpy()
    trunk = model.get_layer("backbone_trunk")(model.get_layer("caffe_preprocess")(images), training=False)
    conv5 = model.get_layer("global_branch")(trunk, training=False).numpy()
    np.testing.assert_array_equal(conv5, expected)  # same ops on the same values: bit-exact
    for name in ("conv4_block2_1_conv", "conv5_block3_3_bn"):
        source = resnet.get_layer(name).get_weights()
        for branch in ("global", "part2", "part3"):
            copy = model.get_layer(f"{branch}_branch").get_layer(f"{branch}_{name}").get_weights()
            for s, c in zip(source, copy, strict=True):
                np.testing.assert_array_equal(s, c)


def test_embedding_model_is_the_concatenated_reduced_features():
    model = build_mgn(5, (96, 32))
    images = np.random.default_rng(1).uniform(0, 255, (3, 96, 32, 3)).astype(np.float32)
    out = model(images, training=False)
    emb = embedding_model(model)(images, training=False).numpy()
    np.testing.assert_allclose(emb, out["embedding"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb[:, :768].reshape(3, 3, 256), out["triplet_features"].numpy(), rtol=1e-6)
    assert (emb >= 0).all()  # ReLU after every reduction


@pytest.mark.parametrize("size", [(128, 64), (144, 48), (96, 40), (96, 32, 3)])
def test_input_sizes_that_cannot_be_striped_are_rejected_before_building(size):
    with pytest.raises(ValueError, match="input"):
        build_mgn(3, size)


def test_missing_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="no_such.h5"):
        build_mgn(3, (96, 32), backbone_weights="/nonexistent/no_such.h5")


def test_every_batchnorm_uses_pytorch_default_momentum(full_model):
    """The paper trained in PyTorch (BN momentum 0.1 = Keras momentum 0.9), not Keras's ResNet50 0.99."""
    found = []

    def walk(model):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                found.append(layer.momentum)

    walk(full_model)
    # trunk conv1..conv4_block1 (1 + 10 + 13 + 4), 3 branches of conv4_block2..conv5 (15 + 10), 8 reductions
    assert len(found) == 28 + 3 * 25 + 8
    assert set(found) == {0.9}


def test_zero_init_residual_starts_every_identity_block_as_the_identity():
    """From scratch, zero_init_residual zeroes the 16 residual-closing BN scales (8 in the trunk, 8 per
    branch), so each block without a projection shortcut passes its (non-negative) input through exactly."""
    size = (96, 32)
    model = build_mgn(4, size, zero_init_residual=True)
    trunk = model.get_layer("backbone_trunk")
    images = np.random.default_rng(2).uniform(0, 255, (2, *size, 3)).astype(np.float32)
    shared = trunk(model.get_layer("caffe_preprocess")(images), training=False)
    for branch, _, _ in BRANCHES:
        sub = model.get_layer(f"{branch}_branch")
        zeroed = [layer.name for layer in sub.layers if layer.name.endswith("_3_bn")]
        assert len(zeroed) == 8 and all(not sub.get_layer(n).gamma.numpy().any() for n in zeroed)
        names = [f"{branch}_conv4_block6_out", f"{branch}_conv5_block1_out", f"{branch}_conv5_block3_out"]
        outputs = keras.Model(sub.input, [sub.get_layer(n).output for n in names])(shared, training=False)
        conv4_out, conv5_block1, conv5_out = (o.numpy() for o in outputs)
        np.testing.assert_array_equal(conv4_out, shared.numpy())  # conv4_block2..6 are identities
        np.testing.assert_array_equal(conv5_out, conv5_block1)  # conv5_block2..3 are identities
        assert conv5_block1.any()  # the projection block is not
    trunk_zeroed = [layer for layer in trunk.layers if layer.name.endswith("_3_bn")]
    assert len(trunk_zeroed) == 8 and not any(layer.gamma.numpy().any() for layer in trunk_zeroed)
    default = build_mgn(4, size).get_layer("global_branch").get_layer("global_conv5_block3_3_bn")
    assert default.gamma.numpy().all()


def test_zero_init_residual_refuses_pretrained_weights():
    with pytest.raises(ValueError, match="zero_init_residual"):
        build_mgn(3, (96, 32), backbone_weights="imagenet", zero_init_residual=True)
