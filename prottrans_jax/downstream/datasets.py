"""Loaders for the paper's downstream benchmarks, in their original distribution formats.

Every loader validates what it reads and fails with a one-line `DatasetError` naming the file
and line ("FILE:LINE: reason"); nothing is dropped silently: each loader returns the counts of
what it kept and what it set aside (e.g. DeepLoc proteins with an unknown membrane label are
kept for Q10 and only excluded from Q2).

Formats:
  * NetSurfP-2.0 CSV (`input, dssp3, dssp8, disorder, cb513_mask`): CB513, TS115, CASP12, NEW364.
  * FLIP secondary-structure zip: `splits/sequences.fasta`, `splits/sampled.fasta` (labels,
    header `>ID SET=train|test VALIDATION=True|False`), `splits/mask.fasta`.
  * DeepLoc FASTA: `>ID Location-M|S|U [test]`.
  * ProtTrans localisation CSV: `input, loc, membrane` (`id` column optional).
  * SCL2205 from PyPI `p-scldata==2025.6.0` (train / eval / heldout splits, 13 classes).
  * SCOPe ASTRAL FASTA: `>d1dlwa_ a.1.1.1 (A:) Name {Organism [TaxId: 5885]}`.
"""

import csv
import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from prottrans_jax.errors import UserError

SS3_CLASSES = ("H", "E", "C")
SS8_CLASSES = ("G", "H", "I", "B", "E", "S", "T", "C")
# DeepLoc 1.0's ten locations, in Light Attention's order.
DEEPLOC_CLASSES = (
    "Cell.membrane",
    "Cytoplasm",
    "Endoplasmic.reticulum",
    "Golgi.apparatus",
    "Lysosome/Vacuole",
    "Mitochondrion",
    "Nucleus",
    "Peroxisome",
    "Plastid",
    "Extracellular",
)
MEMBRANE_CLASSES = ("soluble", "membrane")
MEMBRANE_CODES = {"S": 0, "M": 1, "U": -1}
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
# ProtTrans maps the rare/ambiguous residues to X; everything else is an error.
_RARE_TO_X = str.maketrans("UZOB", "XXXX")
_VALID_RESIDUES = set(STANDARD_RESIDUES + "X")


class DatasetError(UserError):
    """A malformed benchmark file; the message reads "FILE:LINE: reason"."""


@dataclasses.dataclass
class ResidueSet:
    """Per-residue labelled chains. Labels are int8 class indices; `mask` marks scored residues."""

    name: str
    ids: list
    sequences: list
    ss3: list
    mask: list
    ss8: list | None = None

    def __len__(self):
        return len(self.ids)

    def subset(self, indices, name=None):
        pick = lambda xs: None if xs is None else [xs[i] for i in indices]
        return ResidueSet(
            name or self.name,
            pick(self.ids),
            pick(self.sequences),
            pick(self.ss3),
            pick(self.mask),
            pick(self.ss8),
        )


@dataclasses.dataclass
class ProteinSet:
    """Per-protein labels: `location` indexes `classes`; `membrane` is 0/1, or -1 when unknown."""

    name: str
    ids: list
    sequences: list
    location: np.ndarray
    membrane: np.ndarray
    classes: tuple

    def __len__(self):
        return len(self.ids)

    def subset(self, indices, name=None):
        indices = np.asarray(indices, dtype=int)
        return ProteinSet(
            name or self.name,
            [self.ids[i] for i in indices],
            [self.sequences[i] for i in indices],
            self.location[indices],
            self.membrane[indices],
            self.classes,
        )


def clean_sequence(sequence, where):
    """Upper-cases, maps U/Z/O/B to X and rejects anything that is not an amino acid."""
    sequence = sequence.strip().upper().translate(_RARE_TO_X)
    if not sequence:
        raise DatasetError(f"{where}: empty sequence")
    bad = sorted(set(sequence) - _VALID_RESIDUES)
    if bad:
        raise DatasetError(f"{where}: invalid residue character(s) {''.join(bad)!r}")
    return sequence


def _encode_labels(tokens, classes, where):
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[t] for t in tokens], dtype=np.int8)
    except KeyError as e:
        raise DatasetError(
            f"{where}: unknown label {e.args[0]!r} (expected one of {''.join(classes)})"
        )


def _read_fasta_text(text, path):
    """Yields (header, sequence, header_line) from FASTA text; sequences may wrap over lines."""
    header, chunks, header_line = None, [], 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if header is not None:
                yield header, "".join(chunks), header_line
            header, chunks, header_line = line[1:].strip(), [], line_number
            if not header:
                raise DatasetError(f"{path}:{line_number}: empty FASTA header")
        elif header is None:
            raise DatasetError(f"{path}:{line_number}: sequence data before the first '>' header")
        else:
            chunks.append(line)
    if header is not None:
        yield header, "".join(chunks), header_line


def _read_text(path):
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    return path.read_text()


# ---------------------------------------------------------------------------------------------
# Secondary structure.


def _csv_rows(reader, path, num_columns):
    """(line number, "FILE:LINE", row) for the data rows after the header; blank rows are
    skipped, a row with the wrong number of fields is an error."""
    for line_number, row in enumerate(reader, start=2):
        if not row:
            continue
        where = f"{path}:{line_number}"
        if len(row) != num_columns:
            raise DatasetError(f"{where}: {len(row)} fields, expected {num_columns}")
        yield line_number, where, row


def load_netsurfp_csv(path, name=None):
    """Reads the NetSurfP-2.0 CSV layout (CB513_HHblits.csv, TS115, CASP12, NEW364)."""
    path = Path(path)
    reader = csv.reader(io.StringIO(_read_text(path)), skipinitialspace=True)
    header = next(reader, None)
    expected = ["input", "dssp3", "dssp8", "disorder", "cb513_mask"]
    if header is None or [h.strip() for h in header][:3] != expected[:3]:
        raise DatasetError(f"{path}:1: header {header} is not the NetSurfP-2.0 layout {expected}")
    columns = [h.strip() for h in header]
    mask_column = "cb513_mask" if "cb513_mask" in columns else None
    ids, sequences, ss3, ss8, masks = [], [], [], [], []
    for line_number, where, row in _csv_rows(reader, path, len(columns)):
        fields = dict(zip(columns, (f.split() for f in row)))
        sequence = clean_sequence("".join(fields["input"]), where)
        n = len(sequence)
        for column in columns[1:]:
            if len(fields[column]) != n:
                raise DatasetError(
                    f"{where}: column {column!r} has {len(fields[column])} entries for {n} residues"
                )
        if mask_column:
            try:
                mask = np.array([float(v) for v in fields[mask_column]]) == 1.0
            except ValueError:
                raise DatasetError(f"{where}: non-numeric value in {mask_column!r}")
        else:
            mask = np.ones(n, dtype=bool)
        ids.append(f"{path.stem}_{line_number - 1}")
        sequences.append(sequence)
        ss3.append(_encode_labels(fields["dssp3"], SS3_CLASSES, where))
        ss8.append(_encode_labels(fields["dssp8"], SS8_CLASSES, where))
        masks.append(mask)
    if not ids:
        raise DatasetError(f"{path}:1: no records")
    return ResidueSet(name or path.stem.split("_")[0], ids, sequences, ss3, masks, ss8)


_FLIP_HEADER = re.compile(r"^(\S+)\s+SET=(train|test)\s+VALIDATION=(True|False)\s*$")


def load_flip_zip(path):
    """Reads FLIP's secondary-structure splits.zip; returns {"train", "validation", "test"}.

    The three FASTA files must describe the same records with the same lengths.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DatasetError(f"{path}:0: not a zip file")
    members = {Path(n).name: n for n in archive.namelist()}
    texts = {}
    for wanted in ("sequences.fasta", "sampled.fasta", "mask.fasta"):
        if wanted not in members:
            raise DatasetError(f"{path}:0: archive lacks {wanted} (has {sorted(members)})")
        texts[wanted] = archive.read(members[wanted]).decode()

    def where(member, line):
        return f"{path}!{members[member]}:{line}"

    sequences = {}
    for header, seq, line in _read_fasta_text(texts["sequences.fasta"], path):
        sequences[header.split()[0]] = (clean_sequence(seq, where("sequences.fasta", line)), line)
    masks = {}
    for header, seq, line in _read_fasta_text(texts["mask.fasta"], path):
        if set(seq) - {"0", "1"}:
            raise DatasetError(f"{where('mask.fasta', line)}: mask must be 0/1")
        masks[header.split()[0]] = np.frombuffer(seq.encode(), dtype=np.uint8) == ord("1")
    splits = {
        "train": ResidueSet("train", [], [], [], []),
        "validation": ResidueSet("validation", [], [], [], []),
        "test": ResidueSet("NEW364", [], [], [], []),
    }
    for header, labels, line in _read_fasta_text(texts["sampled.fasta"], path):
        here = where("sampled.fasta", line)
        match = _FLIP_HEADER.match(header)
        if not match:
            raise DatasetError(
                f"{here}: header {header!r} is not 'ID SET=train|test VALIDATION=..'"
            )
        record_id, set_name, validation = match.groups()
        if record_id not in sequences or record_id not in masks:
            raise DatasetError(f"{here}: {record_id} missing from sequences.fasta or mask.fasta")
        sequence = sequences[record_id][0]
        mask = masks[record_id]
        if not len(labels) == len(sequence) == len(mask):
            raise DatasetError(
                f"{here}: {record_id} has {len(labels)} labels, {len(sequence)} "
                f"residues and {len(mask)} mask entries"
            )
        split = (
            "test" if set_name == "test" else ("validation" if validation == "True" else "train")
        )
        target = splits[split]
        target.ids.append(record_id)
        target.sequences.append(sequence)
        target.ss3.append(_encode_labels(labels, SS3_CLASSES, here))
        target.mask.append(mask)
    labelled = sum(len(s) for s in splits.values())
    if labelled != len(sequences):
        raise DatasetError(f"{path}:0: {len(sequences)} sequences but {labelled} labelled records")
    return splits


# ---------------------------------------------------------------------------------------------
# Localisation and membrane.


def _location_index(location, classes, where, counts):
    """Maps a location name to its class; dual labels (`Cytoplasm-Nucleus`) go to the first."""
    if location in classes:
        return classes.index(location)
    first = location.split("-")[0]
    if first in classes and location.count("-") >= 1:
        counts["dual_label_mapped_to_first"] = counts.get("dual_label_mapped_to_first", 0) + 1
        return classes.index(first)
    raise DatasetError(f"{where}: unknown location {location!r} (expected one of {classes})")


def load_deeploc_fasta(path, name=None):
    """Reads DeepLoc's FASTA layout `>ID Location-M|S|U [test]`.

    Returns (proteins, test_proteins_or_None, counts). Files without a `test` flag return all
    records in the first set.
    """
    path = Path(path)
    counts = {"loaded": 0, "membrane_unknown": 0}
    train_rows, test_rows = [], []
    for header, sequence, line in _read_fasta_text(_read_text(path), path):
        where = f"{path}:{line}"
        parts = header.split()
        if len(parts) < 2 or "-" not in parts[1]:
            raise DatasetError(f"{where}: header {header!r} is not 'ID Location-M|S|U'")
        location, code = parts[1].rsplit("-", 1)
        if code not in MEMBRANE_CODES:
            raise DatasetError(f"{where}: membrane code {code!r} is not M, S or U")
        row = (
            parts[0],
            clean_sequence(sequence, where),
            _location_index(location, DEEPLOC_CLASSES, where, counts),
            MEMBRANE_CODES[code],
        )
        is_test = len(parts) > 2 and parts[2].lower() == "test"
        (test_rows if is_test else train_rows).append(row)
        counts["loaded"] += 1
        counts["membrane_unknown"] += MEMBRANE_CODES[code] == -1
    if not counts["loaded"]:
        raise DatasetError(f"{path}:0: no records")
    name = name or path.stem
    make = lambda rows, n: ProteinSet(
        n,
        [r[0] for r in rows],
        [r[1] for r in rows],
        np.array([r[2] for r in rows], dtype=np.int32),
        np.array([r[3] for r in rows], dtype=np.int32),
        DEEPLOC_CLASSES,
    )
    test = make(test_rows, name + "_test") if test_rows else None
    return make(train_rows, name), test, counts


def load_localisation_csv(path, name=None):
    """Reads the ProtTrans localisation CSV layout: `input, loc, membrane` (optional `id`).

    `input` may be space-separated residues; `membrane` is M/S/U or membrane/soluble/1/0.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(_read_text(path)), skipinitialspace=True)
    header = [h.strip().lower() for h in (next(reader, None) or [])]
    for column in ("input", "loc", "membrane"):
        if column not in header:
            raise DatasetError(f"{path}:1: missing column {column!r} in header {header}")
    aliases = {
        "m": 1,
        "membrane": 1,
        "1": 1,
        "s": 0,
        "soluble": 0,
        "0": 0,
        "u": -1,
        "": -1,
        "unknown": -1,
    }
    counts = {"loaded": 0, "membrane_unknown": 0}
    ids, sequences, locations, membranes = [], [], [], []
    for line_number, where, row in _csv_rows(reader, path, len(header)):
        fields = dict(zip(header, (f.strip() for f in row)))
        membrane = fields["membrane"].lower()
        if membrane not in aliases:
            raise DatasetError(f"{where}: membrane label {fields['membrane']!r} is not M/S/U")
        ids.append(fields.get("id") or f"{path.stem}_{line_number - 1}")
        sequences.append(clean_sequence(fields["input"].replace(" ", ""), where))
        locations.append(_location_index(fields["loc"], DEEPLOC_CLASSES, where, counts))
        membranes.append(aliases[membrane])
        counts["loaded"] += 1
        counts["membrane_unknown"] += aliases[membrane] == -1
    if not ids:
        raise DatasetError(f"{path}:1: no records")
    return ProteinSet(
        name or path.stem,
        ids,
        sequences,
        np.array(locations, dtype=np.int32),
        np.array(membranes, dtype=np.int32),
        DEEPLOC_CLASSES,
    ), counts


def load_scl2205():
    """SCL2205 from `p-scldata==2025.6.0`: {"train", "validation", "test"} (its eval/heldout).

    Read straight from the package's data files; classes decoded through its labels.json.
    """
    try:
        import scldata.loader  # noqa: F401  (fails clearly when the package is missing)
    except ImportError:
        raise DatasetError("p-scldata:0: package not installed (pip install p-scldata==2025.6.0)")
    data_dir = Path(scldata.loader.__file__).parent / "data"
    labels = json.loads((data_dir / "labels.json").read_text())["index_to_label"]
    classes = tuple(labels[str(i)] for i in range(len(labels)))
    splits = json.loads((data_dir / "splits.json").read_text())
    entries = json.loads((data_dir / "entries.json").read_text())
    csv_path = data_dir / "scl2205.csv"
    rows = {}
    with open(csv_path) as f:
        reader = csv.reader(f)
        if next(reader) != ["entry", "seq", "scl"]:
            raise DatasetError(f"{csv_path}:1: unexpected header")
        for line_number, (entry, sequence, label) in enumerate(reader, start=2):
            where = f"{csv_path}:{line_number}"
            if label not in labels:
                raise DatasetError(f"{where}: class index {label!r} not in labels.json")
            rows[entry] = (clean_sequence(sequence, where), int(label))
    result = {}
    for split, key in (("train", "trn"), ("validation", "evl"), ("test", "tst")):
        ids = [entries[str(i)] for i in splits[key]]
        result[split] = ProteinSet(
            f"SCL2205_{split}",
            ids,
            [rows[i][0] for i in ids],
            np.array([rows[i][1] for i in ids], dtype=np.int32),
            np.full(len(ids), -1, dtype=np.int32),
            classes,
        )
    return result


# ---------------------------------------------------------------------------------------------
# SCOPe (t-SNE).

_SCOPE_HEADER = re.compile(r"^(\S+)\s+([a-l])\.(\d+)\.(\d+)\.(\d+)\s")
_TAXID = re.compile(r"\[TaxId:\s*(\d+)\]")


@dataclasses.dataclass
class ScopeSet:
    ids: list
    sequences: list
    scop_class: list  # 'a'..'g' (and 'h'..'l' where present)
    taxid: list  # int, or None when the header has none


def load_scope_fasta(path):
    """Reads SCOPe ASTRAL domain FASTA; sequences are lower-case there and upper-cased here."""
    path = Path(path)
    result = ScopeSet([], [], [], [])
    for header, sequence, line in _read_fasta_text(_read_text(path), path):
        where = f"{path}:{line}"
        match = _SCOPE_HEADER.match(header)
        if not match:
            raise DatasetError(f"{where}: header {header[:60]!r} is not 'ID sccs ...'")
        taxid = _TAXID.search(header)
        result.ids.append(match.group(1))
        result.sequences.append(clean_sequence(sequence, where))
        result.scop_class.append(match.group(2))
        result.taxid.append(int(taxid.group(1)) if taxid else None)
    if not result.ids:
        raise DatasetError(f"{path}:0: no records")
    return result
