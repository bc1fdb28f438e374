"""TFRecord framing and the protein tf.train.Example, written and read without TensorFlow ops.

The builder writes shards itself (not with Beam's WriteToTFRecord) so that shard assignment and
record order are functions of the data alone: the same input gives byte-identical output. It
reads every shard back with `count_records`, which checks each frame's CRC, so a lost or
damaged record cannot go unnoticed. Files go through Beam's FileSystems: local paths, gs://
and any other filesystem Beam supports.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import crcmod.predefined
from apache_beam.io.filesystems import FileSystems
from tensorflow.core.example import example_pb2, feature_pb2

from prottrans_jax.errors import UserError

_crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord frame: length, CRC of length, data, CRC of data."""
    length = struct.pack("<Q", len(record))
    return b"".join([length, struct.pack("<I", _masked_crc(length)),
                     record, struct.pack("<I", _masked_crc(record))])


class CorruptRecordError(UserError):
    """A TFRecord file whose framing or checksums are wrong."""


def iter_frames(handle: BinaryIO, path: str) -> Iterator[bytes]:
    """Yields the records of a TFRecord stream, verifying both CRCs of every frame."""
    index = 0
    while True:
        header = handle.read(12)
        if not header:
            return
        if len(header) < 12:
            raise CorruptRecordError(f"{path}: record {index}: truncated length header")
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if _masked_crc(length_bytes) != length_crc:
            raise CorruptRecordError(f"{path}: record {index}: bad length checksum")
        (length,) = struct.unpack("<Q", length_bytes)
        body = handle.read(length + 4)
        if len(body) < length + 4:
            raise CorruptRecordError(f"{path}: record {index}: truncated data")
        data, data_crc = body[:length], struct.unpack("<I", body[length:])[0]
        if _masked_crc(data) != data_crc:
            raise CorruptRecordError(f"{path}: record {index}: bad data checksum")
        yield data
        index += 1


def protein_example(record_id: str, spaced_sequence: str, length: int) -> bytes:
    """The corpus record: id (bytes), sequence ("M K T ...", bytes), length (int64)."""
    example = example_pb2.Example(features=feature_pb2.Features(feature={
        "id": feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[record_id.encode()])),
        "sequence": feature_pb2.Feature(
            bytes_list=feature_pb2.BytesList(value=[spaced_sequence.encode()])),
        "length": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[length])),
    }))
    return example.SerializeToString(deterministic=True)


def parse_protein_example(data: bytes) -> tuple[str, str, int]:
    """(id, spaced sequence, length) of a serialized corpus record."""
    feature = example_pb2.Example.FromString(data).features.feature
    return (feature["id"].bytes_list.value[0].decode(),
            feature["sequence"].bytes_list.value[0].decode(),
            int(feature["length"].int64_list.value[0]))


def write_records(path: str, records: list[bytes]) -> None:
    """Writes serialized records as one TFRecord file (uncompressed)."""
    with FileSystems.create(path, mime_type="application/octet-stream") as handle:
        for record in records:
            handle.write(frame(record))


def read_records(path: str) -> Iterator[bytes]:
    with FileSystems.open(path, mime_type="application/octet-stream") as handle:
        yield from iter_frames(handle, path)


def count_records(path: str, check_examples: bool = True) -> tuple[int, int]:
    """(records, residues) in one shard, read back from storage with CRC checks.

    With check_examples, each record must parse and its `length` must equal the number of
    residues in `sequence`.
    """
    records = residues = 0
    for data in read_records(path):
        if check_examples:
            record_id, sequence, length = parse_protein_example(data)
            if len(sequence.split(" ")) != length:
                raise CorruptRecordError(
                    f"{path}: record {records} ({record_id!r}): length {length} does not match "
                    "its sequence")
            residues += length
        records += 1
    return records, residues
