"""python -m export.serving.grpc_client: the gRPC client (mgn_tf.serving.grpc_client)."""

from mgn_tf.serving.grpc_client import run

if __name__ == "__main__":
    run()
