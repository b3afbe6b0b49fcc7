"""SGD with momentum and L2 regularisation as the paper trained it (PyTorch's `torch.optim.SGD`).

The paper's "weight decay factor for L2 regularization" adds `l2 * w` to the gradient before the
momentum buffer:  v <- momentum * v + (g + l2 * w);  w <- w - lr * v.
Keras 3's `SGD(weight_decay=...)` is decoupled instead (w <- w - lr * wd * w, outside the momentum), and
Keras's momentum buffer stores `-lr * g` (so a learning-rate drop acts one step later than in PyTorch).
This optimizer reproduces PyTorch's update exactly, including at the learning-rate steps.

Both optimizers take `lr_factors` ({variable path: factor}): those variables are updated with the
learning rate times their factor (fine-tuning: a higher rate for the new identity classifiers, as a
PyTorch parameter group would). The schedules are keyed on the optimizer's iteration count, which
checkpoints restore, so a resumed run continues at its position.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from mgn_tf.config import LR_SCHEDULES


def _factor(optimizer, variable) -> float:
    """The learning-rate factor of `variable` (update_step gets the backend variable: its Keras variable,
    which has the path, is found by the optimizer's own index)."""
    if not optimizer.lr_factors:
        return 1.0
    tracked = optimizer._trainable_variables[optimizer._get_variable_index(variable)]
    return optimizer.lr_factors.get(tracked.path, 1.0)


@keras.saving.register_keras_serializable(package="mgn_tf")
class SGDL2(keras.optimizers.Optimizer):
    """SGD, momentum with PyTorch semantics (no dampening), and coupled L2 on every trainable variable."""

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        l2: float = 5e-4,
        name: str = "sgd_l2",
        lr_factors: dict[str, float] | None = None,
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if l2 < 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.momentum = momentum
        self.l2 = l2
        self.lr_factors = dict(lr_factors or {})

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, name="momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        if (factor := _factor(self, variable)) != 1.0:
            learning_rate = ops.multiply(learning_rate, ops.cast(factor, variable.dtype))
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        velocity = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        if isinstance(variable, tf.Variable) and not isinstance(gradient, tf.IndexedSlices):
            # One kernel per variable (v <- m * v + g; w <- w - lr * v is exactly this op's update) instead
            # of six graph ops: with 666 variables the per-op cost of the unfused update is a tenth of a
            # training step at small input sizes. `velocity.value.handle` is the component on this
            # variable's device inside the strategy's update call.
            tf.raw_ops.ResourceApplyMomentum(
                var=variable.handle, accum=velocity.value.handle, lr=learning_rate, grad=gradient,
                momentum=momentum, use_locking=False, use_nesterov=False,
            )  # fmt: skip
            return
        self.assign(velocity, ops.add(ops.multiply(momentum, velocity), gradient))
        self.assign_sub(variable, ops.multiply(learning_rate, velocity))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2": self.l2, "lr_factors": self.lr_factors})
        return config


@keras.saving.register_keras_serializable(package="mgn_tf")
class AdamL2(keras.optimizers.Adam):
    """Adam with L2 added to the gradient (PyTorch's `Adam(weight_decay=...)`), not decoupled AdamW."""

    def __init__(
        self, learning_rate=3.5e-4, l2: float = 5e-4, name: str = "adam_l2",
        lr_factors: dict[str, float] | None = None, **kwargs,
    ):  # fmt: skip
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if l2 < 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = l2
        self.lr_factors = dict(lr_factors or {})

    def update_step(self, gradient, variable, learning_rate):
        if (factor := _factor(self, variable)) != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), factor)
        if self.l2:
            gradient = ops.add(
                ops.cast(gradient, variable.dtype), ops.multiply(ops.cast(self.l2, variable.dtype), variable)
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2, "lr_factors": self.lr_factors}


def make_optimizer(
    name: str, schedule, momentum: float, l2: float, lr_factors: dict[str, float] | None = None
) -> keras.optimizers.Optimizer:
    """ "sgd": the paper's SGDL2; "adam": AdamL2 (betas 0.9/0.999)."""
    if name == "sgd":
        return SGDL2(schedule, momentum=momentum, l2=l2, lr_factors=lr_factors)
    if name == "adam":
        return AdamL2(schedule, l2=l2, lr_factors=lr_factors)
    raise ValueError(f"unknown optimizer {name!r} (accepted: sgd, adam)")


def step_decay_schedule(
    base_lr: float, steps_per_epoch: int, decay_epochs: tuple[int, ...] = (40, 60), factor: float = 0.1
) -> keras.optimizers.schedules.LearningRateSchedule:
    """lr = base_lr * factor**(number of decay epochs passed), keyed on the optimizer's iteration count.

    Keyed on iterations (which checkpoints restore), so a resumed run continues at the right position.
    """
    if not decay_epochs:
        return keras.optimizers.schedules.PiecewiseConstantDecay([10**12], [base_lr, base_lr])
    # PiecewiseConstantDecay keeps values[i] up to and including boundaries[i]; the optimizer evaluates
    # the schedule at the number of steps already taken, so the first step of epoch e (index e * steps)
    # must lie just past boundary e * steps - 1.
    boundaries = [int(e) * steps_per_epoch - 1 for e in sorted(decay_epochs)]
    values = [base_lr * factor**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


@keras.saving.register_keras_serializable(package="mgn_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then step decay or a cosine to 0, per optimizer step (torchreid / fast-reid style).

    At step s (steps already taken) of a run of `epochs` x `steps_per_epoch` steps, W = warmup_epochs x
    steps_per_epoch:
      s < W:   lr = base_lr * (warmup_factor + (1 - warmup_factor) * s / W)
      "step":  lr = base_lr * factor ** (decay epochs e with s >= e * steps_per_epoch)
      "cosine": lr = base_lr * (1 + cos(pi * (s - W) / (epochs * steps_per_epoch - W))) / 2
    The cosine depends on the run's length, so such a run cannot grow its --epochs on resume.
    """

    def __init__(
        self, base_lr: float, steps_per_epoch: int, epochs: int, kind: str = "step",
        decay_epochs: tuple[int, ...] = (), factor: float = 0.1, warmup_epochs: int = 0,
        warmup_factor: float = 0.1,
    ):  # fmt: skip
        if kind not in LR_SCHEDULES:
            raise ValueError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got {kind!r}")
        self.base_lr, self.steps_per_epoch, self.epochs, self.kind = base_lr, steps_per_epoch, epochs, kind
        self.decay_epochs, self.factor = tuple(sorted(int(e) for e in decay_epochs)), factor
        self.warmup_epochs, self.warmup_factor = warmup_epochs, warmup_factor

    def __call__(self, step):
        s = ops.cast(step, "float32")
        warm = float(self.warmup_epochs * self.steps_per_epoch)
        if self.kind == "cosine":
            span = max(float(self.epochs * self.steps_per_epoch) - warm, 1.0)
            progress = ops.clip((s - warm) / span, 0.0, 1.0)
            lr = self.base_lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            passed = sum(ops.cast(s >= e * self.steps_per_epoch, "float32") for e in self.decay_epochs)
            lr = self.base_lr * ops.power(self.factor, passed) if self.decay_epochs else self.base_lr + 0 * s
        if warm:
            ramp = self.base_lr * (self.warmup_factor + (1.0 - self.warmup_factor) * s / warm)
            lr = ops.where(s < warm, ramp, lr)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
            "kind": self.kind, "decay_epochs": self.decay_epochs, "factor": self.factor,
            "warmup_epochs": self.warmup_epochs, "warmup_factor": self.warmup_factor,
        }  # fmt: skip


def learning_rate_schedule(
    base_lr: float, steps_per_epoch: int, epochs: int, kind: str = "step", decay_epochs=(40, 60),
    factor: float = 0.1, warmup_epochs: int = 0, warmup_factor: float = 0.1,
) -> keras.optimizers.schedules.LearningRateSchedule:  # fmt: skip
    """The run's schedule: the paper's step decay as before when there is no warm-up, else
    `WarmupSchedule`."""
    if kind == "step" and not warmup_epochs:
        return step_decay_schedule(base_lr, steps_per_epoch, tuple(decay_epochs), factor)
    return WarmupSchedule(
        base_lr, steps_per_epoch, epochs, kind, tuple(decay_epochs), factor, warmup_epochs, warmup_factor
    )
