"""The built-in id tables must be the released models' tables (see vocab.py for sources)."""

import numpy as np
import pytest
import tensorflow as tf

from prottrans_jax.vocab import (ProteinVocabulary, normalize_sequence, prot_bert_vocabulary,
                                 prot_t5_vocabulary, space_separate)

VOCABULARIES = {"prot_t5": prot_t5_vocabulary, "prot_bert": prot_bert_vocabulary}


def test_prot_t5_table_matches_released_tokenizer():
    vocab = prot_t5_vocabulary()
    assert vocab.vocab_size == 128
    assert vocab.pieces[:3] == ("<pad>", "</s>", "<unk>")
    # Spot checks against T5Tokenizer.get_vocab() of Rostlab/prot_t5_xl_uniref50.
    expected = {"\u2581A": 3, "\u2581L": 4, "\u2581G": 5, "\u2581K": 14, "\u2581C": 22,
                "\u2581X": 23, "\u2581Z": 27, "<extra_id_99>": 28, "<extra_id_1>": 126,
                "<extra_id_0>": 127}
    for piece, token_id in expected.items():
        assert vocab.pieces[token_id] == piece
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.sentinel_id(0) == 127 and vocab.sentinel_id(99) == 28
    assert vocab.mask_id == 127


def test_prot_bert_table_matches_released_vocab_txt():
    vocab = prot_bert_vocabulary()
    assert vocab.vocab_size == 30
    assert vocab.pieces == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"LAGVESIKRDTPNQFYMHCWXUBZO")
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.mask_id) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("name", ["prot_t5", "prot_bert"])
def test_encode_accepts_lower_case_and_maps_rare_residues_to_x(name):
    vocab = VOCABULARIES[name]()
    x = vocab.encode("X")[0]
    assert vocab.encode("m k t a") == vocab.encode("M K T A")
    assert vocab.encode("U Z O B") == [x] * 4
    assert vocab.encode("MKTA") == vocab.encode("M K T A")  # spaces are separators only
    assert vocab.decode(vocab.encode("M K T A X")) == "M K T A X"


@pytest.mark.parametrize("name", ["prot_t5", "prot_bert"])
def test_tf_encoding_equals_python_encoding(name):
    vocab = VOCABULARIES[name]()
    text = "M K T a u W Y C H Q"
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == vocab.encode(text)
    ids = tf.constant([vocab.encode(text) + [vocab.eos_id, 0, 0]])
    assert vocab.decode_tf(ids).numpy()[0].decode() == vocab.decode(vocab.encode(text))


def test_unknown_letters_become_unk():
    vocab = prot_t5_vocabulary()
    assert vocab.encode("M J") == [vocab.encode("M")[0], vocab.unk_id]


def test_decode_names_sentinels_and_stops_at_eos():
    vocab = prot_t5_vocabulary()
    assert vocab.decode([3, 127, 4, 126, 1, 5]) == "A <extra_id_0> L <extra_id_1>"


def test_residue_ids_are_the_twenty_standard_amino_acids():
    for vocab in (prot_t5_vocabulary(), prot_bert_vocabulary()):
        letters = sorted(vocab.piece(i).lstrip("\u2581") for i in vocab.residue_ids)
        assert "".join(letters) == "ACDEFGHIKLMNPQRSTVWY"


def test_normalize_and_space_separate():
    assert normalize_sequence("mkUzOb") == "MKXXXX"
    assert space_separate("MKT") == "M K T"


def test_a_table_without_x_encodes_x_and_rare_residues_as_unk():
    """Tokenizers shipped with other weights (antiberty's: 20 residues, no X) are read as is."""
    letters = {aa: 5 + i for i, aa in enumerate("ACDEFGHIKLMNPQRSTVWY")}
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters]
    vocab = ProteinVocabulary("antibody", pieces, letters, pad_id=0, eos_id=3, unk_id=1, bos_id=2)
    assert vocab.encode("A C X U") == [5, 6, 1, 1]
    assert len(vocab.residue_ids) == 20 and vocab.decode([5, 1]) == "A [UNK]"


def test_vocabularies_compare_by_table():
    assert prot_t5_vocabulary() == prot_t5_vocabulary()
    assert prot_t5_vocabulary() != prot_bert_vocabulary()
    assert np.all(prot_t5_vocabulary().sentinel_ids == np.arange(127, 27, -1))
