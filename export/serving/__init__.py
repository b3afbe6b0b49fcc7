"""TF Serving: an example models.config and REST / gRPC clients for the exported SavedModel."""
