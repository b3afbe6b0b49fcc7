"""Process environment TensorFlow reads when it is imported; set here before that happens.

oneDNN's CPU kernels are not bit-reproducible in the first training step of a process, even single-
threaded, so `--deterministic` needs them off, and TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` only on
import. The command line parses and checks every flag without importing TensorFlow, then calls
`set_environment` and only then imports the engine. No TensorFlow here.
"""

from __future__ import annotations

import os
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


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
