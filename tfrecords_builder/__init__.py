"""Apache Beam job that turns FASTA into the space-tokenised TFRecord corpus (`python -m tfrecords_builder`)."""

import prottrans_jax  # noqa: F401  (first: it quiets TensorFlow's CUDA noise on CPU machines)
