"""The serving clients' command lines: usage errors exit 2 naming the flag or path before anything is sent;
a server that cannot be reached exits 1. (Requests against a real model: tests/test_export.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port


def rest_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mgn_tf.serving.rest_client", f"--server={UNREACHABLE}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory, mini_market_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("client")
    good = sorted((mini_market_dir / "query").glob("*.jpg"))[0]
    (folder / "not_an_image.jpg").write_bytes(b"\x00\x01 plain bytes")
    (folder / "empty_gallery").mkdir()
    return {"good": good, "bad": folder / "not_an_image.jpg", "empty": folder / "empty_gallery"}


def test_rest_client_usage_errors_exit_2_naming_the_path_or_flag(images, tmp_path):
    cases = [
        ((str(tmp_path / "missing.jpg"),), "missing.jpg"),
        ((str(images["bad"]),), "not_an_image.jpg"),
        ((str(images["good"]), f"--gallery={tmp_path / 'nowhere'}"), "--gallery="),
        ((str(images["good"]), f"--gallery={images['empty']}"), "no image files"),
        ((str(images["good"]), "--top_k=0"), "--top_k=0"),
        ((str(images["good"]), "--batch_size=0"), "--batch_size=0"),
        ((), "give query image files"),
        ((str(images["good"]), "--no_such_flag"), "no_such_flag"),
    ]
    for args, expected in cases:
        result = rest_client(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and expected in errors[0], (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_rest_client_exits_1_when_the_server_cannot_be_reached(images):
    result = rest_client(str(images["good"]))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "cannot reach TF Serving" in result.stderr and "Traceback" not in result.stderr
