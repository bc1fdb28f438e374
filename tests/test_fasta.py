"""FASTA reader: what it accepts, and one clear file:line error per kind of malformed input."""

import gzip

import pytest

from prottrans_jax.fasta import FastaError, FastaStats, read_fasta, read_fasta_files


def write(tmp_path, text, name="in.fasta", compress=False):
    path = tmp_path / name
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def records(path, **kwargs):
    return [(r.id, r.sequence) for r in read_fasta(path, **kwargs)]


def test_multi_line_records_crlf_lower_case_and_trailing_stop(tmp_path):
    path = write(tmp_path, ">sp|P1|A desc here\r\nMKT\r\naay*\r\n\r\n>P2\nwxuzob\n")
    got = list(read_fasta(path))
    assert [(r.id, r.sequence) for r in got] == [("sp|P1|A", "MKTAAY"), ("P2", "WXUZOB")]
    assert got[0].description == "desc here" and got[0].line == 1 and got[1].line == 5


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    """Once "sequence data before the first '>' header" (the BOM is not a '>')."""
    assert records(write(tmp_path, "\ufeff>P1\nMKT\n")) == [("P1", "MKT")]
    assert records(write(tmp_path, "\ufeff>P1\nMKT\n", name="in.fa.gz", compress=True)) == [("P1", "MKT")]


def test_gzip_is_found_by_magic_bytes_not_extension(tmp_path):
    path = write(tmp_path, ">P1\nMKT\n", name="no_extension", compress=True)
    assert records(path) == [("P1", "MKT")]


def test_stats_count_what_goes_in_and_comes_out(tmp_path):
    path = write(tmp_path, ">P1\nMKT\n>P2\nMJT\n>P3\n>P1\nAA\n>P4\nMM\n")
    stats = FastaStats()
    assert records(path, policy="skip", stats=stats) == [("P1", "MKT"), ("P4", "MM")]
    assert stats.read == 5 and stats.kept == 2 and stats.residues == 5
    assert dict(stats.dropped) == {"invalid_character": 1, "empty_sequence": 1, "duplicate_id": 1}
    assert stats.read == stats.kept + sum(stats.dropped.values())


def test_several_files_in_order(tmp_path):
    a = write(tmp_path, ">A\nMK\n", name="a.fa")
    b = write(tmp_path, ">B\nKM\n", name="b.fa")
    assert [r.id for r in read_fasta_files([a, b])] == ["A", "B"]


# (name, file content, expected message with {path} for the file) -- each must fail with a
# one-line error naming file:line and what is wrong.
MALFORMED = [
    ("sequence before header", "MKT\n>P1\nMKT\n", "{path}:1: sequence data before the first '>' header"),
    ("empty id", ">\nMKT\n", "{path}:1: header has an empty id"),
    ("blank id before description", ">   \nMKT\n", "{path}:1: header has an empty id"),
    ("empty record at end", ">P1\nMKT\n>P2\n", "{path}:3: record 'P2' has an empty sequence"),
    ("empty record between records", ">P1\n>P2\nMK\n", "{path}:1: record 'P1' has an empty sequence"),
    ("record of only a stop", ">P1\n*\n", "{path}:1: record 'P1' has an empty sequence"),
    ("digit", ">P1\nMK1T\n", "{path}:2: invalid character '1' in record 'P1' (column 3)"),
    ("gap", ">P1\nMK\nA-T\n", "{path}:3: invalid character '-' in record 'P1' (column 2)"),
    ("letter J", ">P1\nMKJ\n", "{path}:2: invalid character 'J' in record 'P1' (column 3)"),
    ("space inside sequence", ">P1\nMK TA\n", "{path}:2: invalid character ' ' in record 'P1' (column 3)"),
    ("stop codon mid sequence", ">P1\nMK*TA\n", "{path}:2: invalid character '*' in record 'P1' (column 3, not at the end"),
    ("stop at end of a non-final line", ">P1\nMK*\nTA\n", "{path}:2: invalid character '*' in record 'P1' (column 3, not at the end"),
    ("two trailing stops", ">P1\nMK**\n", "{path}:2: invalid character '*' in record 'P1' (column 3, not at the end"),
    ("non-ascii letter", ">P1\nMKÄ\n", "{path}:2: invalid character 'Ä' in record 'P1' (column 3)"),
    ("comment line", ">P1\n;comment\nMK\n", "{path}:2: invalid character ';' in record 'P1' (column 1)"),
    ("duplicate id", ">P1\nMK\n>P2\nMK\n>P1\nAA\n", "{path}:5: duplicate id 'P1' (first seen at line 1)"),
    ("nucleotide-like IUPAC", ">P1\nACGTN-\n", "{path}:2: invalid character '-' in record 'P1' (column 6)"),
    ("binary data", b">P1\nMK\xff\xfe\n", "{path}:2: not UTF-8 text"),
]


@pytest.mark.parametrize("name,content,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_a_one_line_error_naming_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path, content)
    with pytest.raises(FastaError) as excinfo:
        list(read_fasta(path))
    text = str(excinfo.value)
    assert text.startswith(message.format(path=path)), text
    assert "\n" not in text


@pytest.mark.parametrize("name,content,message", MALFORMED[:-1], ids=[m[0] for m in MALFORMED[:-1]])
def test_skip_policy_drops_and_counts_instead(tmp_path, name, content, message):
    path = write(tmp_path, content)
    stats = FastaStats()
    kept = list(read_fasta(path, policy="skip", stats=stats))
    assert sum(stats.dropped.values()) >= 1
    assert stats.read == len(kept) + sum(stats.dropped.values())


def test_missing_file(tmp_path):
    with pytest.raises(FastaError, match=r"missing.fa: no such file"):
        list(read_fasta(tmp_path / "missing.fa"))


def test_truncated_gzip(tmp_path):
    data = gzip.compress(b">P1\n" + b"MKTA" * 5000 + b"\n")
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastaError, match="corrupt or truncated gzip"):
        list(read_fasta(path))


def test_unknown_policy(tmp_path):
    with pytest.raises(ValueError, match="unknown FASTA policy 'ignore'"):
        list(read_fasta(write(tmp_path, ">P\nM\n"), policy="ignore"))


def test_error_names_the_first_problem_in_file_order(tmp_path):
    path = write(tmp_path, ">P1\nMK\n>P2\nM1\n>P3\nM2\n")
    with pytest.raises(FastaError, match=r":4: invalid character '1' in record 'P2'"):
        list(read_fasta(path))
