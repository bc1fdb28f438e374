"""Streaming FASTA reader with validation.

Proteomes and UniRef dumps are large and dirty, so the reader streams (plain or gzip, found by
magic bytes), accepts multi-line records, CRLF line ends, lower case and one trailing `*`, and
treats everything else that is not a protein sequence as a problem that names file:line and the
offending character. A policy decides what a problem does: `error` (default) raises
`FastaError` at the first one; `skip` drops the record and counts the reason in `FastaStats`.

`parse_fasta` is the structural parser shared by this reader and the Beam builder's splittable
source; it reports problems as values and leaves duplicate-id detection (a property of the
whole input) to its callers.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import re
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Literal

from prottrans_jax.errors import UserError
from prottrans_jax.vocab import PROTEIN_ALPHABET

Policy = Literal["error", "skip"]
POLICIES = ("error", "skip")

# Problem reasons, also the keys of FastaStats.dropped.
SEQUENCE_BEFORE_HEADER = "sequence_before_header"
EMPTY_ID = "empty_id"
EMPTY_SEQUENCE = "empty_sequence"
INVALID_CHARACTER = "invalid_character"
DUPLICATE_ID = "duplicate_id"

# '*' passes this check; parse_fasta allows it only as the last character of a record.
_INVALID = re.compile(f"[^{PROTEIN_ALPHABET}{PROTEIN_ALPHABET.lower()}*]")
_GZIP_MAGIC = b"\x1f\x8b"


class FastaError(UserError):
    """A malformed FASTA input; the message reads "FILE:LINE: what is wrong"."""


@dataclasses.dataclass(frozen=True)
class FastaRecord:
    id: str  # first word of the header
    description: str  # rest of the header
    sequence: str  # upper case, trailing '*' removed; U/Z/O/B kept (see vocab.normalize_sequence)
    path: str
    line: int  # line number of the header (1-based)


@dataclasses.dataclass(frozen=True)
class FastaProblem:
    reason: str
    path: str
    line: int
    message: str  # without the "FILE:LINE: " prefix
    record_id: str | None = None
    header_line: int | None = None  # the record's header line; None before the first header

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclasses.dataclass
class FastaStats:
    """What went in and what came out; `read == kept + sum(dropped)` always holds."""

    read: int = 0
    kept: int = 0
    residues: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "residues": self.residues,
                "dropped": dict(sorted(self.dropped.items()))}


def parse_fasta(lines: Iterable[str], path: str) -> Iterator[FastaRecord | FastaProblem]:
    """Yields a FastaRecord per well-formed record and a FastaProblem per malformed one.

    `lines` are text lines with or without their line ends, numbered from 1 (the Beam source,
    which starts mid-file, turns these into absolute numbers). Each malformed record yields one
    problem (the first found), and a run of sequence lines before the first header yields one,
    so records read = records yielded + problems yielded.
    """
    header: str | None = None
    header_line = 0
    chunks: list[tuple[int, str]] = []  # (line number, sequence text)
    problem: FastaProblem | None = None
    orphan_reported = False

    def invalid(line_number: int, record_id: str, char: str, where: str) -> FastaProblem:
        return FastaProblem(INVALID_CHARACTER, path, line_number,
                            f"invalid character {char!r} in record {record_id!r} ({where}); "
                            f"expected amino-acid letters {PROTEIN_ALPHABET}", record_id,
                            header_line)

    def finish() -> FastaRecord | FastaProblem | None:
        if header is None:
            return None
        if problem is not None:
            return problem
        record_id, _, description = header.partition(" ")
        if chunks and chunks[-1][1].endswith("*"):  # one trailing stop codon is allowed
            chunks[-1] = (chunks[-1][0], chunks[-1][1][:-1])
        for line_number, text in chunks:
            if "*" in text:
                return invalid(line_number, record_id, "*",
                               f"column {text.index('*') + 1}, not at the end of the sequence")
        sequence = "".join(text for _, text in chunks)
        if not sequence:
            return FastaProblem(EMPTY_SEQUENCE, path, header_line,
                                f"record {record_id!r} has an empty sequence", record_id,
                                header_line)
        return FastaRecord(record_id, description.strip(), sequence.upper(), path, header_line)

    line_number = 0
    for raw in lines:
        line_number += 1
        line = raw.rstrip("\r\n").rstrip(" \t")
        if line_number == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as some editors write
        if line.startswith(">"):
            done = finish()
            if done is not None:
                yield done
            header = line[1:].strip().replace("\t", " ")
            header_line, chunks, problem = line_number, [], None
            if not header:
                problem = FastaProblem(EMPTY_ID, path, line_number, "header has an empty id",
                                       header_line=line_number)
            continue
        if not line:
            continue
        if header is None:
            if not orphan_reported:  # one problem per run of orphan lines, not per line
                orphan_reported = True
                yield FastaProblem(SEQUENCE_BEFORE_HEADER, path, line_number,
                                   "sequence data before the first '>' header")
            continue
        if problem is not None:
            continue
        bad = _INVALID.search(line)
        if bad is not None:
            problem = invalid(line_number, header.partition(" ")[0], bad.group(),
                              f"column {bad.start() + 1}")
            continue
        chunks.append((line_number, line))
    done = finish()
    if done is not None:
        yield done


def _open_text_lines(path: Path) -> Iterator[str]:
    """Lines of a plain or gzip file (by magic bytes), decoded as UTF-8."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    line_number = 0
    try:
        with opener(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise FastaError(f"{path}:{line_number}: not UTF-8 text "
                                     "(is this a FASTA file?)") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise FastaError(f"{path}:{line_number + 1}: corrupt or truncated gzip data ({e})") from None


def read_fasta(path: str | Path, policy: Policy = "error",
               stats: FastaStats | None = None) -> Iterator[FastaRecord]:
    """Streams the valid records of one FASTA file.

    policy="error" raises FastaError at the first problem; "skip" drops malformed records
    and counts them in `stats.dropped` by reason. Duplicate ids are problems too (the later
    copy is the one reported or dropped).
    """
    if policy not in POLICIES:
        raise UserError(f"unknown FASTA policy {policy!r}; choose one of {POLICIES}")
    path = Path(path)
    if not path.is_file():
        raise FastaError(f"{path}: no such file")
    stats = stats if stats is not None else FastaStats()
    first_seen: dict[str, int] = {}
    for item in parse_fasta(_open_text_lines(path), str(path)):
        if isinstance(item, FastaRecord) and item.id in first_seen:
            item = FastaProblem(DUPLICATE_ID, item.path, item.line,
                                f"duplicate id {item.id!r} (first seen at line "
                                f"{first_seen[item.id]})", item.id)
        stats.read += 1
        if isinstance(item, FastaProblem):
            if policy == "error":
                raise FastaError(str(item))
            stats.dropped[item.reason] += 1
            continue
        first_seen[item.id] = item.line
        stats.kept += 1
        stats.residues += len(item.sequence)
        yield item


def read_fasta_files(paths: Iterable[str | Path], policy: Policy = "error",
                     stats: FastaStats | None = None) -> Iterator[FastaRecord]:
    """Records of several files in order; ids must be unique within each file."""
    for path in paths:
        yield from read_fasta(path, policy, stats)
