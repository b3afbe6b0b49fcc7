"""ONNX export with tf2onnx's converter, run from the SavedModel in a child process.

tf2onnx holds several copies of the weights while converting, and with protobuf's default (upb) Python
backend every `update_proto` pass of its graph optimizers leaves another full copy behind in the protobuf
arenas (protocolbuffers/protobuf#10294), many times the weights' size at the peak. The child runs with the
pure-Python protobuf backend, which frees them: a fraction of that peak, identical outputs, no slower
(`benchmarks/bench_export.py --onnx_default_route` measures both).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from onnx import ModelProto, StringStringEntryProto

from mgn_tf.artifacts import EMBED_SIGNATURE, EXPORT_INFO_NAME

DEFAULT_OPSET = 17
LEAN_ENV = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
# The lean conversion of the full model peaks near 6 GB; leave room for the parent and other processes.
DEFAULT_MIN_FREE_BYTES = 8 * 2**30
log = logging.getLogger(__name__)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no /proc)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def wait_for_memory(min_free_bytes: int, timeout_s: float = 1800, poll_s: float = 15) -> None:
    """Sleeps until `min_free_bytes` of memory are available (or `timeout_s` passed, then goes on anyway)."""
    deadline = time.monotonic() + timeout_s
    while (free := available_memory_bytes()) is not None and free < min_free_bytes:
        if time.monotonic() > deadline:
            log.warning(
                "only %.1f GiB available after waiting %.0f s; converting anyway", free / 2**30, timeout_s
            )
            return
        log.warning(
            "waiting for memory: %.1f GiB available, want %.1f GiB for tf2onnx",
            free / 2**30,
            min_free_bytes / 2**30,
        )
        time.sleep(poll_s)


@dataclass
class OnnxConversion:
    """A tf2onnx conversion running in a child process; `wait()` finishes it."""

    out_path: Path
    process: subprocess.Popen
    log_path: Path
    info: dict
    started: float
    peak_rss_bytes: int | None = None
    seconds: float | None = None

    def wait(self) -> Path:
        """Waits for the child; records its peak RSS; raises RuntimeError (with the log's tail) on failure."""
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.seconds = time.perf_counter() - self.started
        self.peak_rss_bytes = usage.ru_maxrss * 1024  # Linux reports KiB
        output = self.log_path.read_text(errors="replace")
        self.log_path.unlink(missing_ok=True)
        if self.process.returncode or not self.out_path.is_file():
            tail = "\n".join(output.strip().splitlines()[-20:])
            raise RuntimeError(f"tf2onnx failed (exit {self.process.returncode}):\n{tail}")
        add_metadata(self.out_path, {EXPORT_INFO_NAME: json.dumps(self.info)})
        return self.out_path

    def cancel(self) -> None:
        """Kills the child if it still runs (e.g. another export step failed)."""
        if self.process.returncode is None:
            self.process.kill()
            os.waitpid(self.process.pid, 0)
            self.process.returncode = -9
            self.log_path.unlink(missing_ok=True)


def start_conversion(
    saved_model_dir: str | Path,
    out_path: str | Path,
    opset: int = DEFAULT_OPSET,
    info: dict | None = None,
    lean: bool = True,
) -> OnnxConversion:
    """Starts `python -m tf2onnx.convert --saved-model DIR --signature_def embed` in a child process.

    `lean=False` keeps the default protobuf backend (for measuring the difference).
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    out_path = Path(out_path)
    out_path.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "tf2onnx.convert",
        "--saved-model",
        str(saved_model_dir),
        "--signature_def",
        EMBED_SIGNATURE,
        "--opset",
        str(opset),
        "--output",
        str(out_path),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(LEAN_ENV if lean else {})}
    log_fd, log_name = tempfile.mkstemp(prefix="tf2onnx_", suffix=".log")
    with os.fdopen(log_fd, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return OnnxConversion(out_path, process, Path(log_name), info or {}, time.perf_counter())


def add_metadata(path: Path, entries: dict[str, str]) -> None:
    """Adds `metadata_props` entries to an ONNX file without parsing it.

    A serialized protobuf message appended to another is merged into it (repeated fields are
    concatenated), so appending a ModelProto that holds only metadata_props adds them in place.
    """
    extra = ModelProto(metadata_props=[StringStringEntryProto(key=k, value=v) for k, v in entries.items()])
    with path.open("ab") as f:
        f.write(extra.SerializeToString())
