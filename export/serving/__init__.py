"""TF Serving: models.config and the REST / gRPC clients (library code: mgn_tf.serving)."""
