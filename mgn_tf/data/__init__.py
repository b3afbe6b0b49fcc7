"""Dataset readers, the PK input pipeline and the built-in synthetic dataset."""
