"""MGN (Multiple Granularity Network) for person re-identification in TensorFlow/Keras 3."""

from mgn_tf.runtime import default_onednn_on

__version__ = "0.1.0"

# Before any mgn_tf module imports TensorFlow: on AVX2-only CPUs TensorFlow would otherwise pick its slow
# Eigen kernels (mgn_tf.runtime.default_onednn_on says why).
default_onednn_on()
