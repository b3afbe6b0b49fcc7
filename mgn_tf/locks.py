"""One writer per folder: an advisory lock on `<folder>/.lock`, held while a process writes there.

    with hold(run_dir, "--run_dir"):               # LockBusy at once if another process holds it
        ...
    with hold(index_dir, "--index", timeout=600):  # waits (saying for whom) up to 10 minutes
        ...

The lock is `fcntl.flock` on the file: the kernel releases it when the holder's process ends, however
it ends (kill -9 included), so a lock is never stale. The file stays (removing a lock file races with a
process that has just opened it); while held it names its holder: pid, host, start time and command,
which is what a refused process prints. Within one process, holding a folder again is free (nested holds
of one folder share the first). On a platform without `fcntl` (Windows) nothing is locked and the first
hold says so once. On NFS, Linux emulates flock with POSIX byte-range locks, which hold across hosts when
the server supports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mgn_tf.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".lock"
POLL_SECONDS = 0.2

_held: dict[str, list] = {}  # resolved folder -> [open lock file, depth]; this process's holds
_registry = threading.Lock()
_warned = False


class LockBusy(ConfigError):
    """Another process holds the folder's lock (the message names it); a command exits 2."""


def holder(directory: str | os.PathLike) -> dict | None:
    """The holder a folder's lock file names ({"pid", "host", "started", "command"}), or None."""
    try:
        text = (Path(directory) / LOCK_NAME).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def describe(record: dict | None) -> str:
    if not record:
        return "another process (it has not written its name yet)"
    return (
        f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')} "
        f"({record.get('command')})"
    )


@contextlib.contextmanager
def hold(directory: str | os.PathLike, label: str, timeout: float | None = 0.0) -> Iterator[Path]:
    """Holds `directory`'s lock (the folder is created) for the body of the `with`.

    `label` names the folder in messages (a flag such as "--run_dir=runs/a"). `timeout`: 0 raises
    LockBusy at once when another process holds it; a number of seconds waits that long (printing once
    whom it waits for) before raising; None waits for as long as it takes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    with _registry:
        if key in _held:
            _held[key][1] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield directory
        finally:
            with _registry:
                _held[key][1] -= 1
        return
    handle = _acquire(directory, label, timeout)
    with _registry:
        _held[key] = [handle, 1]
    try:
        yield directory
    finally:
        with _registry:
            _held[key][1] -= 1
            last = _held[key][1] == 0
            if last:
                del _held[key]
        if last:
            _release(handle)


def _acquire(directory: Path, label: str, timeout: float | None):
    global _warned
    path = directory / LOCK_NAME
    if fcntl is None:
        if not _warned:
            print(
                f"warning: no file locking on this platform ({sys.platform}): two processes writing "
                f"{label} at once are not detected",
                file=sys.stderr,
                flush=True,
            )
            _warned = True
        return None
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until _release
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            other = describe(holder(directory))
            if deadline is not None and time.monotonic() >= deadline:
                handle.close()
                waited = f" (waited {timeout:g} s)" if timeout else ""
                raise LockBusy(f"{label} is in use by {other}{waited}") from None
            if not announced:
                limit = "as long as it takes" if deadline is None else f"up to {timeout:g} s"
                print(f"{label} is in use by {other}: waiting {limit}", file=sys.stderr, flush=True)
                announced = True
            time.sleep(POLL_SECONDS)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": _command(),
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()
    return handle


def _command() -> str:
    """This process's command line, as typed: `python -m mgn_tf.train ...` or `mgn-train ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = f"python -m {spec.name.removesuffix('.__main__')}" if spec else Path(sys.argv[0]).name
    return " ".join([head, *sys.argv[1:]])


def _release(handle) -> None:
    if handle is None:
        return
    try:
        handle.seek(0)
        handle.truncate()  # no holder named once released
        handle.flush()
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
