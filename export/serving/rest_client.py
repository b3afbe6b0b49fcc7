"""python -m export.serving.rest_client: the REST client (mgn_tf.serving.rest_client)."""

from mgn_tf.serving.rest_client import run

if __name__ == "__main__":
    run()
