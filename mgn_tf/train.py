"""Train MGN:  python -m mgn_tf.train --flagfile configs/market1501.flags [--flag=value ...]

Flags -> TrainConfig (validated before any work) -> mgn_tf.engine.train. Killed runs resume from the
last checkpoint in --run_dir when started again with the same command.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from mgn_tf.config import ConfigError  # noqa: E402
from mgn_tf.flags import config_from_flags, define_train_flags  # noqa: E402

define_train_flags()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags()
        config.validate()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from mgn_tf import engine
    from mgn_tf.checkpoint import NonFiniteLossError
    from mgn_tf.data.datasets import DatasetLayoutError
    from mgn_tf.data.scan import BadDataError

    if config.deterministic and not engine.onednn_off():
        # TensorFlow (imported above with the flags) has oneDNN on; only a fresh process can turn it off.
        print(f"--deterministic: restarting with {engine.ONEDNN_ENV}=0 (oneDNN kernels off)", flush=True)
        sys.stderr.flush()
        argv = [sys.executable, "-m", "mgn_tf.train", *sys.argv[1:]]
        os.execve(sys.executable, argv, {**os.environ, engine.ONEDNN_ENV: "0"})
    engine.configure_runtime(config)
    try:
        engine.train(config)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, DatasetLayoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BadDataError as exc:
        print(
            f"error: {exc}\n(--strict_data is set; without it bad files are skipped and listed)",
            file=sys.stderr,
        )
        return 4
    return 0


if __name__ == "__main__":
    app.run(main)
