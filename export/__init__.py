"""The export and serving tools of the repository (not installed: the library is `mgn_tf.export`).

python -m export --weights RUN_DIR --out DIR           # = mgn-export; see --help
python -m export.serving.rest_client --server ...      # = mgn-rest-client
python -m export.serving.grpc_client --server ...      # = mgn-grpc-client
export/serving/models.config                           # TF Serving model config for the exported model
"""
