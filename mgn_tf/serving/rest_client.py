"""REST client for the SavedModel served by TF Serving (`serving_default`: encoded images -> embeddings).

    python -m mgn_tf.serving.rest_client --server http://localhost:8501 --model_name mgn query/*.jpg
    python -m mgn_tf.serving.rest_client --gallery gallery_dir --top_k 5 query_dir

Sends `{"signature_name": "serving_default", "instances": [{"b64": "<base64 image>"}, ...]}` to
`POST /v1/models/<name>[/versions/<v>]:predict`: with a single (string) input the row format takes each
instance as the input's value, binary strings as `{"b64": ...}`. The answer is `{"predictions": [[2048
floats], ...]}`. Unreadable or undecodable image files are refused, by path, before anything is sent.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

from mgn_tf import cli
from mgn_tf.artifacts import SERVING_SIGNATURE
from mgn_tf.serving.common import define_client_flags, read_image_file, run_client

SIGNATURE = SERVING_SIGNATURE


def build_predict_request(images: Sequence[bytes], signature_name: str = SIGNATURE) -> dict:
    """The JSON body of a predict request (row format) for encoded images."""
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in images],
    }


def parse_predict_response(body: dict) -> np.ndarray:
    """Embeddings [N, D] float32 from a predict response; raises RuntimeError for a server error."""
    if "error" in body:
        raise RuntimeError(f"TF Serving error: {body['error']}")
    predictions = body.get("predictions", body.get("outputs"))
    if predictions is None:
        raise ValueError(f"no 'predictions' in the response (keys: {sorted(body)})")
    if predictions and isinstance(predictions[0], dict):  # several named outputs
        predictions = [p["embedding"] for p in predictions]
    return np.asarray(predictions, dtype=np.float32)


def predict_url(server: str, model_name: str, version: int | None = None) -> str:
    server = server if "://" in server else f"http://{server}"
    version_part = f"/versions/{version}" if version is not None else ""
    return f"{server.rstrip('/')}/v1/models/{model_name}{version_part}:predict"


def embed_files(
    paths: Sequence[str | os.PathLike],
    server: str = "http://localhost:8501",
    model_name: str = "mgn",
    version: int | None = None,
    batch_size: int = 32,
    timeout: float = 60.0,
) -> np.ndarray:
    """Embeds image files through the REST API, `batch_size` images per request."""
    images = [read_image_file(p) for p in paths]  # every file checked before the first request
    url = predict_url(server, model_name, version)
    outputs = []
    for start in range(0, len(images), batch_size):
        body = json.dumps(build_predict_request(images[start : start + batch_size])).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                outputs.append(parse_predict_response(json.load(response)))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"{url} answered HTTP {exc.code}: {detail[:500]}") from exc
        except urllib.error.URLError as exc:
            raise RuntimeError(f"cannot reach TF Serving at {url}: {exc.reason}") from exc
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def main(argv: list[str]) -> int:
    return run_client(argv, embed_files, errors=())


def run() -> None:
    cli.run(main, lambda: define_client_flags("http://localhost:8501", "TF Serving REST address."), __doc__)


if __name__ == "__main__":
    run()
