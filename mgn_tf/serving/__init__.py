"""Clients of the SavedModel served by TF Serving (REST, gRPC); no TensorFlow needed for REST.

The TF Serving model config lives in the repository's export/serving/models.config.
"""
