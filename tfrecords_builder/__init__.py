"""Apache Beam job that turns FASTA into the space-tokenised TFRecord corpus (`python -m tfrecords_builder`)."""
