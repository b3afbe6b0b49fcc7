"""MGN (Multiple Granularity Network) for person re-identification in TensorFlow/Keras 3."""

__version__ = "0.1.0"
