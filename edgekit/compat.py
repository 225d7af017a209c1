"""The only module that imports TensorFlow and its Keras 2 (`tf_keras`).

tensorflow-model-optimization 0.8 works only with tf-keras, so `TF_USE_LEGACY_KERAS=1` must be set
before TensorFlow is first imported; every other module gets `tf` and `keras` from here. The TFLite
interpreters are picked by the on-device runner (`edgekit.runner`), which needs no TensorFlow.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# 3: TensorFlow's C++ ERROR lines too. They either repeat an error TensorFlow also raises (and edgekit turns
# into one line) or report what needs no action: Grappler/oneDNN optimizer fallbacks during QAT training,
# libjpeg's "Premature end of JPEG data" for a file the data scan already names. `--debug` shows them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgekit.runner import native_stderr_filtered  # noqa: E402

with native_stderr_filtered():
    import tensorflow as tf
    import tf_keras as keras

    tf.get_logger().setLevel("ERROR")
    # The first device query probes CUDA, which logs an error line on machines without a GPU: do it here.
    _GPUS = tf.config.list_physical_devices("GPU")


__all__ = ["tf", "keras", "gpus"]


def gpus() -> list:
    """The GPUs TensorFlow sees (asked once, quietly, at import)."""
    return list(_GPUS)
