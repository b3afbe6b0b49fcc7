"""gRPC client for the SavedModel served by TF Serving (needs tensorflow-serving-api, the [serving] extra).

    python -m mgn_tf.serving.grpc_client --server localhost:8500 --model_name mgn query/*.jpg
    python -m mgn_tf.serving.grpc_client --gallery gallery_dir --top_k 5 query_dir

A PredictRequest carries the encoded images as a DT_STRING tensor [N] in input "images" of the
`serving_default` signature; the response's "embedding" tensor is [N, 2048] float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mgn_tf import cli
from mgn_tf.artifacts import INPUT_KEY, OUTPUT_KEY, SERVING_SIGNATURE
from mgn_tf.serving.common import define_client_flags, read_image_file, run_client

SIGNATURE = SERVING_SIGNATURE
MAX_MESSAGE_BYTES = 64 * 2**20


def _apis():
    try:
        import grpc

        tf = cli.import_tensorflow()
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as exc:
        raise ImportError(
            f"the gRPC client needs tensorflow-serving-api ({exc}): "
            "pip install 'tensorflow-serving-api==2.21.*' "
            "(or use export/serving/rest_client.py, which needs only numpy)"
        ) from exc
    return grpc, tf, predict_pb2, prediction_service_pb2_grpc


def build_predict_request(
    images: Sequence[bytes],
    model_name: str = "mgn",
    version: int | None = None,
    signature_name: str = SIGNATURE,
):
    """A PredictRequest with the encoded images as the string tensor input "images" [N]."""
    _, tf, predict_pb2, _ = _apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[INPUT_KEY].CopyFrom(
        tf.make_tensor_proto(list(images), dtype=tf.string, shape=[len(images)])
    )
    return request


def parse_predict_response(response) -> np.ndarray:
    """Embeddings [N, D] float32 from a PredictResponse."""
    _, tf, _, _ = _apis()
    if OUTPUT_KEY not in response.outputs:
        raise ValueError(f"no {OUTPUT_KEY!r} output in the response (outputs: {sorted(response.outputs)})")
    return tf.make_ndarray(response.outputs[OUTPUT_KEY]).astype(np.float32)


def embed_files(
    paths: Sequence[str | os.PathLike],
    server: str = "localhost:8500",
    model_name: str = "mgn",
    version: int | None = None,
    batch_size: int = 32,
    timeout: float = 60.0,
) -> np.ndarray:
    """Embeds image files through the gRPC API, `batch_size` images per request."""
    grpc, _, _, prediction_service_pb2_grpc = _apis()
    images = [read_image_file(p) for p in paths]  # every file checked before the first request
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    outputs = []
    with grpc.insecure_channel(server, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for start in range(0, len(images), batch_size):
            request = build_predict_request(images[start : start + batch_size], model_name, version)
            try:
                response = stub.Predict(request, timeout=timeout)
            except grpc.RpcError as exc:
                raise RuntimeError(f"TF Serving at {server}: {exc.code().name}: {exc.details()}") from exc
            outputs.append(parse_predict_response(response))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def main(argv: list[str]) -> int:
    return run_client(argv, embed_files, errors=(ImportError,))


def run() -> None:
    cli.run(main, lambda: define_client_flags("localhost:8500", "TF Serving gRPC address."), __doc__)


if __name__ == "__main__":
    run()
