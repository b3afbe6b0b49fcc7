"""Process environment TensorFlow reads when it is imported; set here before that happens.

oneDNN's CPU kernels are not bit-reproducible in the first training step of a process, even single-
threaded, so `--deterministic` needs them off, and TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` only on
import. The command line parses and checks every flag without importing TensorFlow, then calls
`set_environment` and only then imports the engine. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Lines TensorFlow writes to stderr while it loads and looks for GPUs, before its log level applies
# (TF_CPP_MIN_LOG_LEVEL does not hide them): none is a problem on a machine without a GPU.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation_placer.cc",
    "TF-TRT Warning",
)


def onednn_off() -> bool:
    """Whether TensorFlow (imported or still to be imported) runs with oneDNN kernels off."""
    return os.environ.get(ONEDNN_ENV) == "0"


def set_environment(deterministic: bool) -> None:
    """With `deterministic`, turns oneDNN kernels off for the TensorFlow this process will import.

    Says so on stdout. If TensorFlow is already imported it is too late: the engine warns then.
    """
    if deterministic and not onednn_off() and "tensorflow" not in sys.modules:
        os.environ[ONEDNN_ENV] = "0"
        print(f"--deterministic: {ONEDNN_ENV}=0 (oneDNN kernels off)", flush=True)


@contextlib.contextmanager
def _stderr_without(noise: tuple[str, ...]):
    """Captures file descriptor 2 (C++ logging writes there directly) and passes on every line that
    contains none of `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not any(n in line for n in noise)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow(show_startup_log: bool = False):
    """Imports TensorFlow and Keras and lists the GPUs (where CUDA's probe prints), with the start-up lines
    of `STARTUP_NOISE` filtered from stderr unless `show_startup_log` (the tools' --tf_startup_log).
    Every other line, warnings and errors included, is passed on. Returns the tensorflow module."""
    if show_startup_log or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    with _stderr_without(STARTUP_NOISE):
        import keras  # noqa: F401  (its import loads TensorFlow's backend a second time)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    return tf
