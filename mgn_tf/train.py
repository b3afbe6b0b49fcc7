"""Train MGN:  python -m mgn_tf.train --flagfile configs/market1501.flags [--flag=value ...]  (or mgn-train)

Flags -> TrainConfig (validated before TensorFlow is imported) -> mgn_tf.engine.train, which ends with
the evaluation `python -m mgn_tf.evaluate` runs (same flags). A killed run resumes from the last
checkpoint in --run_dir when started again with the same command.
Exit codes: 0 ok, 2 bad flag or dataset, 3 non-finite loss, 4 bad image with --strict_data.
"""

from __future__ import annotations

import sys

from mgn_tf import cli
from mgn_tf.errors import ConfigError
from mgn_tf.flags import config_from_flags, define_data_flags, define_eval_flags, define_train_flags


def define_flags() -> list[str]:
    return define_data_flags() + define_train_flags() + define_eval_flags()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags()
        config.validate()
    except ConfigError as exc:
        return cli.error(exc)
    from mgn_tf import runtime

    runtime.set_environment(config.deterministic)  # before TensorFlow is imported
    from mgn_tf import engine
    from mgn_tf.checkpoint import NonFiniteLossError
    from mgn_tf.data.datasets import DatasetLayoutError
    from mgn_tf.data.scan import BadDataError

    engine.configure_runtime(config)
    try:
        engine.train(config)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, DatasetLayoutError) as exc:
        return cli.error(exc)
    except BadDataError as exc:
        print(
            f"error: {exc}\n(--strict_data is set; without it bad files are skipped and listed)",
            file=sys.stderr,
        )
        return 4
    return 0


def run() -> None:
    cli.run(main, define_flags, __doc__)


if __name__ == "__main__":
    run()
