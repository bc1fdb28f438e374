"""t-SNE: token embeddings read from an HF directory of a known family, PNGs produced and non-trivial,
domain of life from the NCBI taxonomy."""

import numpy as np
import pytest

from prottrans_jax.downstream import taxonomy, tsne
from tests.downstream.conftest import assert_png_is_nontrivial


def test_amino_acid_tsne_from_hf_directory(tiny_t5_hf_dir, tmp_path):
    from prottrans_jax.convert.hf_io import load_hf_state_dict

    hf_dir = tiny_t5_hf_dir(0)
    matrix = load_hf_state_dict(hf_dir)["shared.weight"]
    rows, letters = tsne.load_token_embeddings(hf_dir)
    np.testing.assert_array_equal(rows[0], matrix[3])  # ProtT5's '▁A' is row 3
    np.testing.assert_array_equal(rows[9], matrix[4])  # 'L' (the 10th letter of ACDEF...) is 4
    assert letters[0] == "A" and rows.shape == (20, 32)
    random = np.random.default_rng(1).normal(size=rows.shape)
    path = tsne.plot_amino_acids(rows, random, "fake", tmp_path / "aa.png")
    assert_png_is_nontrivial(path)


def test_amino_acid_rows_of_a_bert_directory_follow_its_vocab_txt(tiny_bert_hf_dir):
    from prottrans_jax.convert.hf_io import load_hf_state_dict

    hf_dir = tiny_bert_hf_dir("pretraining", 0)
    matrix = load_hf_state_dict(hf_dir)["bert.embeddings.word_embeddings.weight"]
    rows, _ = tsne.load_token_embeddings(hf_dir)
    np.testing.assert_array_equal(rows[0], matrix[6])  # ProtBert's vocab.txt: A is id 6
    np.testing.assert_array_equal(rows[9], matrix[5])  # L is id 5


def test_domain_of_life():
    try:
        tax = taxonomy.Taxonomy()
    except FileNotFoundError:
        pytest.skip("NCBI taxonomy (Debian emboss-data) not installed")
    assert tax.domain(9606) == "eukaryota"  # human
    assert tax.domain(562) == "bacteria"  # E. coli
    assert tax.domain(2287) == "archaea"  # Saccharolobus solfataricus
    assert tax.domain(10710) == "viruses"  # phage lambda
    assert tax.domain(None) == "unknown"


def test_protein_level_tsne_on_scope_subset(shared_data, tmp_path):
    if not (taxonomy.DEFAULT_TAXONOMY_DIR / "nodes.dmp").is_file():
        pytest.skip("NCBI taxonomy (Debian emboss-data) not installed")
    scope = shared_data / "scope" / "astral-scopedom-seqres-gd-sel-gs-bib-40-2.07.fa"
    assert 0 == tsne.main(
        [
            "--scope",
            str(scope),
            "--features",
            "onehot",
            "--max_proteins",
            "300",
            "--max_iter",
            "250",
            "--output",
            str(tmp_path),
            "--taxonomy_dir",
            str(taxonomy.DEFAULT_TAXONOMY_DIR),
        ]
    )
    assert_png_is_nontrivial(tmp_path / "tsne_amino_acids.png")
    assert_png_is_nontrivial(tmp_path / "tsne_scope_proteins.png")
