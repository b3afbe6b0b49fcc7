"""SGD with momentum and L2 regularisation as the paper trained it (PyTorch's `torch.optim.SGD`).

The paper's "weight decay factor for L2 regularization" adds `l2 * w` to the gradient before the
momentum buffer:  v <- momentum * v + (g + l2 * w);  w <- w - lr * v.
Keras 3's `SGD(weight_decay=...)` is decoupled instead (w <- w - lr * wd * w, outside the momentum), and
Keras's momentum buffer stores `-lr * g` (so a learning-rate drop acts one step later than in PyTorch).
This optimizer reproduces PyTorch's update exactly, including at the learning-rate steps.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mgn_tf")
class SGDL2(keras.optimizers.Optimizer):
    """SGD, momentum with PyTorch semantics (no dampening), and coupled L2 on every trainable variable."""

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        l2: float = 5e-4,
        name: str = "sgd_l2",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if l2 < 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.momentum = momentum
        self.l2 = l2

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, name="momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        velocity = self.momentums[self._get_variable_index(variable)]
        self.assign(
            velocity, ops.add(ops.multiply(ops.cast(self.momentum, variable.dtype), velocity), gradient)
        )
        self.assign_sub(variable, ops.multiply(learning_rate, velocity))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2": self.l2})
        return config


@keras.saving.register_keras_serializable(package="mgn_tf")
class AdamL2(keras.optimizers.Adam):
    """Adam with L2 added to the gradient (PyTorch's `Adam(weight_decay=...)`), not decoupled AdamW."""

    def __init__(self, learning_rate=3.5e-4, l2: float = 5e-4, name: str = "adam_l2", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if l2 < 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(
                ops.cast(gradient, variable.dtype), ops.multiply(ops.cast(self.l2, variable.dtype), variable)
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def make_optimizer(name: str, schedule, momentum: float, l2: float) -> keras.optimizers.Optimizer:
    """ "sgd": the paper's SGDL2; "adam": AdamL2 (betas 0.9/0.999)."""
    if name == "sgd":
        return SGDL2(schedule, momentum=momentum, l2=l2)
    if name == "adam":
        return AdamL2(schedule, l2=l2)
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
