"""The evaluation and t-SNE commands on trained ProtTXL and ProtXLNet MODEL_DIRs (the
relative-attention families): localisation heads on their embeddings, the amino-acid plot
from their input embeddings."""

import json

import numpy as np
import pytest

from prottrans_jax import model_dir as model_dir_lib
from prottrans_jax.downstream import evaluate, tsne
from prottrans_jax.downstream.datasets import ProteinSet
from tests.downstream.conftest import SHARED_DATA, assert_png_is_nontrivial

DEEPLOC = SHARED_DATA / "deeploc" / "deeploc_la_val_set.fasta"
SCOPE = SHARED_DATA / "scope" / "astral-scopedom-seqres-gd-sel-gs-bib-40-2.07.fa"
# A mark, not the `shared_data` fixture: checked before the module's MODEL_DIRs are trained.
needs_shared_data = pytest.mark.skipif(not (DEEPLOC.is_file() and SCOPE.is_file()),
                                       reason=f"{SHARED_DATA} not available")
PAPER_MODEL = {"prot_txl": "ProtTXL-BFD", "prot_xlnet": "ProtXLNet"}


def short_deeploc_subset(path, max_length=150, every=3):
    """Every 3rd DeepLoc protein of at most 150 residues (the file is grouped by location):
    ~70 proteins of several locations, in few length buckets (one compile each)."""
    lines = DEEPLOC.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(">")] + [len(lines)]
    records = [lines[a:b] for a, b in zip(starts, starts[1:])]
    short = [r for r in records if len("".join(r[1:])) <= max_length][::every]
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(line for record in short for line in record) + "\n")
    return len(short)


@needs_shared_data
def test_localisation_heads_train_on_a_trained_model_dir(trained_xl_model_dir, tmp_path, capsys):
    family, model_dir = trained_xl_model_dir
    data_dir, report_dir = tmp_path / "data", tmp_path / "report"
    count = short_deeploc_subset(data_dir / "deeploc" / "short.fasta")
    assert 0 == evaluate.main(["--benchmark", "localisation", "--model_dir", str(model_dir), "--data_dir",
                               str(data_dir), "--report", str(report_dir), "--cv_folds", "2", "--max_epochs",
                               "5", "--patience", "2", "--skip_scl2205"])
    out = capsys.readouterr().out
    assert f"features {family} " in out  # the family the model directory holds embedded the proteins
    report = json.loads((report_dir / "report.json").read_text())
    assert report["setup"]["features"] == f"embedded on the fly from {model_dir}"
    q10, q2, mcc = report["Q10"]["DeepLoc"], report["Q2"]["DeepLoc"], report["MCC"]["DeepLoc"]
    assert q10["n_proteins"] == count and 0 < q2["n_proteins"] <= count
    for entry in (q10, q2):
        assert 0 <= entry["value"] <= 1 and entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    assert np.isfinite(mcc["value"]) and -1 <= mcc["value"] <= 1
    # Set beside its family's released model.
    rows = {(r["metric"], r["test_set"]): r for r in report["paper_comparison"]}
    assert rows[("Q10", "DeepLoc")]["paper"] == {"prot_txl": 65.0, "prot_xlnet": 68.0}[family]
    assert f"paper {PAPER_MODEL[family]}" in out

    # The per-protein features the heads trained on: the model's width, one row per protein.
    source = evaluate.FeatureSource("unused", model_dir=str(model_dir))
    toy = ProteinSet("toy", ["a", "b"], ["MKTAYIAKQR", "GSHMWW"], np.zeros(2, int), np.zeros(2, int), ("x",))
    means = source(toy, per_residue=False)
    assert means.shape == (2, 32) and np.isfinite(means).all()
    assert not np.allclose(means[0], means[1])


def minimal_taxonomy(path):
    """A nodes.dmp with the root and the four domains of life only: every SCOPe domain is
    "unknown" (test_tsne.py tests the real NCBI taxonomy; here the model's part matters)."""
    path.mkdir()
    nodes = [(1, 1), (2, 1), (2157, 1), (2759, 1), (10239, 1)]
    (path / "nodes.dmp").write_text("".join(f"{child}\t|\t{parent}\t|\tno rank\t|\n" for child, parent in nodes))
    return path


@needs_shared_data
def test_tsne_plots_the_amino_acid_embeddings_of_a_trained_model_dir(trained_xl_model_dir, tmp_path, capsys):
    family, model_dir = trained_xl_model_dir
    rows, letters = tsne.load_token_embeddings(model_dir=str(model_dir))
    stored = model_dir_lib.read_model(str(model_dir), param_dtype="float32")
    params, _ = model_dir_lib.restore_params(str(model_dir), stored)
    matrix = np.asarray(params["word_embedding"]["embedding"])
    assert stored.family.name == family and rows.shape == (20, 32) and len(letters) == 20
    for row, letter in zip(rows, letters):  # each letter's row of the input embedding, through the vocabulary
        (index,) = stored.vocabulary.encode(letter)
        np.testing.assert_array_equal(row, matrix[index])
    assert len(np.unique(rows, axis=0)) == 20

    assert 0 == tsne.main(["--scope", str(SCOPE), "--features", "onehot", "--model_dir", str(model_dir),
                           "--max_proteins", "60", "--max_iter", "250", "--output", str(tmp_path / "tsne"),
                           "--taxonomy_dir", str(minimal_taxonomy(tmp_path / "taxonomy"))])
    assert "SCOPe: 60 of" in capsys.readouterr().out
    assert_png_is_nontrivial(tmp_path / "tsne" / "tsne_amino_acids.png")
    assert_png_is_nontrivial(tmp_path / "tsne" / "tsne_scope_proteins.png")


def test_an_xlnet_hugging_face_directory_gives_its_rows_and_its_embeddings(tmp_path):
    """The Hugging Face form of ProtXLNet (XLNetLMHeadModel + spiece.model): t-SNE's rows are
    the word embeddings of the residues' ids in the project's table; the evaluation embeds
    with it as ProtXLNet."""
    from prottrans_jax.convert import xlnet as xlnet_convert
    from prottrans_jax.vocab import prot_xlnet_vocabulary
    from tests.conftest import random_hf_xlnet

    hf_dir = tmp_path / "hf"
    model = random_hf_xlnet("lm", 3)
    model.save_pretrained(hf_dir)
    xlnet_convert.write_tokenizer(str(hf_dir))
    rows, letters = tsne.load_token_embeddings(hf_model=str(hf_dir))
    matrix = model.transformer.word_embedding.weight.detach().numpy()
    vocabulary = prot_xlnet_vocabulary()
    ids = [vocabulary.pieces.index(f"▁{letter}") for letter in letters]  # '▁A' is id 10
    assert ids[0] == 10 and len(set(ids)) == 20
    np.testing.assert_array_equal(rows, matrix[ids])

    source = evaluate.FeatureSource("unused", hf_model=str(hf_dir))
    assert source.model.family.name == "prot_xlnet" and source.model.family.paper_model == "ProtXLNet"
    toy = type("Dataset", (), {"ids": ["a"], "sequences": ["MKTAYIAKQR"], "name": "toy",
                               "__len__": lambda self: 1})()
    means = source(toy, per_residue=False)
    assert means.shape == (1, 32) and np.isfinite(means).all()
