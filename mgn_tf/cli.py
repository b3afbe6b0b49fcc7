"""What every command shares: one way to define and parse flags, errors as one line with exit code 2,
and a --help that lists the command's own flags.

Each tool module has `main(argv) -> int` and `run()` (its console script and `python -m` entry), and
`run()` calls `mgn_tf.cli.run(main, define_flags, doc)`. Flags are defined there, not when the module is
imported, so importing a tool module (tests do) never changes the process's flags.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from absl import app, flags

F = flags.FLAGS
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")
EXIT_USAGE = 2


def error(message: object) -> int:
    """Prints `error: message` (its first line is what the user needs) and returns the usage exit code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def import_tensorflow():
    """TensorFlow, imported with its start-up noise hidden unless --tf_startup_log (`mgn_tf.runtime`)."""
    from mgn_tf.runtime import import_tensorflow as load

    return load(show_startup_log=bool(F["tf_startup_log"].value) if "tf_startup_log" in F else False)


def _parse(argv: list[str]) -> list[str]:
    try:
        return F(argv)
    except flags.Error as exc:  # unknown flag, bad value, missing flagfile
        sys.exit(error(exc))
    except SystemExit as exc:  # absl's --help exits with 1 after printing the usage
        if exc.code == 1 and any(arg.split("=")[0] in HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)
        raise


def run(main: Callable[[list[str]], int], define_flags: Callable[[], Iterable[str]], doc: str) -> None:
    """Defines the flags (`define_flags` returns the names --help lists), parses them and runs `main`.

    `doc` is the usage text of --help (the tool module's docstring), also when run as a console script.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tf_startup_log" not in F:
        flags.DEFINE_bool(
            "tf_startup_log",
            False,
            "Show TensorFlow's start-up lines (CUDA probe, CPU features) that are hidden by default.",
        )
    for name in [*define_flags(), "tf_startup_log"]:
        # absl's --help lists the key flags of the module named by sys.argv[0]: the script or console entry.
        F.register_key_flag_for_module(sys.argv[0], F[name])
    sys.modules["__main__"].__doc__ = doc  # absl's usage text; the entry may be a console script
    app.run(main, flags_parser=_parse)
