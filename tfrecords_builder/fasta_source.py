"""A splittable Beam source of FASTA records.

UniRef and BFD arrive as single files of tens to hundreds of GB, so one reader per file does
not scale: uncompressed files are split into byte ranges, and a record belongs to the range
that holds the first byte of its header line (the `ReadFromText` scheme, with records instead
of lines). Gzip files cannot be split and are read whole. Parsing and validation are
`prottrans_jax.fasta.parse_fasta`, the same code the standalone reader runs.

Elements are plain tuples (cheap to pickle between stages):
  ("record", path, offset, id, description, sequence)  offset = header byte offset
  ("problem", path, line, reason, message, id, offset)  offset = its record's header offset
Line numbers are exact: a range that starts mid-file counts the newlines before it, but only
when it has a problem to report, so clean inputs never pay for it.

A compressed file that does not decompress (corrupt, or plain text named `.gz`) or whose
stream ends early (truncated: Beam's reader returns what it could decompress and stops) is a
problem of its own (CORRUPT_INPUT, TRUNCATED_INPUT) that fails the build under any policy:
the records after the damage are unknown, and the last one read may be cut short.
"""

from __future__ import annotations

import lzma
import zlib
from typing import Iterator

from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from prottrans_jax.fasta import FastaProblem, parse_fasta

RECORD = "record"
PROBLEM = "problem"
CORRUPT_INPUT = "corrupt_input"
TRUNCATED_INPUT = "truncated_input"
DECOMPRESSION_ERRORS = (zlib.error, lzma.LZMAError, EOFError, OSError)
UTF8_BOM = b"\xef\xbb\xbf"


def newlines_before(path: str, offset: int, compression: str = CompressionTypes.AUTO) -> int:
    """Number of newline bytes in the first `offset` bytes of a file (error paths only)."""
    count, remaining = 0, offset
    with FileSystems.open(path, compression_type=compression) as handle:
        while remaining > 0:
            block = handle.read(min(remaining, 1 << 22))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count


class FastaSource(filebasedsource.FileBasedSource):
    """Reads the FASTA files matching a pattern; splittable where uncompressed."""

    def __init__(self, file_pattern: str, min_bundle_size: int = 0, validate: bool = True):
        super().__init__(file_pattern, min_bundle_size=min_bundle_size,
                         compression_type=CompressionTypes.AUTO, splittable=True,
                         validate=validate)

    def read_records(self, file_name: str, range_tracker) -> Iterator[tuple]:
        start = range_tracker.start_position()
        header_offsets: dict[int, int] = {}  # relative line number -> byte offset of header

        with self.open_file(file_name) as handle:
            position = 0
            if start > 0:
                handle.seek(start - 1)
                # Skip the rest of the line that holds byte start-1: a line starting at or after
                # `start` is the first one this range may look at.
                position = start - 1 + len(handle.readline())
            first_header: list[int] = []  # byte offset of the range's first header
            first_absolute_line: list[int] = []  # its line number, computed lazily, at most once
            lines_read = [0]  # every line this range read (a compressed file is one range)

            def lines() -> Iterator[str]:
                nonlocal position
                relative = 0
                seen_header = start == 0  # mid-file: skip the tail of the previous record
                while True:
                    raw = handle.readline()
                    if not raw:
                        return
                    lines_read[0] += 1
                    line_start, position = position, position + len(raw)
                    if line_start == 0 and raw.startswith(UTF8_BOM):  # as some editors write
                        raw, line_start = raw[len(UTF8_BOM):], len(UTF8_BOM)
                    if raw.startswith(b">"):
                        if not range_tracker.try_claim(line_start):
                            return
                        seen_header = True
                        header_offsets[relative + 1] = line_start
                        if not first_header:
                            first_header.append(line_start)
                    elif not seen_header:
                        continue
                    relative += 1
                    yield raw.decode("utf-8", errors="replace")

            def absolute(line: int) -> int:
                if start == 0:
                    return line
                if not first_absolute_line:
                    first_absolute_line.append(newlines_before(file_name, first_header[0]) + 1)
                return first_absolute_line[0] + line - 1

            try:
                for item in parse_fasta(lines(), file_name):
                    if isinstance(item, FastaProblem):
                        offset = (header_offsets.pop(item.header_line)
                                  if item.header_line is not None else 0)
                        yield (PROBLEM, file_name, absolute(item.line), item.reason, item.message,
                               item.record_id, offset)
                    else:
                        offset = header_offsets.pop(item.line)
                        yield (RECORD, file_name, offset, item.id, item.description, item.sequence)
            except DECOMPRESSION_ERRORS as err:
                yield (PROBLEM, file_name, lines_read[0] + 1, CORRUPT_INPUT,
                       f"cannot decompress ({type(err).__name__}: {err}): the file is corrupt, or not "
                       "the compression its name says", None, -1)
                return
            decompressor = getattr(handle, "_decompressor", None)  # Beam's CompressedFile
            if decompressor is not None and not getattr(decompressor, "eof", True):
                yield (PROBLEM, file_name, lines_read[0], TRUNCATED_INPUT,
                       "the compressed stream ends before its end marker: the file is truncated "
                       "(its last record may be cut short)", None, -1)
