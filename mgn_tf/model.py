"""The Multiple Granularity Network (Wang et al. 2018, §3.1, Table 1, Fig. 3) as a Keras functional model.

Layout (input 384×128):

    raw RGB 0..255 -> caffe_preprocess -> backbone_trunk (ResNet50 conv1 .. conv4_block1)   24×8×1024
      -> global_branch (conv4_block2 .. conv5_block3, stride 2 in conv5_block1)             12×4×2048
      -> part2_branch  (same blocks, stride 1 in conv5_block1)                               24×8×2048
      -> part3_branch  (same blocks, stride 1 in conv5_block1)                               24×8×2048

Each branch is its own copy of the backbone's conv4_block2..conv5_block3 (separate variables, equal
initial values). Global max pooling gives z_g for every branch; Part-N also max-pools N equal horizontal
stripes. Eight independent reductions (1×1 conv 2048->256 without bias, BN, ReLU) give the 256-d
features; identity classifiers without bias (paper eq. 1) act on the three 2048-d z_g and on the five
reduced part features. The batch-hard triplet loss acts on the three reduced global features.

`FEATURE_NAMES` is the order of the eight reduced features, and of the 256-d blocks in the 2048-d
embedding and of the classifier heads in `logits`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras
from keras import layers, ops

from mgn_tf.geometry import PAPER_INPUT_SIZE, InputSize, check_input_size, input_shape, stripe_rows

FEATURE_NAMES: tuple[str, ...] = (
    "global",  # f_g^G: Global branch, whole map
    "p2_global",  # f_g^P2: Part-2 branch, whole map
    "p3_global",  # f_g^P3: Part-3 branch, whole map
    "p2_part1",  # f_p1^P2 (top half)
    "p2_part2",  # f_p2^P2 (bottom half)
    "p3_part1",  # f_p1^P3 (top third)
    "p3_part2",  # f_p2^P3
    "p3_part3",  # f_p3^P3 (bottom third)
)
TRIPLET_FEATURES: tuple[str, ...] = FEATURE_NAMES[:3]
BRANCHES: tuple[tuple[str, int, int], ...] = (
    # (branch name, number of stripes, conv5_block1 stride)
    ("global", 0, 2),
    ("part2", 2, 1),
    ("part3", 3, 1),
)
TRUNK_OUTPUT = "conv4_block1_out"
BRANCH_OUTPUT = "conv5_block3_out"
STRIDED_CONV5_LAYERS = ("conv5_block1_1_conv", "conv5_block1_0_conv")
# The BatchNorm closing the residual path of every ResNet50 block (convS_blockB_3_bn): 16 of them.
RESIDUAL_BN_SUFFIX = "_3_bn"
REDUCTION_DIM = 256
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# Moving-statistics momentum of every BatchNorm: PyTorch's default (its momentum=0.1), which the paper's
# implementation trained with; Keras's ResNet50 uses 0.99, whose statistics lag far behind the weights
# in short or from-scratch runs.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="mgn_tf")
class CaffePreprocess(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet channel means, as Keras's ResNet50 weights expect."""

    def call(self, inputs):
        bgr = inputs[..., ::-1]
        return bgr - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=bgr.dtype)


def xla_compiling() -> bool:
    """True while TensorFlow traces a computation that XLA will compile: a `tf.function(jit_compile=True)`
    (what Keras's `compile(jit_compile=True)` and mgn-train --xla make) or a graph under XLA's
    auto-clustering (`TF_XLA_FLAGS=--tf_xla_auto_jit=...`, `tf.config.optimizer.set_jit`)."""
    import tensorflow as tf

    # TensorFlow's own ops ask the same question this way (array_grad, cond_v2, mirrored_strategy):
    # tf.function(jit_compile=True) traces its body inside an XLAControlFlowContext.
    from tensorflow.python.ops import control_flow_util

    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return True
    if tf.executing_eagerly():  # eager ops are never clustered
        return False
    if tf.config.optimizer.get_jit():
        return True
    flags = os.environ.get("TF_XLA_FLAGS", "")
    return "tf_xla_cpu_global_jit" in flags or re.search(r"tf_xla_auto_jit=(?!-1\b|0\b)", flags) is not None


@keras.saving.register_keras_serializable(package="mgn_tf")
class BatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization computed by one fused TensorFlow op (FusedBatchNormV3) for float32 NHWC,
    except where XLA compiles it (below).

    Keras 3 composes batch normalisation from moments, rsqrt, multiplies and adds, each a pass over the
    activation in the forward and again in the backward pass; TensorFlow's fused CPU / GPU kernel does it
    in one, and its gradient in one more. Same variables, same arithmetic as `layers.BatchNormalization`:
    batch mean and biased batch variance in training (the moving variance too, as Keras updates it),
    moving statistics otherwise, moving averages `m * momentum + batch * (1 - momentum)`.

    Under XLA the layer computes the same formula as a few plain ops instead, which XLA fuses itself:
    the batch mean, then the mean squared deviation from it (two passes, tf.nn.moments), and
    y = (x - mean) * gamma / sqrt(var + eps) + beta. XLA's lowering of FusedBatchNormV3 in training
    computes the batch variance as E[x^2] - E[x]^2 in float32: for a channel whose mean is large against
    its spread (|mean| / std above ~1e3, as in networks trained from scratch) that difference cancels to
    noise or below zero, and rsqrt(var + eps) is then wrong or NaN: this ended configs/synthetic.flags
    (--xla) in NaN at its second step, on every CPU. Keras's own composition avoids the cancellation in
    the variance but keeps a milder one (it computes x * r + (beta - mean * r), r = gamma / sqrt(var +
    eps)), which the form above has not. tests/test_numerics.py holds every path to a float64 oracle in
    eager, tf.function and XLA mode.

    Anything else (another backend or dtype, a mask, renorm, synchronized statistics) also goes to the
    Keras implementation. The class keeps Keras's name because weights files name each layer's group
    after its class: files written with `layers.BatchNormalization` load into it, and the other way round.
    """

    def _supported(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (3, -1, [3], [-1])
            and inputs.dtype == "float32"
            and self.compute_dtype == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._supported(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], inputs.dtype)
        beta = self.beta if self.center else tf.zeros([channels], inputs.dtype)
        batch_statistics = bool(training and self.trainable)
        if xla_compiling():
            if batch_statistics:
                mean, variance = tf.nn.moments(inputs, axes=[0, 1, 2])
                self._update_moving_statistics(mean, variance)
            else:
                mean, variance = self.moving_mean, self.moving_variance
            return (inputs - mean) * (gamma * tf.math.rsqrt(variance + self.epsilon)) + beta
        if batch_statistics:
            outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=tf.constant([], tf.float32),
                variance=tf.constant([], tf.float32), epsilon=self.epsilon, data_format="NHWC",
                is_training=True,
            )  # fmt: skip
            # The op returns the unbiased variance for the moving average; Keras averages the biased one.
            count = tf.cast(tf.size(inputs) // channels, tf.float32)
            self._update_moving_statistics(mean, unbiased_variance * (count - 1.0) / count)
            return outputs
        outputs, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, data_format="NHWC", is_training=False,
        )  # fmt: skip
        return outputs

    def _update_moving_statistics(self, mean, variance) -> None:
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))


@keras.saving.register_keras_serializable(package="mgn_tf")
class GlobalMaxPool(layers.Layer):
    """[B, H, W, C] -> [B, C]: the maximum over the map, computed as one max-pooling window over all of it.

    Same values as `layers.GlobalMaxPooling2D`, but a gradient that XLA cannot break. GlobalMaxPooling2D
    is a reduce_max, whose TensorFlow gradient finds the maximum again by comparing every input with the
    output (equal(x, max) / count). Under XLA the input is recomputed inside the fusion that compares, and
    can differ from the value the max was taken of by an ulp: no element compares equal, the count is 0,
    and the gradient is 0 / 0 = NaN (tests/test_numerics.py shows it on a BatchNorm + ReLU map). A
    max-pooling window's gradient (MaxPoolGrad; select-and-scatter under XLA) routes the gradient to the
    arg max it finds itself. They differ only where several positions tie for the maximum: reduce_max
    shares the gradient among them, max pooling gives it to the first.
    """

    def call(self, inputs):
        window = tuple(inputs.shape[1:3])
        return ops.squeeze(ops.max_pool(inputs, pool_size=window, strides=window, padding="valid"), (1, 2))


@keras.saving.register_keras_serializable(package="mgn_tf")
class Stack(layers.Layer):
    """Stacks a list of [B, D] tensors into [B, len(list), D]."""

    def call(self, inputs):
        return ops.stack(inputs, axis=1)


def _resnet50(
    input_size: InputSize, backbone_weights: str | Path | None, zero_init_residual: bool = False
) -> keras.Model:
    if zero_init_residual and backbone_weights is not None:
        raise ValueError(
            f"zero_init_residual is for training from scratch; it would overwrite the pretrained "
            f"backbone_weights={backbone_weights!r} (use backbone_weights=None)"
        )
    if backbone_weights not in (None, "imagenet"):
        path = Path(backbone_weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone_weights={backbone_weights!r}: no such file (expected 'imagenet', None or the "
                "path of a Keras ResNet50 no-top weights file, e.g. "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5)"
            )
        backbone_weights = str(path)
    resnet = keras.applications.ResNet50(
        include_top=False, weights=backbone_weights, input_shape=input_shape(input_size)
    )
    if zero_init_residual:
        for layer in resnet.layers:
            if layer.name.endswith(RESIDUAL_BN_SUFFIX):
                layer.gamma.assign(ops.zeros_like(layer.gamma))
    return resnet


def _copy_layers(
    source: keras.Model, name: str, prefix: str, strides_one: bool, sync_bn: bool
) -> keras.Model:
    """Clones a sub-model with renamed layers (and conv5_block1 stride 1 if asked), copying the weights."""

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["name"] = prefix + layer.name
        if strides_one and layer.name in STRIDED_CONV5_LAYERS:
            config["strides"] = (1, 1)
        if isinstance(layer, layers.BatchNormalization):
            config["momentum"] = BN_MOMENTUM
            config["synchronized"] = sync_bn
            return BatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(source, clone_function=clone_layer)
    copy.name = name
    for original, cloned in zip(source.layers, copy.layers, strict=True):
        cloned.set_weights(original.get_weights())
    return copy


def _reduction(x, name: str, sync_bn: bool):
    x = layers.Conv2D(
        REDUCTION_DIM,
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.HeNormal(),
        name=f"reduce_{name}_conv",
    )(x)
    x = BatchNormalization(
        epsilon=1e-5,
        momentum=BN_MOMENTUM,
        gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02),
        synchronized=sync_bn,
        name=f"reduce_{name}_bn",
    )(x)
    x = layers.ReLU(name=f"reduce_{name}_relu")(x)
    return layers.Flatten(name=f"reduce_{name}")(x)


def build_mgn(
    num_classes: int,
    input_size: InputSize = PAPER_INPUT_SIZE,
    backbone_weights: str | Path | None = None,
    sync_bn: bool = False,
    zero_init_residual: bool = False,
    name: str = "mgn",
) -> keras.Model:
    """Builds the MGN training model.

    Args:
      num_classes: number of training identities (classifier width).
      input_size: (height, width) of the raw RGB input; height a multiple of 96, width of 16
        (`mgn_tf.geometry`).
      backbone_weights: "imagenet" (Keras's download), the path of a ResNet50 no-top weights file, or None.
      sync_bn: use synchronized BatchNormalization across replicas of a tf.distribute strategy.
      zero_init_residual: start the last BatchNorm scale of every residual block at 0, so that every
        block starts as the identity (Goyal et al. 2017; torchvision's `zero_init_residual`). For
        training from scratch only (backbone_weights=None): it trains far faster there.

    Returns:
      A model from raw RGB 0..255 images [B, H, W, 3] to a dict:
        "embedding": [B, 2048], the eight 256-d reduced features concatenated in `FEATURE_NAMES` order;
        "logits": [B, 8, num_classes], identity logits in `FEATURE_NAMES` order (heads 0-2 act on the
          2048-d pooled global features, heads 3-7 on the reduced part features);
        "triplet_features": [B, 3, 256], the reduced global features of the three branches.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    input_size = check_input_size(input_size)
    resnet = _resnet50(input_size, backbone_weights, zero_init_residual)
    trunk_src = keras.Model(resnet.input, resnet.get_layer(TRUNK_OUTPUT).output)
    branch_src = keras.Model(resnet.get_layer(TRUNK_OUTPUT).output, resnet.get_layer(BRANCH_OUTPUT).output)

    images = keras.Input(input_shape(input_size), name="images")
    x = CaffePreprocess(name="caffe_preprocess")(images)
    trunk = _copy_layers(trunk_src, "backbone_trunk", "", strides_one=False, sync_bn=sync_bn)
    shared = trunk(x)

    pooled: dict[str, object] = {}
    for branch, stripes, stride in BRANCHES:
        branch_model = _copy_layers(branch_src, f"{branch}_branch", f"{branch}_", stride == 1, sync_bn)
        fmap = branch_model(shared)
        prefix = "" if branch == "global" else f"p{stripes}_"
        pooled[f"{prefix}global"] = GlobalMaxPool(name=f"{prefix}global_max_pool")(fmap)
        rows = fmap.shape[1]
        for i, (start, end) in enumerate(stripe_rows(rows, stripes) if stripes else []):
            crop = ((start, rows - end), (0, 0))
            stripe = layers.Cropping2D(crop, name=f"p{stripes}_part{i + 1}_stripe")(fmap)
            pooled[f"p{stripes}_part{i + 1}"] = GlobalMaxPool(name=f"p{stripes}_part{i + 1}_max_pool")(stripe)

    reduced = {
        feature: _reduction(
            layers.Reshape((1, 1, -1), name=f"{feature}_as_map")(pooled[feature]), feature, sync_bn
        )
        for feature in FEATURE_NAMES
    }
    embedding = layers.Concatenate(name="embedding")([reduced[f] for f in FEATURE_NAMES])

    # N(0, 0.001) as fast-reid's classifiers: small initial logits, so training from scratch starts at
    # cross-entropy ~log(C) instead of saturating on the large max-pooled 2048-d features.
    classifier_init = keras.initializers.RandomNormal(0.0, 0.001)
    logits = [
        layers.Dense(num_classes, use_bias=False, kernel_initializer=classifier_init, name=f"classifier_{f}")(
            pooled[f] if f in TRIPLET_FEATURES else reduced[f]
        )
        for f in FEATURE_NAMES
    ]
    outputs = {
        "embedding": embedding,
        "logits": Stack(name="logits")(logits),
        "triplet_features": Stack(name="triplet_features")([reduced[f] for f in TRIPLET_FEATURES]),
    }
    return keras.Model(images, outputs, name=name)


def embedding_model(model: keras.Model) -> keras.Model:
    """The inference model: raw RGB 0..255 images [B, H, W, 3] -> the 2048-d embedding (shared weights)."""
    return keras.Model(model.input, model.get_layer("embedding").output, name=f"{model.name}_embedding")
