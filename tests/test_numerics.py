"""The numerics matrix: every speed path against an independent reference, in every mode it runs in.

Speed paths: mgn_tf's BatchNormalization (TensorFlow's fused op outside XLA, Keras's composition under
XLA), SGDL2's fused momentum update (ResourceApplyMomentum), the whole MGN training step built from both,
and the frozen inference graph and OpenVINO engine of a run. Modes: eager, `tf.function` and XLA
(`jit_compile=True`, what mgn-train --xla compiles). References: float64 numpy formulas written out here
(BatchNorm forward, backward and moving statistics; PyTorch's SGD), Keras's own layers with a numpy
update, and the Keras model on its variables.

`test_the_matrix_under_an_avx2_cap` runs this module again in a subprocess whose XLA and oneDNN (which
TensorFlow's and OpenVINO's CPU kernels use) may not emit AVX-512, so a developer machine with
AVX-512 / AMX also computes what an AVX2-only CPU (AMD EPYC, most laptops) computes.

The BatchNorm cases with offset channels (a mean 10^3 to 10^4 times the spread, as activations of a
network trained from scratch have) are the ones XLA's lowering of the fused op got wrong: its variance
E[x^2] - E[x]^2 cancels to noise or below zero there (NaN after rsqrt), which ended the README's first
command in NaN at its second step.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mgn_tf.model import BatchNormalization, build_mgn
from mgn_tf.optimizer import SGDL2, AdamL2
from mgn_tf.runtime import cpu_flags, isa_environment

MODES = ("eager", "function", "xla")
CAP_ENV = "MGN_NUMERICS_ISA_CAP"  # set in the capped subprocess
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def release_models():
    """Each test's models freed after it: a whole MGN and its optimizer state are ~1 GB, and an xdist
    worker runs other modules in the same process afterwards."""
    yield
    keras.backend.clear_session(free_memory=True)


def in_mode(fn, mode: str):
    """`fn` as it runs in `mode`."""
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "xla")


# --- BatchNormalization ---------------------------------------------------------------------------------

EPSILON = 1.001e-5  # Keras ResNet50's
MOMENTUM = 0.9


def bn_input(kind: str) -> np.ndarray:
    """[16, 6, 2, 8] float32. "ordinary": N(2, 3). "offset": channels whose mean is 10^3 to 3x10^3 times
    their spread, a constant channel (variance 0) and an ordinary one."""
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (16, 6, 2, 8))
    if kind == "offset":
        for c, (mean, std) in enumerate(
            [(0, 1), (100, 0.1), (300, 0.1), (-1000, 1), (1000, 0), (50, 0.05), (3000, 1), (20, 0.01)]
        ):
            x[..., c] = mean + std * rng.normal(size=x[..., c].shape)
    return x.astype(np.float32)


def bn_oracle(x, upstream, gamma, beta, moving_mean, moving_var, training: bool) -> dict[str, np.ndarray]:
    """Batch normalisation over N, H, W in float64, with the gradients of sum(upstream * y) written out."""
    x, g = x.astype(np.float64), upstream.astype(np.float64)
    axes = (0, 1, 2)
    if training:
        mean, var = x.mean(axes), x.var(axes)  # biased, as Keras normalises and averages
    else:
        mean, var = moving_mean.astype(np.float64), moving_var.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + EPSILON)
    x_hat = (x - mean) * inv_std
    out = {"y": gamma * x_hat + beta, "d_gamma": (g * x_hat).sum(axes), "d_beta": g.sum(axes)}
    if training:  # the batch statistics depend on x
        out["d_x"] = gamma * inv_std * (g - g.mean(axes) - x_hat * (g * x_hat).mean(axes))
        out["moving_mean"] = MOMENTUM * moving_mean + (1 - MOMENTUM) * mean
        out["moving_variance"] = MOMENTUM * moving_var + (1 - MOMENTUM) * var
    else:
        out["d_x"] = gamma * inv_std * g
        out["moving_mean"], out["moving_variance"] = moving_mean, moving_var
    return out


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| over the largest |expected|, per channel for activations (so the small-valued
    channels count as much as the large) and over the whole vector for per-channel quantities (gamma's
    gradient of a channel can be near 0 by chance). NaN or inf: an error of inf."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    axes = tuple(range(expected.ndim - 1)) if expected.ndim > 1 else None
    scale = np.maximum(np.abs(expected).max(axis=axes), 1e-3)
    return float((np.abs(got - expected).max(axis=axes) / scale).max())


@pytest.mark.parametrize("kind", ["ordinary", "offset"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_batchnorm_equals_the_float64_formula(mode, training, kind):
    """Outputs, the gradients of x, gamma and beta, and the moving statistics after the call."""
    x = bn_input(kind)
    channels = x.shape[-1]
    rng = np.random.default_rng(1)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    beta = rng.normal(size=channels).astype(np.float32)
    moving_mean = x.mean((0, 1, 2)) + rng.normal(0, 0.1, channels).astype(np.float32)
    moving_var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    layer = BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON)
    layer.build(x.shape)
    layer.set_weights([gamma, beta, moving_mean, moving_var])

    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs, training=training)
            loss = tf.reduce_sum(y * upstream)
        return [y, *tape.gradient(loss, [inputs, layer.gamma, layer.beta])]

    y, d_x, d_gamma, d_beta = in_mode(step, mode)(tf.constant(x))
    expected = bn_oracle(x, upstream, gamma, beta, moving_mean, moving_var, training)
    got = {"y": y, "d_x": d_x, "d_gamma": d_gamma, "d_beta": d_beta}
    got["moving_mean"], got["moving_variance"] = (v.numpy() for v in layer.weights[2:])
    # float32 on the offset channels: the batch mean is off by ~1e-4 of a spread 3x10^3 times smaller than
    # the values, which shifts x_hat and gamma's gradient; the broken lowering was off by O(1) or NaN.
    bound = 2e-3 if kind == "offset" else 1e-4
    errors = {name: relative_error(got[name], expected[name]) for name in expected}
    assert max(errors.values()) < bound, errors


def _op_types(fn, x) -> set[str]:
    graph = fn.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph._functions.values():  # the gradient's and nested functions' bodies
        types |= {node.op for node in function.cached_definition.node_def}
    return types


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_the_fused_op_runs_outside_xla_only(mode):
    """The speed path is taken where it is exact (a tf.function without XLA) and not under XLA."""
    layer = BatchNormalization()
    x = bn_input("ordinary")
    layer.build(x.shape)

    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs, training=True)
        return tape.gradient(y, inputs)

    types = _op_types(in_mode(step, mode), x)
    fused = {"FusedBatchNormV3", "FusedBatchNormGradV3"}
    assert fused <= types if mode == "function" else not types & fused, sorted(types)


# --- optimizers -----------------------------------------------------------------------------------------

GRADIENTS = [
    np.array([[0.1, 0.25, -0.3], [0.0, 1.0, -2.0]], np.float32),
    np.array([[-0.4, 0.0, 0.2], [0.5, -0.5, 0.1]], np.float32),
    np.array([[0.3, -0.1, 0.1], [-1.0, 0.2, 0.3]], np.float32),
]
W0 = np.array([[1.0, -2.0, 0.5], [0.3, 0.2, -0.1]], np.float32)


def _apply_steps(optimizer, mode: str) -> np.ndarray:
    variable = keras.Variable(W0, name="w")
    optimizer.build([variable])
    apply = in_mode(lambda g: optimizer.apply([g], [variable]), mode)
    for g in GRADIENTS:
        apply(tf.constant(g))
    assert int(optimizer.iterations.numpy()) == len(GRADIENTS)
    return variable.numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor", [1.0, 10.0])
def test_sgdl2_fused_update_equals_pytorch_sgd(mode, factor):
    """ResourceApplyMomentum (one kernel per variable) against PyTorch's SGD(momentum, weight_decay)
    written out, across a learning-rate step and with a per-variable learning-rate factor."""
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01])
    optimizer = SGDL2(schedule, momentum=0.9, l2=0.05, lr_factors={"w": factor} if factor != 1 else None)
    got = _apply_steps(optimizer, mode)
    w, v = W0.astype(np.float64), np.zeros(W0.shape)
    for step, g in enumerate(GRADIENTS):
        lr = (0.1 if step < 2 else 0.01) * factor
        v = 0.9 * v + (g + 0.05 * w)
        w = w - lr * v
    np.testing.assert_allclose(got, w, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_adam_l2_equals_its_formula(mode):
    """AdamL2 (the CPU configs' optimizer): L2 added to the gradient as PyTorch's Adam(weight_decay), then
    Keras's Adam step (its epsilon 1e-7 added to sqrt(v), not to PyTorch's bias-corrected sqrt(v_hat))."""
    got = _apply_steps(AdamL2(0.01, l2=0.1), mode)
    w, m, v = W0.astype(np.float64), np.zeros(W0.shape), np.zeros(W0.shape)
    for t, g in enumerate(GRADIENTS, start=1):
        d = g + 0.1 * w
        m, v = 0.9 * m + 0.1 * d, 0.999 * v + 0.001 * d * d
        w = w - 0.01 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(got, w, rtol=2e-6, atol=1e-7)


# --- real images -----------------------------------------------------------------------------------------

STEP_SIZE = (96, 32)


@pytest.fixture(scope="module")
def step_batch(shared_dir) -> tuple[np.ndarray, np.ndarray]:
    """8 real pedestrian crops (4 identities x 2) of mini_market1501 at 96x32: real activations, with the
    large-mean channels a from-scratch network has."""
    from mgn_tf.images import load_images

    files = sorted((shared_dir / "data" / "mini_market1501" / "bounding_box_train").glob("*.jpg"))
    by_pid: dict[str, list[Path]] = {}
    for path in files:
        by_pid.setdefault(path.name.split("_")[0], []).append(path)
    chosen = [group[:2] for group in by_pid.values() if len(group) >= 2][:4]
    assert len(chosen) == 4, "mini_market1501 needs 4 identities with 2 training images"
    images = load_images([p for group in chosen for p in group], STEP_SIZE)
    return images.astype(np.float32), np.repeat(np.arange(4), 2).astype(np.int32)


# --- inference: the frozen graph and OpenVINO ------------------------------------------------------------


@pytest.fixture(scope="module")
def inference_model():
    """A seeded model with distinct branches and BatchNorm statistics away from (0, 1), so that folding
    them into the convolutions matters."""
    from helpers.perturb import distinct_fresh_model

    model = distinct_fresh_model(4, STEP_SIZE)
    rng = np.random.default_rng(2)
    for variable in model.non_trainable_variables:
        if "moving_mean" in variable.path:
            variable.assign(rng.normal(0, 0.5, variable.shape))
        elif "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape))
    return model


@pytest.mark.parametrize("engine", ["variables xla", "tensorflow frozen", "openvino"])
def test_inference_engines_embed_like_keras(engine, inference_model, step_batch, tmp_path):
    """Each engine a run's model can run on, against Keras's eager call on the variables."""
    from mgn_tf.inference import KerasEmbedder
    from mgn_tf.model import embedding_model

    images = step_batch[0]
    expected = embedding_model(inference_model)(images, training=False).numpy()
    if engine == "variables xla":
        function = tf.function(
            lambda x: embedding_model(inference_model)(x, training=False), jit_compile=True
        )
        got = function(tf.constant(images)).numpy()
    else:
        runtime = "native" if engine == "tensorflow frozen" else "openvino"
        embedder = KerasEmbedder(inference_model, tmp_path, frozen=True, runtime=runtime)
        assert embedder.engine == engine
        got = embedder.embed(images)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert error < 1e-4 and cosine.min() > 1 - 1e-6, (error, cosine.min())


# --- the whole training step -----------------------------------------------------------------------------

STEPS = 3
LR, L2, SGD_MOMENTUM = 0.01, 5e-4, 0.9  # the paper's SGD


def _step_model(plain: bool) -> keras.Model:
    """The synthetic config's model (from scratch, residual blocks as the identity), with mgn_tf's
    BatchNormalization or, `plain`, Keras's own."""
    from mgn_tf import model as mgn_model

    keras.utils.set_random_seed(0)
    original = mgn_model.BatchNormalization
    try:
        if plain:
            mgn_model.BatchNormalization = keras.layers.BatchNormalization
        return build_mgn(4, STEP_SIZE, zero_init_residual=True)
    finally:
        mgn_model.BatchNormalization = original


def smallest_max_gap(model: keras.Model, images: np.ndarray) -> float:
    """Over every max-pooled map of `model` (training mode) and every image and channel: the smallest gap
    between the largest and second-largest value, relative to the largest (positive maxima only)."""
    from mgn_tf.model import GlobalMaxPool

    gaps = []
    call = GlobalMaxPool.call

    def record(layer, inputs):
        x = np.sort(inputs.numpy().reshape(inputs.shape[0], -1, inputs.shape[-1]), axis=1)
        top, second = x[:, -1], x[:, -2]
        positive = top > 0
        gaps.append(((top - second)[positive] / top[positive]).min(initial=np.inf))
        return call(layer, inputs)

    GlobalMaxPool.call = record
    try:
        model(images, training=True)
    finally:
        GlobalMaxPool.call = call
    return float(min(gaps))


@pytest.fixture(scope="module")
def reference_steps(step_batch) -> list[dict]:
    """STEPS steps of plain Keras: Keras's BatchNormalization, an eager gradient tape and PyTorch's SGD
    update written in numpy. For each step: the state before it and after it (every weight and BatchNorm
    statistic, the momentum buffers), its loss and the smallest relative gap between the two largest
    values of a max-pooled map."""
    from mgn_tf.trainer import MGNTrainer

    model = _step_model(plain=True)
    trainer = MGNTrainer(model)
    images, labels = step_batch
    # The optimizer's order (the trainer's trainable variables), in which the momentum buffers are compared.
    variables = trainer.trainable_variables
    velocity = [np.zeros(v.shape) for v in variables]
    state = {"weights": [w.numpy() for w in model.weights], "velocity": [np.float32(v) for v in velocity]}
    steps = []
    for _ in range(STEPS):
        gap = smallest_max_gap(model, images)
        for variable, value in zip(model.weights, state["weights"], strict=True):
            variable.assign(value)  # that call moved the BatchNorm statistics
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(trainer.compute_losses(images, labels, training=True)["loss"])
        grads = tape.gradient(loss, variables)
        for variable, grad, v in zip(variables, grads, velocity, strict=True):
            w = variable.numpy().astype(np.float64)
            v *= SGD_MOMENTUM
            v += grad.numpy() + L2 * w
            variable.assign(w - LR * v)
        # float32 copies, shared as one step's "after" and the next one's "before": 69M parameters each
        after = {"weights": [w.numpy() for w in model.weights], "velocity": [np.float32(v) for v in velocity]}
        steps.append({"loss": float(loss), "before": state, "after": after, "max_gap": gap})
        state = after
    return steps


def change_errors(got: list[np.ndarray], before: list[np.ndarray], after: list[np.ndarray]) -> np.ndarray:
    """Per tensor: ||got - after|| over the norm of the step's change to it, or over a thousandth of the
    largest change of all when that is larger (the biases of convolutions followed by BatchNorm have a
    gradient of 0 up to rounding: their change is noise)."""
    changes = [np.linalg.norm(a - b) for b, a in zip(before, after, strict=True)]
    floor = 1e-3 * max(changes)
    return np.array(
        [np.linalg.norm(g - a) / max(c, floor) for g, a, c in zip(got, after, changes, strict=True)]
    )


def cosine(got: list[np.ndarray], before: list[np.ndarray], after: list[np.ndarray]) -> float:
    """Cosine between the whole model's change and the reference's."""
    a = np.concatenate([(g - b).ravel() for g, b in zip(got, before, strict=True)])
    b = np.concatenate([(x - y).ravel() for x, y in zip(after, before, strict=True)])
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


NEAR_TIE = 1e-5  # relative gap below which float32 rounding may pick the other maximum


@pytest.mark.parametrize("mode", MODES)
def test_mgn_training_steps_equal_plain_keras(mode, step_batch, reference_steps):
    """mgn_tf's training step (fused BatchNorm or its XLA form, the fused SGD update, MGNTrainer under
    fit's train function) from the state the reference had before each of STEPS steps: the same loss
    (to 1e-5), the same change to the whole model (cosine 0.9999) and to each weight, BatchNorm statistic
    and momentum buffer (to 0.2% of the change's norm).

    Each step starts from the reference's state rather than from its own last one: rounding differences
    of 1e-5 (other kernels, other summation orders) grow a hundredfold per step in a from-scratch network
    with BatchNorm over 8 images. A step whose reference state has two positions of a max-pooled map
    within NEAR_TIE of each other is held to 10% per tensor instead: rounding decides which of them
    receives the gradient, and one such flip (one channel of one image, 2e-6 apart) changed every gradient
    upstream of it by up to 3% here, in plain Keras against float64 as much as in mgn_tf against plain
    Keras. At least one step must be free of near-ties."""
    from mgn_tf.trainer import MGNTrainer

    model = _step_model(plain=False)
    trainer = MGNTrainer(model)
    trainer.compile(
        optimizer=SGDL2(LR, momentum=SGD_MOMENTUM, l2=L2),
        run_eagerly=mode == "eager",
        jit_compile=mode == "xla",
    )
    trainer.optimizer.build(trainer.trainable_variables)
    data = tf.data.Dataset.from_tensors(step_batch)
    assert any(step["max_gap"] >= NEAR_TIE for step in reference_steps), "every step has a near-tie"
    for step, expected in enumerate(reference_steps):
        for variable, value in zip(model.weights, expected["before"]["weights"], strict=True):
            variable.assign(value)
        for buffer, value in zip(trainer.optimizer.momentums, expected["before"]["velocity"], strict=True):
            buffer.assign(value)
        loss = trainer.fit(data, epochs=1, verbose=0).history["loss"][0]
        assert loss == pytest.approx(expected["loss"], rel=1e-5), step
        weights = [w.numpy() for w in model.weights]
        assert cosine(weights, *_pair(expected, "weights")) > 0.9999, step
        bound = 2e-3 if expected["max_gap"] >= NEAR_TIE else 0.1
        errors = change_errors(weights, *_pair(expected, "weights"))
        assert np.isfinite(errors).all() and errors.max() < bound, (step, model.weights[errors.argmax()].path)
        # The momentum buffers: the step adds g + l2 * w to 0.9 of the old buffer; that term is compared.
        kept = [SGD_MOMENTUM * v for v in expected["before"]["velocity"]]
        got = [v.numpy() for v in trainer.optimizer.momentums]
        velocity = change_errors(got, kept, expected["after"]["velocity"])
        assert np.isfinite(velocity).all() and velocity.max() < bound, (step, velocity.max())


def _pair(step: dict, key: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return step["before"][key], step["after"][key]


# --- the same matrix as an AVX2-only CPU computes it -----------------------------------------------------


@pytest.mark.own_worker_unit(minutes=3)
@pytest.mark.skipif(bool(os.environ.get(CAP_ENV)), reason="already running under the cap")
@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="no AVX-512 here: the matrix above ran as on AVX2")
def test_the_matrix_under_an_avx2_cap(tmp_path):
    """This module again, in a process whose XLA and oneDNN stop at AVX2; its own first test checks that
    the cap reached them."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
               "-o", "addopts=", f"--basetemp={tmp_path / 'capped'}", str(Path(__file__))]  # fmt: skip
    env = {**isa_environment("avx2"), CAP_ENV: "AVX2"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary


@pytest.mark.skipif(not os.environ.get(CAP_ENV), reason="checks the capped subprocess")
def test_the_cap_reaches_onednn_xla_and_openvino(tmp_path):
    """In the capped process: oneDNN says AVX2, OpenVINO's convolution kernels are AVX2 ones, and XLA's
    machine code has no AVX-512 (EVEX) instruction where objdump can tell."""
    probe = r"""
import tensorflow as tf
x = tf.random.normal([2, 8, 8, 4]); w = tf.random.normal([3, 3, 4, 8])
tf.function(lambda x: tf.nn.conv2d(x, w, 1, "SAME"))(x)
y = tf.random.normal([64, 256])
tf.function(lambda y: tf.nn.relu(y @ tf.ones([256, 256])) * 2.0 + tf.exp(y), jit_compile=True)(y)
"""
    env = {
        **os.environ,
        "ONEDNN_VERBOSE": "1",
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_dump_to={tmp_path}",
    }
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    isa = [line for line in out.stdout.splitlines() if line.startswith("onednn_verbose") and ",isa:" in line]
    assert isa and isa[0].endswith("isa:Intel AVX2"), isa
    objects = list(tmp_path.glob("*.o"))
    assert objects, "XLA wrote no object file to inspect"
    try:
        code = "".join(
            subprocess.run(["objdump", "-d", str(o)], capture_output=True, text=True).stdout for o in objects
        )
    except FileNotFoundError:
        code = None
    if code is not None:
        assert not re.search(r"zmm|ymm(1[6-9]|2\d|3[01])|\{k[1-7]\}", code), "AVX-512 code under the cap"

    import openvino as ov

    model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.Conv2D(8, 3)])
    function = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([1, 8, 8, 4], tf.float32)])
    # float32 as mgn_tf.inference compiles (under the cap OpenVINO's default bfloat16 hint on an AMX CPU
    # fails to compile: "object is not initialized").
    core = ov.Core()
    converted = ov.convert_model(function.get_concrete_function())
    compiled = core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    kernels = [
        str(op.get_rt_info()["primitiveType"].astype(str))
        for op in compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    assert kernels and not any("avx512" in k or "amx" in k for k in kernels), kernels


# --- oneDNN on by default, on every x86-64 CPU -------------------------------------------------------------

ONEDNN_PROBE = r"""
import mgn_tf
import tensorflow as tf
from mgn_tf.runtime import onednn_active
x = tf.random.normal([2, 8, 8, 4]); w = tf.random.normal([3, 3, 4, 8])
tf.function(lambda x: tf.nn.conv2d(x, w, 1, "SAME"))(x)
print("active", onednn_active())
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN default: x86-64")
@pytest.mark.parametrize("setting", [None, "0"])
def test_importing_mgn_tf_turns_onednn_kernels_on_unless_the_user_chose(setting):
    """TensorFlow turns oneDNN on by itself only on AVX-512 VNNI / AMX CPUs; `import mgn_tf` turns it on
    everywhere on x86-64 (2-3x the training step on AVX2), and an explicit TF_ENABLE_ONEDNN_OPTS=0 wins.
    Truth: oneDNN's own verbose log of the convolution it executed, not mgn_tf's answer alone."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["ONEDNN_VERBOSE"] = "1"
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    out = subprocess.run(
        [sys.executable, "-c", ONEDNN_PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    executed = [line for line in out.splitlines() if line.startswith("onednn_verbose") and ",exec," in line]
    convolution = [line for line in executed if "convolution" in line]
    if setting is None:
        assert convolution and "active True" in out, out[-3000:]
    else:
        assert not convolution and "active False" in out, out[-3000:]
