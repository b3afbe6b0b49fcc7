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
    # The same values through the same convolutions; only the fused BatchNorm (one op instead of
    # Keras's composed ones) rounds differently. A mismatched copy would differ by O(1).
    np.testing.assert_allclose(conv5, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
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


# --- paper-fidelity oracle: the heads of §3.1 / Table 1 recomputed in numpy from the conv5 maps -------

ORACLE_RTOL = 1e-4  # float32 model against a float64 oracle; atol is this times the largest magnitude


def _randomize_weights(model: keras.Model, rng: np.random.Generator) -> None:
    """Seeded random values for every variable, BatchNorm statistics included.

    The built model's branches are equal copies and its BatchNorms start near the identity (mean 0,
    variance 1): random values make every branch distinct, so a head fed by the wrong branch would show,
    and make inference-mode BN change the values, so a missing or misapplied BN would show too.
    """

    def walk(layer_owner: keras.Model) -> None:
        for layer in layer_owner.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                shape = layer.gamma.shape
                layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
                layer.beta.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
                layer.moving_mean.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
                layer.moving_variance.assign(rng.uniform(0.3, 3.0, shape).astype(np.float32))
            else:
                for weight in layer.weights:
                    shape = tuple(weight.shape)
                    if len(shape) >= 2:  # He-scaled, so activations stay finite through the 50 layers
                        std = np.sqrt(2.0 / np.prod(shape[:-1]))
                        weight.assign(rng.normal(0.0, std, shape).astype(np.float32))
                    else:
                        weight.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))

    walk(model)


def _mgn_oracle(
    model: keras.Model,
    maps: tuple[np.ndarray, np.ndarray, np.ndarray],
    pool=np.max,
    reverse_stripes: bool = False,
    pool_after_reduction: bool = False,
) -> dict[str, np.ndarray]:
    """Embedding, logits and triplet features of the paper's MGN from the Global, Part-2 and Part-3 conv5
    maps [B, H, W, 2048], in float64, reading only the head weights from `model`.

    The keyword arguments give deliberately wrong variants, to show that the oracle can tell them apart.
    """
    global_map, p2_map, p3_map = (m.astype(np.float64) for m in maps)

    def stripes(fmap: np.ndarray, n: int) -> list[np.ndarray]:
        rows = fmap.shape[1] // n
        assert rows * n == fmap.shape[1]
        parts = [fmap[:, i * rows : (i + 1) * rows] for i in range(n)]  # top to bottom
        return parts[::-1] if reverse_stripes else parts

    # Paper order of the 256-d blocks: the three global features, then the Part-2 and Part-3 stripes.
    regions = [("global", global_map), ("p2_global", p2_map), ("p3_global", p3_map)]
    regions += [(f"p2_part{i + 1}", s) for i, s in enumerate(stripes(p2_map, 2))]
    regions += [(f"p3_part{i + 1}", s) for i, s in enumerate(stripes(p3_map, 3))]

    def reduction(name: str):
        conv = model.get_layer(f"reduce_{name}_conv")
        bn = model.get_layer(f"reduce_{name}_bn")
        assert conv.use_bias is False and len(conv.weights) == 1  # paper: 1x1 conv, BN, ReLU
        assert bn.center and bn.scale
        kernel = conv.kernel.numpy().astype(np.float64)
        assert kernel.shape == (1, 1, 2048, 256)
        kernel = kernel[0, 0]
        mean, var, gamma, beta = (
            v.numpy().astype(np.float64) for v in (bn.moving_mean, bn.moving_variance, bn.gamma, bn.beta)
        )
        scale = gamma / np.sqrt(var + bn.epsilon)
        return lambda x: np.maximum((x @ kernel - mean) * scale + beta, 0.0)

    reduced, logits = [], []
    for name, region in regions:
        head = reduction(name)
        pooled = pool(region, axis=(1, 2))  # [B, 2048]
        feature = pool(head(region), axis=(1, 2)) if pool_after_reduction else head(pooled)
        reduced.append(feature)
        classifier = model.get_layer(f"classifier_{name}")
        # §3.2: softmax on the 2048-d pooled global features and on the 256-d reduced part features.
        x = pooled if name.endswith("global") else feature
        y = x @ classifier.kernel.numpy().astype(np.float64)
        if classifier.use_bias:
            y = y + classifier.bias.numpy()
        logits.append(y)
    return {
        "embedding": np.concatenate(reduced, axis=1),
        "logits": np.stack(logits, axis=1),
        "triplet_features": np.stack(reduced[:3], axis=1),
    }


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def test_heads_match_a_numpy_oracle_of_the_paper_and_not_its_wrong_variants():
    """From the three branch conv5 maps alone, numpy recomputes the paper's heads (Table 1, §3.1-3.2):
    global max pooling, 2 and 3 equal stripes top to bottom each max-pooled, pooling before an
    independent 1x1 conv (no bias) + inference BN + ReLU per feature, bias-free classifiers on the 2048-d
    pooled globals and the 256-d reduced parts, and the 8x256 concatenated embedding. The model must
    match it, and average pooling, reversed stripes or pooling after the reduction must not."""
    num_classes, size = 7, (96, 32)
    model = build_mgn(num_classes, size)
    rng = np.random.default_rng(3)
    _randomize_weights(model, rng)
    images = rng.uniform(0, 255, (3, *size, 3)).astype(np.float32)

    out = {k: v.numpy() for k, v in model(images, training=False).items()}
    shared = model.get_layer("backbone_trunk")(model.get_layer("caffe_preprocess")(images), training=False)
    maps = tuple(model.get_layer(f"{b}_branch")(shared, training=False).numpy() for b, _, _ in BRANCHES)
    assert [m.shape for m in maps] == [(3, 3, 1, 2048), (3, 6, 2, 2048), (3, 6, 2, 2048)]
    # Distinct branches and spatially varying maps, without which max/mean or stripe order could agree.
    assert not np.allclose(maps[1], maps[2])
    for fmap in maps:
        assert np.isfinite(fmap).all() and fmap.std(axis=(1, 2)).mean() > 1e-3 * np.abs(fmap).max()

    expected = _mgn_oracle(model, maps)
    for key in ("embedding", "triplet_features"):
        np.testing.assert_allclose(
            out[key], expected[key], rtol=ORACLE_RTOL, atol=ORACLE_RTOL * np.abs(expected[key]).max()
        )
    assert out["logits"].shape == (3, 8, num_classes)
    for i, name in enumerate(FEATURE_NAMES):
        want = expected["logits"][:, i]
        np.testing.assert_allclose(
            out["logits"][:, i], want, rtol=ORACLE_RTOL, atol=ORACLE_RTOL * np.abs(want).max(), err_msg=name
        )

    # Each wrong variant misses the model by far more than the tolerance (|diff| <= 2e-4 * max|value|).
    variants = {
        "average pooling": {"pool": np.mean},
        "stripes bottom to top": {"reverse_stripes": True},
        "pooling after the reduction": {"pool_after_reduction": True},
    }
    for variant, kwargs in variants.items():
        wrong = _mgn_oracle(model, maps, **kwargs)
        error = max(_relative_error(out[k], wrong[k]) for k in ("embedding", "logits"))
        assert error > 50 * 2 * ORACLE_RTOL, f"{variant}: the oracle cannot tell it apart ({error:.2e})"


@pytest.mark.parametrize("trainable", [True, False])
def test_fused_batchnorm_equals_keras_batchnorm(trainable):
    """mgn_tf's BatchNormalization (one FusedBatchNormV3 op) against Keras's composed implementation: the
    same outputs and gradients in training and inference, the same moving statistics after a training
    call (Keras averages the biased batch variance), and a frozen layer (trainable=False) in inference."""
    import tensorflow as tf

    from mgn_tf.model import BatchNormalization

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 6, 5, 8)).astype(np.float32))
    options = dict(momentum=0.9, epsilon=1e-3, beta_initializer="random_normal", gamma_initializer="ones")
    keras_bn, fused_bn = keras.layers.BatchNormalization(**options), BatchNormalization(**options)
    keras_bn.build(x.shape)
    fused_bn.build(x.shape)
    weights = keras_bn.get_weights()
    weights[0] = rng.uniform(0.5, 1.5, 8).astype(np.float32)  # gamma
    weights[2:] = [rng.normal(0, 1, 8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32)]
    for layer in (keras_bn, fused_bn):
        layer.set_weights(weights)
        layer.trainable = trainable
    for training in (True, False):
        results = []
        for layer in (keras_bn, fused_bn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
                loss = tf.reduce_sum(y * tf.sin(y))
            grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
            results.append([y, *grads])
        for expected, got in zip(*results, strict=True):
            np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-4)
    for expected, got in zip(keras_bn.get_weights(), fused_bn.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    if trainable:  # a training call moved the statistics
        assert not np.allclose(fused_bn.get_weights()[2], weights[2])


def test_weights_written_with_keras_batchnorm_load(tmp_path):
    """A weights file of the same network built with Keras's own BatchNormalization layers loads."""
    from mgn_tf import model as mgn_model

    original = mgn_model.BatchNormalization
    try:
        mgn_model.BatchNormalization = keras.layers.BatchNormalization
        plain = build_mgn(3, (96, 32))
    finally:
        mgn_model.BatchNormalization = original
    branch_layers = plain.get_layer("global_branch").layers
    assert not any(type(layer).__module__ == "mgn_tf.model" for layer in branch_layers)
    for variable in plain.weights:
        variable.assign(np.random.default_rng(len(variable.path)).normal(0, 0.1, variable.shape))
    plain.save_weights(tmp_path / "plain.weights.h5")
    fused = build_mgn(3, (96, 32))
    fused.load_weights(tmp_path / "plain.weights.h5")
    for a, b in zip(plain.weights, fused.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
