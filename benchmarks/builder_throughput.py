"""Builder and input-pipeline throughput; prints one JSON object.

    python benchmarks/builder_throughput.py                       # sample x 67 = 201,000 records
    python benchmarks/builder_throughput.py --fasta swissprot.fasta --replicas 1

1. The Beam builder (DirectRunner) on the FASTA, replicated to >= 200k records unless told
   otherwise; residues/s per worker process, with the written record count verified against
   the input count. The same records are also written by a plain single-process loop
   (`read_fasta` + `tf.io.TFRecordWriter`, no validation beyond the reader's) as the
   reference point for the cost of Beam and of the builder's checks: `beam_vs_plain_loop`.
2. The seqio pipeline on the built corpus: packed `prott5_denoise` batches of 512 tokens per
   second (the trainer's input side), and the fraction of tokens that are not padding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import timing  # noqa: E402

SAMPLE = REPO / "data" / "sample" / "uniprot_sample.fasta.gz"


def replicate(fasta: Path, replicas: int, output: Path) -> tuple[int, int]:
    """Writes `replicas` copies of the FASTA with unique ids; returns (records, residues)."""
    from prottrans_jax.fasta import read_fasta
    records = list(read_fasta(fasta))
    residues = 0
    with open(output, "w") as handle:
        for copy in range(replicas):
            for r in records:
                handle.write(f">{r.id}_copy{copy}\n{r.sequence}\n")
                residues += len(r.sequence)
    return len(records) * replicas, residues


def plain_loop(fasta: Path, output_dir: Path) -> float:
    """The reference: one process, read + normalise + write one TFRecord file."""
    import tensorflow as tf
    from prottrans_jax.fasta import read_fasta
    from prottrans_jax.vocab import normalize_sequence, space_separate
    from tfrecords_builder.tfrecord_io import protein_example
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tf.io.TFRecordWriter(str(output_dir / "train.tfrecord")) as writer:
        for r in read_fasta(fasta):
            sequence = normalize_sequence(r.sequence)
            writer.write(protein_example(r.id, space_separate(sequence), len(sequence)))
    return time.perf_counter() - started


def seqio_throughput(corpus_dir: Path, batches: int, batch_size: int, length: int) -> dict:
    from prottrans_jax.data.dataset import get_batches, get_task, task_feature_lengths
    from tasks.corpus import register_corpus
    register_corpus("bench", corpus_dir, ("prott5_denoise",))
    lengths = task_feature_lengths(get_task("bench_prott5_denoise"), length)
    iterator = get_batches("bench_prott5_denoise", "train", lengths, batch_size, seed=0,
                           num_epochs=None).as_numpy_iterator()
    next(iterator)  # graph building and first fill are start-up, not throughput
    started = time.perf_counter()
    filled = proteins = 0
    for _ in range(batches):
        batch = next(iterator)
        filled += int((batch["encoder_segment_ids"] > 0).sum())
        proteins += int(batch["encoder_segment_ids"].max(axis=1).sum())
    seconds = time.perf_counter() - started
    rows = batches * batch_size
    return {"packed_examples_per_s": round(rows / seconds, 1),
            "proteins_per_s": round(proteins / seconds, 1),
            "tokens_per_s": round(rows * length / seconds, 1),
            "non_padding_fraction": round(filled / (rows * length), 3),
            "batch_size": batch_size, "length": length, "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", type=Path, default=SAMPLE)
    parser.add_argument("--replicas", type=int, default=67)
    parser.add_argument("--num_shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1,
                        help=">1 runs DirectRunner in multi_processing mode")
    parser.add_argument("--seqio_batches", type=int, default=50)
    parser.add_argument("--work_dir", type=Path, default=None)
    args = parser.parse_args()

    from tfrecords_builder.build import build
    from tfrecords_builder.pipeline import BuildConfig

    load_before = timing.load_average()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="builder_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    fasta = work / "input.fasta"
    records, residues = replicate(args.fasta, args.replicas, fasta)

    pipeline_args = []
    if args.workers > 1:
        pipeline_args = ["--direct_running_mode=multi_processing",
                         f"--direct_num_workers={args.workers}"]
    config = BuildConfig(inputs=(str(fasta),), output_dir=str(work / "corpus"),
                         num_shards=args.num_shards, validation_fraction=0.01)
    stats = build(config, pipeline_args, overwrite=True, log=lambda *_: None)
    written = sum(stats["written"].values())
    if written != records or stats["records_read"] != records:
        raise SystemExit(f"record count mismatch: {records} in, {stats['records_read']} read, "
                         f"{written} written")
    beam_seconds = stats["seconds"]
    plain_seconds = plain_loop(fasta, work / "plain")

    result = {
        "benchmark": "builder_throughput",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "input": f"{args.fasta.name} x {args.replicas}",
        "records": records, "residues": residues, "records_written_verified": written,
        "builder": {"runner": "DirectRunner", "workers": args.workers,
                    "seconds": round(beam_seconds, 1),
                    "records_per_s": round(records / beam_seconds, 1),
                    "residues_per_s_per_worker": round(residues / beam_seconds / args.workers)},
        "plain_loop": {"seconds": round(plain_seconds, 1),
                       "residues_per_s": round(residues / plain_seconds)},
        "beam_vs_plain_loop": round(plain_seconds / beam_seconds, 3),
        "seqio_prott5_denoise": seqio_throughput(work / "corpus", args.seqio_batches, 32, 512),
        "load_average": timing.load_report(load_before),  # one run of each: figures scale with the load
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
