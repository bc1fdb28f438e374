"""ProtTrans-JAX: the ProtTrans protein language models' training and evaluation on JAX."""

import os

# TensorFlow, here for tf.data only, logs its C++ INFO and WARNING lines by default, and on a
# machine without an NVIDIA driver an error, "failed call to cuInit", at its first op of every
# command: noise there. Unless the user chose a level: errors only (2) where a GPU device node
# exists, fatal only (3) where none does; TensorFlow's real failures still reach Python as
# exceptions. Set before any TensorFlow import (`tasks` and `tfrecords_builder` import this
# package first).
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if os.path.exists("/dev/nvidiactl") else "3"
