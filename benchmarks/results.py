"""Where the benchmark scripts write their figures: docs/results/<name>.json and a Markdown table beside
it, each saying which command on which machine produced it. The README links these files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "results"
sys.path.insert(0, str(REPO))

from mgn_tf.runtime import ISA_CAPS, cpu_flags  # noqa: E402


def parse_isas(parser, value: str) -> list[str]:
    """The benchmarks' --isa: distinct names of mgn_tf.runtime.ISA_CAPS, comma-separated."""
    isas = value.split(",")
    if set(isas) - set(ISA_CAPS) or len(set(isas)) < len(isas):
        parser.error(f"--isa={value}: a comma-separated list of distinct {', '.join(ISA_CAPS)}")
    return isas


def machine() -> dict:
    """CPU model and count, Python and library versions of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "tensorflow", "keras", "onnxruntime", "tf2onnx"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    flags = cpu_flags()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return {"cpu": cpu, "cpus": os.cpu_count(), "isa": isa, "versions": versions}


def write(name: str, title: str, data: dict, table: str, notes: str = "") -> Path:
    """Writes docs/results/<name>.json (data + run info) and <name>.md (title, run info, table, notes)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    info = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({**info, **data}, indent=2, default=str) + "\n")
    m = info["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    header = (
        f"# {title}\n\nWritten by `{info['command']}` on {info['date']}: {m['cpu']}, {m['cpus']} CPUs "
        f"({', '.join(m['isa']) or 'no x86 ISA flags'}); "
        f"{versions}. Data: [{path.name}]({path.name}).\n\n"
    )
    (RESULTS_DIR / f"{name}.md").write_text(
        header + table.rstrip() + "\n" + (f"\n{notes.rstrip()}\n" if notes else "")
    )
    return path
