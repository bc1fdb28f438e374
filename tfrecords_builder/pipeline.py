"""The Beam pipeline: FASTA -> validated, normalised, split, sharded TFRecords.

Every record read leaves the pipeline either written or dropped with a reason, and the
driver (`build.py`) checks that `read == written + dropped` and counts the written records
back from storage. Shard assignment, split and record order depend only on the sequence and
its id, so the same input gives byte-identical shards on any runner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from prottrans_jax.fasta import DUPLICATE_ID
from prottrans_jax.vocab import RARE_TO_X, normalize_sequence, space_separate
from tfrecords_builder import tfrecord_io
from tfrecords_builder.fasta_source import CORRUPT_INPUT, RECORD, TRUNCATED_INPUT, FastaSource

TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)
TOO_SHORT, TOO_LONG, DUPLICATE_SEQUENCE = "too_short", "too_long", "duplicate_sequence"
# Reasons that are requested filters, not malformed input: never an error under policy=error.
FILTER_REASONS = (TOO_SHORT, TOO_LONG, DUPLICATE_SEQUENCE)
# Damaged inputs: the build fails whatever the policy (fasta_source.py).
FATAL_REASONS = (CORRUPT_INPUT, TRUNCATED_INPUT)
# Length histogram bin edges (residues); the last bin is open.
LENGTH_BINS = (1, 50, 100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 5000, 10000)
MAX_EXAMPLE_PROBLEMS = 20


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    inputs: tuple[str, ...]
    output_dir: str
    num_shards: int = 16
    validation_fraction: float = 0.01
    min_length: int = 1
    max_length: int | None = None
    dedupe: bool = False
    policy: str = "error"
    text_layout: bool = False

    def shard_name(self, split: str, shard: int, kind: str = "tfrecord") -> str:
        return f"{split}.{kind}-{shard:05d}-of-{self.num_shards:05d}"


def _drop(reason: str, path: str, message: str, *, line: int | None = None,
          offset: int | None = None, record_id: str | None = None,
          first: tuple[str, int] | None = None) -> dict:
    """A dropped record. `offset` is its header's byte offset (orders reports; stands in for
    `line` where the line is not known); `first` locates the copy that was kept, and
    `{first}` in the message is where it goes."""
    return {"reason": reason, "path": path, "line": line, "offset": offset,
            "message": message, "id": record_id, "first": first}


def sequence_digest(sequence: str) -> bytes:
    return hashlib.sha256(sequence.encode()).digest()


def assign_split(digest: bytes, validation_fraction: float) -> str:
    """Split from the sequence hash, so identical sequences always land in the same split."""
    return VALIDATION if int.from_bytes(digest[:8], "big") < validation_fraction * 2**64 else TRAIN


def assign_shard(digest: bytes, num_shards: int) -> int:
    return int.from_bytes(digest[8:16], "big") % num_shards


def length_histogram(lengths: Iterable[int]) -> list[int]:
    counts = [0] * len(LENGTH_BINS)
    for length in lengths:
        index = 0
        while index + 1 < len(LENGTH_BINS) and length >= LENGTH_BINS[index + 1]:
            index += 1
        counts[index] += 1
    return counts


class NormalizeAndFilter(beam.DoFn):
    """Maps U/Z/O/B to X and applies the length bounds; drops go to the 'dropped' output."""

    def __init__(self, min_length: int, max_length: int | None):
        self.min_length, self.max_length = min_length, max_length

    def process(self, item):
        _, path, offset, record_id, _, sequence = item
        length = len(sequence)
        where = f"record {record_id!r} of length {length}"
        if length < self.min_length:
            yield beam.pvalue.TaggedOutput("dropped", _drop(
                TOO_SHORT, path, f"{where} is shorter than --min_length {self.min_length}",
                offset=offset, record_id=record_id))
        elif self.max_length is not None and length > self.max_length:
            yield beam.pvalue.TaggedOutput("dropped", _drop(
                TOO_LONG, path, f"{where} is longer than --max_length {self.max_length}",
                offset=offset, record_id=record_id))
        else:
            rare = sum(sequence.count(c) for c in RARE_TO_X)
            yield (path, offset, record_id, normalize_sequence(sequence), rare)


def keep_first(group, reason: str, message: str) -> Iterator:
    """Keeps the record that comes first in input order; the others are dropped with `reason`.

    `message` is formatted with `id`; it may hold `{first}` for the kept copy's location.
    """
    _, records = group
    ordered = sorted(records, key=lambda r: (r[0], r[1]))
    yield ordered[0]
    first = (ordered[0][0], ordered[0][1])
    for path, offset, record_id, _, _ in ordered[1:]:
        yield beam.pvalue.TaggedOutput("dropped", _drop(
            reason, path, message.replace("{id}", repr(record_id)), offset=offset,
            record_id=record_id, first=first))


class WriteShard(beam.DoFn):
    """Writes one shard, records sorted by (sequence hash, id); yields its manifest row."""

    def __init__(self, config: BuildConfig, work_dir: str):
        self.config, self.work_dir = config, work_dir

    def process(self, group):
        (split, shard), rows = group
        rows = sorted(rows)
        payloads, lengths, rare = [], [], 0
        for _, record_id, sequence, rare_count in rows:
            payloads.append(tfrecord_io.protein_example(
                record_id, space_separate(sequence), len(sequence)))
            lengths.append(len(sequence))
            rare += rare_count
        directory = self.work_dir.rstrip("/") + "/"
        tfrecord_io.write_records(directory + self.config.shard_name(split, shard), payloads)
        if self.config.text_layout:
            write_text_layout(directory + self.config.shard_name(split, shard, "txt"),
                              [space_separate(seq) for _, _, seq, _ in rows])
        yield {"split": split, "shard": shard, "records": len(rows), "residues": sum(lengths),
               "rare_residues": rare, "length_histogram": length_histogram(lengths),
               "min_length": min(lengths), "max_length": max(lengths)}


def write_text_layout(path: str, spaced_sequences: list[str]) -> None:
    """The paper's text layout: one protein per line, a blank line between proteins."""
    with FileSystems.create(path, mime_type="text/plain") as handle:
        handle.write("".join(f"{s}\n\n" for s in spaced_sequences).encode())


def _write_json(pcoll, path: str, label: str):
    """Writes a small PCollection as one JSON list file, for the driver to read back."""
    return (pcoll
            | f"{label}List" >> beam.combiners.ToList()
            | f"{label}Json" >> beam.Map(lambda rows: json.dumps(rows, sort_keys=True))
            | f"{label}Write" >> beam.io.WriteToText(path, shard_name_template=""))


def build_pipeline(pipeline: beam.Pipeline, config: BuildConfig, work_dir: str) -> None:
    """Adds the builder's transforms; the results land in `work_dir`."""
    work = work_dir.rstrip("/") + "/"
    reads = [pipeline | f"Read{i}" >> beam.io.Read(FastaSource(pattern))
             for i, pattern in enumerate(config.inputs)]
    items = reads | "FlattenInputs" >> beam.Flatten()
    _write_json(items | "CountRead" >> beam.combiners.Count.Globally(), work + "read.json",
                "Read")

    records, problems = items | "ByKind" >> beam.Partition(
        lambda item, _: 0 if item[0] == RECORD else 1, 2)
    problem_drops = problems | "ProblemRows" >> beam.Map(
        lambda p: _drop(p[3], p[1], p[4], line=p[2], record_id=p[5], offset=p[6]))

    normalized = records | "Normalize" >> beam.ParDo(
        NormalizeAndFilter(config.min_length, config.max_length)).with_outputs(
            "dropped", main="kept")
    drops = [problem_drops, normalized.dropped]

    unique = (normalized.kept
              | "KeyById" >> beam.Map(lambda r: (r[2], r))
              | "GroupById" >> beam.GroupByKey()
              | "FirstId" >> beam.FlatMap(
                  keep_first, DUPLICATE_ID, "duplicate id {id} (first seen at {first})"
              ).with_outputs("dropped", main="kept"))
    drops.append(unique.dropped)
    kept = unique.kept
    if config.dedupe:
        deduped = (kept
                   | "KeyBySequence" >> beam.Map(lambda r: (sequence_digest(r[3]), r))
                   | "GroupBySequence" >> beam.GroupByKey()
                   | "FirstSequence" >> beam.FlatMap(
                       keep_first, DUPLICATE_SEQUENCE,
                       "record {id} repeats the sequence of the record at {first} (--dedupe)"
                   ).with_outputs("dropped", main="kept"))
        drops.append(deduped.dropped)
        kept = deduped.kept

    def route(record):
        _, _, record_id, sequence, rare = record
        digest = sequence_digest(sequence)
        key = (assign_split(digest, config.validation_fraction),
               assign_shard(digest, config.num_shards))
        return key, (digest, record_id, sequence, rare)

    manifest = (kept
                | "Route" >> beam.Map(route)
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(WriteShard(config, work_dir)))
    _write_json(manifest, work + "manifest.json", "Manifest")

    all_drops = drops | "FlattenDrops" >> beam.Flatten()
    _write_json(all_drops | "DropReasons" >> beam.Map(lambda d: d["reason"])
                | "CountReasons" >> beam.combiners.Count.PerElement(),
                work + "dropped.json", "Dropped")
    examples = (all_drops
                | "Problems" >> beam.Filter(lambda d: d["reason"] not in FILTER_REASONS)
                | "FirstProblems" >> beam.combiners.Top.Smallest(  # damaged inputs first
                    MAX_EXAMPLE_PROBLEMS,
                    key=lambda d: (d["reason"] not in FATAL_REASONS, d["path"], d["offset"]))
                | "Flat" >> beam.FlatMap(lambda rows: rows))
    _write_json(examples, work + "problems.json", "ProblemExamples")
