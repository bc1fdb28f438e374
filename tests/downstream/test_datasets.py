"""Loaders: the original formats, clear one-line errors on malformed files, real data counts."""

import zipfile

import numpy as np
import pytest

from prottrans_jax.downstream import datasets

CSV_HEADER = "input, dssp3, dssp8, disorder, cb513_mask\n"


def test_netsurfp_csv_reads_labels_and_mask(tmp_path):
    path = tmp_path / "mini.csv"
    path.write_text(CSV_HEADER + "M K U,H E C,G B C,0 0 0,1.0 0.0 1.0\n")
    data = datasets.load_netsurfp_csv(path, name="mini")
    assert data.sequences == ["MKX"]  # U -> X
    assert data.ss3[0].tolist() == [0, 1, 2]
    assert data.ss8[0].tolist() == [0, 3, 7]
    assert data.mask[0].tolist() == [True, False, True]


@pytest.mark.parametrize(
    "row, reason",
    [
        ("M K,H E C,G B C,0 0 0,1 1 1\n", "column 'dssp3' has 3 entries for 2 residues"),
        ("M K J,H E C,G B C,0 0 0,1 1 1\n", "invalid residue character(s) 'J'"),
        ("M K A,H Q C,G B C,0 0 0,1 1 1\n", "unknown label 'Q'"),
        ("M K A,H E C,G B C,0 0 0\n", "4 fields, expected 5"),
    ],
)
def test_netsurfp_csv_errors_name_file_and_line(tmp_path, row, reason):
    path = tmp_path / "bad.csv"
    path.write_text(CSV_HEADER + "M,H,H,0,1\n" + row)
    with pytest.raises(datasets.DatasetError) as error:
        datasets.load_netsurfp_csv(path)
    assert str(error.value).startswith(f"{path}:3: ")
    assert reason in str(error.value)
    assert "\n" not in str(error.value)


def _flip_zip(path, sampled, mask="111\n", sequences="MKA\n"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("splits/sequences.fasta", ">a\n" + sequences)
        archive.writestr("splits/sampled.fasta", sampled)
        archive.writestr("splits/mask.fasta", ">a\n" + mask)


def test_flip_zip_splits_and_errors(tmp_path):
    good = tmp_path / "good.zip"
    _flip_zip(good, ">a SET=train VALIDATION=True\nHEC\n")
    splits = datasets.load_flip_zip(good)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [0, 1, 0]
    assert splits["validation"].ss3[0].tolist() == [0, 1, 2]
    bad = tmp_path / "bad.zip"
    _flip_zip(bad, ">a SET=train VALIDATION=True\nHE\n")
    with pytest.raises(datasets.DatasetError, match=r"bad.zip!splits/sampled.fasta:1: a has 2 "):
        datasets.load_flip_zip(bad)
    header = tmp_path / "header.zip"
    _flip_zip(header, ">a SET=dev\nHEC\n")
    with pytest.raises(datasets.DatasetError, match="is not 'ID SET=train"):
        datasets.load_flip_zip(header)


def test_deeploc_fasta_labels_and_errors(tmp_path):
    path = tmp_path / "deeploc.fasta"
    path.write_text(
        ">P1 Nucleus-U\nMKA\nMK\n>P2 Cell.membrane-M test\nMKV\n>P3 Cytoplasm-Nucleus-S\nMMM\n"
    )
    train, test, counts = datasets.load_deeploc_fasta(path)
    assert train.ids == ["P1", "P3"] and train.sequences[0] == "MKAMK"
    assert train.location.tolist() == [6, 1]  # dual label -> first location
    assert train.membrane.tolist() == [-1, 0]
    assert test.ids == ["P2"] and test.membrane.tolist() == [1]
    assert counts == {"loaded": 3, "membrane_unknown": 1, "dual_label_mapped_to_first": 1}
    path.write_text(">P1 Nucleus-U\nMKA\n>P2 Moon-M\nMKV\n")
    with pytest.raises(datasets.DatasetError, match=r"deeploc.fasta:3: unknown location 'Moon'"):
        datasets.load_deeploc_fasta(path)
    path.write_text("MKA\n>P1 Nucleus-U\nMKA\n")
    with pytest.raises(datasets.DatasetError, match=r"deeploc.fasta:1: sequence data before"):
        datasets.load_deeploc_fasta(path)


def test_localisation_csv_layout(tmp_path):
    path = tmp_path / "loc.csv"
    path.write_text("input,loc,membrane\nM K A,Nucleus,S\nM K V,Extracellular,M\n")
    proteins, counts = datasets.load_localisation_csv(path)
    assert proteins.sequences == ["MKA", "MKV"]
    assert proteins.location.tolist() == [6, 9] and proteins.membrane.tolist() == [0, 1]
    path.write_text("input,loc,membrane\nM K A,Nucleus,maybe\n")
    with pytest.raises(datasets.DatasetError, match=r"loc.csv:2: membrane label 'maybe'"):
        datasets.load_localisation_csv(path)


def test_scope_fasta(tmp_path):
    path = tmp_path / "scope.fa"
    path.write_text(
        ">d1dlwa_ a.1.1.1 (A:) Hb {Ciliate [TaxId: 5885]}\nslfe\n"
        ">d2abc__ g.3.1.1 (A:) X {Synthetic}\nmkv\n"
    )
    scope = datasets.load_scope_fasta(path)
    assert scope.sequences == ["SLFE", "MKV"] and scope.scop_class == ["a", "g"]
    assert scope.taxid == [5885, None]


def test_real_benchmark_files(shared_data):
    cb513 = datasets.load_netsurfp_csv(shared_data / "netsurfp2" / "CB513_HHblits.csv")
    assert len(cb513) == 511 and len(set(cb513.sequences)) == 432
    flip = datasets.load_flip_zip(shared_data / "netsurfp2" / "flip_secondary_structure_splits.zip")
    assert [len(flip[k]) for k in ("train", "validation", "test")] == [9712, 1080, 364]
    deeploc, test, counts = datasets.load_deeploc_fasta(
        shared_data / "deeploc" / "deeploc_la_val_set.fasta"
    )
    assert len(deeploc) == 1678 and test is None
    assert counts["dual_label_mapped_to_first"] == 23
    assert int((deeploc.membrane >= 0).sum()) == 1678 - counts["membrane_unknown"]
    scope = datasets.load_scope_fasta(
        shared_data / "scope" / "astral-scopedom-seqres-gd-sel-gs-bib-40-2.07.fa"
    )
    assert len(scope.ids) == 14323 and set(scope.scop_class) >= set("abcdefg")


def test_scl2205_splits_and_classes():
    pytest.importorskip("scldata")
    scl = datasets.load_scl2205()
    assert [len(scl[k]) for k in ("train", "validation", "test")] == [15183, 1260, 2631]
    assert len(scl["train"].classes) == 13 and scl["train"].classes[0] == "Cytoplasm"
    assert not set(scl["train"].ids) & set(scl["test"].ids)
    assert np.bincount(scl["test"].location, minlength=13).sum() == 2631
