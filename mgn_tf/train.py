"""Train MGN:  python -m mgn_tf.train --flagfile configs/market1501.flags [--flag=value ...]  (or mgn-train)

Flags -> TrainConfig (validated before TensorFlow is imported) -> mgn_tf.engine.train, which ends with
the evaluation `python -m mgn_tf.evaluate` runs (same flags). A killed run resumes from the last
checkpoint in --run_dir when started again with the same command.
Exit codes: 0 ok, 2 bad flag or dataset, 3 non-finite loss, 4 bad image (--strict_data at the scan, or
--on_bad_file=stop / no readable substitute during training).
"""

from __future__ import annotations

import shlex
import sys

from mgn_tf import cli
from mgn_tf.errors import ConfigError
from mgn_tf.flags import config_from_flags, define_data_flags, define_eval_flags, define_train_flags


def define_flags() -> list[str]:
    return define_data_flags() + define_train_flags() + define_eval_flags()


EXIT_NON_FINITE = 3
EXIT_BAD_DATA = 4
BARE_HINT = (
    "no flags given. A short CPU demo on generated data:  python -m mgn_tf.train --flagfile "
    "configs/synthetic.flags;  a dataset: --flagfile configs/<dataset>.flags --data_dir=<its folder>; "
    "every flag: --help"
)


def resume_command(argv: list[str], lr: float, overrides: tuple[str, ...]) -> str:
    """The command that resumes this run with a tenth of the learning rate (after a non-finite loss)."""
    kept = [a for a in argv[1:] if a.split("=")[0] not in ("--lr", "--resume_override")]
    names = ",".join(dict.fromkeys([*overrides, "lr"]))
    return shlex.join(
        ["python", "-m", "mgn_tf.train", *kept, f"--lr={lr / 10:g}", f"--resume_override={names}"]
    )


def main(argv: list[str]) -> int:
    if len(sys.argv) <= 1:  # an 80-epoch ImageNet run on the synthetic data is never what was meant
        return cli.error(BARE_HINT)
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags()
        config.validate()
    except ConfigError as exc:
        return cli.error(exc)
    from mgn_tf import runtime

    runtime.set_environment(config.deterministic)  # before TensorFlow is imported
    cli.import_tensorflow()
    from mgn_tf import engine
    from mgn_tf.checkpoint import NonFiniteLossError
    from mgn_tf.data.datasets import DatasetLayoutError
    from mgn_tf.data.pipeline import BadFileError
    from mgn_tf.data.scan import BadDataError

    engine.configure_runtime(config)
    try:
        engine.train(config)
    except NonFiniteLossError as exc:
        command = resume_command(sys.argv, config.lr, config.resume_override)
        print(
            f"error: {exc}\nTo resume from step {exc.resume_from} with a tenth of the learning rate:\n"
            f"  {command}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_NON_FINITE
    except (ConfigError, DatasetLayoutError) as exc:
        return cli.error(exc)
    except BadDataError as exc:
        print(
            f"error: {exc}\n(--strict_data is set; without it bad files are skipped and listed)",
            file=sys.stderr,
        )
        return EXIT_BAD_DATA
    except BadFileError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_DATA
    return 0


def run() -> None:
    cli.run(main, define_flags, __doc__)


if __name__ == "__main__":
    run()
