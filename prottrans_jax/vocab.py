"""Amino-acid vocabularies with the released ProtTrans models' id tables.

A model trained here and a released ProtTrans model must agree on what an id means, so the
tables below reproduce the released tokenizers exactly instead of inventing a new order.

Sources (public):
- ProtT5 (`Rostlab/prot_t5_xl_uniref50`, `prot_t5_xl_bfd`, `prot_t5_xl_half_uniref50-enc`):
  the SentencePiece model `spiece.model`, 128 pieces. The full id table is printed by
  `T5Tokenizer.get_vocab()` in agemagician/ProtTrans issue #42 ("Which mask token is used in
  T5 training?"): <pad>=0, </s>=1, <unk>=2, then "▁A".."▁Z" at 3..27 in the order below, then
  <extra_id_99>=28 .. <extra_id_0>=127 (sentinel N has id 127 - N, the T5 convention).
- ProtBert / ProtBert-BFD / ProtElectra (`vocab.txt`, 30 lines, 81 bytes): [PAD] [UNK] [CLS]
  [SEP] [MASK] then 25 letters in the order below, one id per line. Verified (design notes,
  families-spec.md section 2.2): the order read from the Hugging Face page of
  `prot_electra_discriminator_bfd/vocab.txt`, the same 81-byte file that ships with prot_bert;
  the prot_bert model card's fill-mask ids (L=5, A=6, V=8, S=10, I=11, K=12, T=15) and
  agemagician/ProtTrans issue #68 agree, and transformers 5's BertTokenizer on this table
  encodes "A E T C Z A O" as [2, 6, 9, 15, 23, 28, 6, 29, 3].
  Importing released weights always reads the tokenizer files shipped with them
  (`prottrans_jax.convert.bert.tokenizer_pieces`) and never trusts this built-in table.
- ProtAlbert (`Rostlab/prot_albert/spiece.model`, SentencePiece, 34 pieces): the id table is
  NOT known here (the binary was not readable; families-spec.md section 3.2), so importing
  always reads the pieces from the shipped spiece.model (`convert.albert.tokenizer_pieces`).
  Verified: 34 pieces (config.json vocab_size, the embedding's 34 rows), `[CLS] ... [SEP]`
  framing (the ProtTrans notebooks strip the first and last ids), HF AlbertTokenizer with
  do_lower_case False on uppercase, space-separated residues, rare residues -> X. Not
  verified, chosen for training from scratch (`prot_albert_vocabulary`): the ids, laid out by
  the ALBERT README's spm recipe (`--pad_id=0 --unk_id=1 --control_symbols=[CLS],[SEP],[MASK]`:
  <pad> <unk> [CLS] [SEP] [MASK] at 0..4), then one "▁"-prefixed piece per residue in
  ProtBert's order, then four reserved control pieces that fill the table to 34.
- ProtTXL: no vocabulary was released (nor weights); `prot_txl_vocabulary` is the project's
  choice for training from scratch, UNVERIFIED against the paper's.
- ProtXLNet (`Rostlab/prot_xlnet/spiece.model`, SentencePiece): ids 0-8 are XLNet's hard-coded
  specials (zihangdai/xlnet `data_utils.py`; `<unk>` 0, `<sep>` 4, `<cls>` 3 confirmed by
  agemagician/ProtTrans #53), and there is no piece for X, which encodes to `<unk>` (the
  maintainer, ProtTrans #10/#53). The residues' ids are NOT known here (families-spec.md
  section 5.2): importing reads the shipped spiece.model (`convert.xlnet.tokenizer_pieces`).
  Chosen for training from scratch (`prot_xlnet_vocabulary`, not verified): the nine specials,
  then one "▁"-prefixed piece per standard residue in ProtBert's (UniRef100 frequency) order.

Input text is residues separated by single spaces ("M K T A"), as ProtTrans feeds its
tokenizers. Lower case is accepted; the rare residues U, Z, O, B are encoded as X, as
ProtTrans users do before tokenising (the tables keep their own ids for compatibility only).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prottrans_jax.errors import UserError

# Letters accepted in protein sequences: 20 standard amino acids, X (unknown) and the four
# rare/ambiguous codes that ProtTrans maps to X.
STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
RARE_TO_X = "UZOB"
PROTEIN_ALPHABET = STANDARD_AMINO_ACIDS + "X" + RARE_TO_X

_RARE_TRANSLATION = str.maketrans({c: "X" for c in RARE_TO_X + RARE_TO_X.lower()})


def normalize_sequence(sequence: str) -> str:
    """Upper-cases and maps U, Z, O, B to X: the form every stage stores and tokenises."""
    return sequence.translate(_RARE_TRANSLATION).upper()


def space_separate(sequence: str) -> str:
    """"MKTA" -> "M K T A", the text layout ProtTrans tokenisers expect."""
    return " ".join(sequence)


# ProtT5 SentencePiece table (see module docstring for the source).
PROT_T5_RESIDUE_ORDER = "ALGVSREDTIPKFQNYMHWCXBOUZ"
PROT_T5_NUM_SENTINELS = 100
# ProtBert / ProtElectra vocab.txt (see module docstring for the source).
PROT_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PROT_BERT_RESIDUE_ORDER = "LAGVESIKRDTPNQFYMHCWXUBZO"
# ProtAlbert spiece.model: its size is verified, its order is not (see module docstring).
PROT_ALBERT_SPECIALS = ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")
PROT_ALBERT_VOCAB_SIZE = 34
# ProtTXL: never released; the project's own table (see prot_txl_vocabulary).
PROT_TXL_SPECIALS = ("<pad>", "<unk>", "<eos>")
PROT_TXL_VOCAB_SIZE = 32
# ProtXLNet spiece.model: XLNet's special ids are verified, the residues' order is not.
PROT_XLNET_SPECIALS = ("<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>")


class ProteinVocabulary(seqio.Vocabulary):
    """A fixed id table over single residues, usable by seqio tasks and feature converters.

    Every id of the released table is part of the base vocabulary (`extra_ids` is 0) so that
    `decode` shows sentinels and specials by name instead of collapsing them to <unk>.
    """

    def __init__(self, name: str, pieces: Sequence[str], residue_order: str | Mapping[str, int],
                 first_residue_id: int = 0, *, pad_id: int, eos_id: int | None, unk_id: int,
                 mask_id: int | None = None, bos_id: int | None = None,
                 sentinel_ids: Sequence[int] = ()):
        """`residue_order` is a string of letters with consecutive ids from
        `first_residue_id`, or a {letter: id} table (e.g. read from a tokenizer file; a letter
        it lacks, X included, is encoded as unk)."""
        super().__init__(extra_ids=0)
        self.name = name
        self._pieces = tuple(pieces)
        self._pad_id, self._eos_id, self._unk_id = pad_id, eos_id, unk_id
        self._mask_id, self._bos_id = mask_id, bos_id
        self._sentinel_ids = tuple(sentinel_ids)
        if isinstance(residue_order, str):
            letters = {aa: first_residue_id + i for i, aa in enumerate(residue_order)}
        else:
            letters = dict(residue_order)
        residue_ids = dict(letters)
        for rare in RARE_TO_X:  # ProtTrans practice: rare residues are read as X.
            residue_ids[rare] = residue_ids.get("X", unk_id)
        self._residue_ids = residue_ids
        self._residue_letters = {token_id: aa for aa, token_id in letters.items()}
        # Byte -> id lookup used by both the Python and the TensorFlow encoder.
        table = np.full(256, unk_id, dtype=np.int32)
        for letter, token_id in residue_ids.items():
            table[ord(letter)] = token_id
            table[ord(letter.lower())] = token_id
        self._byte_to_id = table
        # Ids the model may predict as residues (used by BERT's random replacement).
        self.residue_ids = np.array(
            sorted({residue_ids[a] for a in STANDARD_AMINO_ACIDS if a in residue_ids}), dtype=np.int32)

    # --- seqio.Vocabulary interface -------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def unk_id(self) -> int:
        return self._unk_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def _base_vocab_size(self) -> int:
        return len(self._pieces)

    def _encode(self, s: str) -> list[int]:
        data = s.replace(" ", "").encode("latin-1", errors="replace")
        return self._byte_to_id[np.frombuffer(data, dtype=np.uint8)].tolist()

    def _decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self._pad_id or i == self._eos_id:
                continue  # seqio already truncated after EOS; padding carries no text.
            out.append(self._residue_letters.get(i, self._pieces[i] if 0 <= i < len(self._pieces)
                                                 else self._pieces[self._unk_id]))
        return " ".join(out)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        data = tf.strings.regex_replace(s, " ", "")
        as_bytes = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
        return tf.gather(tf.constant(self._byte_to_id), as_bytes)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        # Rarely used inside input pipelines; mirrors _decode for a 1-D (or batched) tensor.
        pieces = [self._residue_letters.get(i, p) for i, p in enumerate(self._pieces)]
        pieces[self._pad_id] = ""
        if self._eos_id is not None:
            pieces[self._eos_id] = ""
        tokens = tf.gather(tf.constant(pieces), ids)
        tokens = tf.ragged.boolean_mask(tokens, tf.not_equal(tokens, ""))
        return tf.strings.reduce_join(tokens, axis=-1, separator=" ")

    def __eq__(self, other) -> bool:
        return isinstance(other, ProteinVocabulary) and self._pieces == other._pieces

    def __hash__(self) -> int:
        return hash(self._pieces)

    def __repr__(self) -> str:
        return f"ProteinVocabulary({self.name!r}, size={self.vocab_size})"

    # --- objective helpers ----------------------------------------------------------------
    @property
    def mask_id(self) -> int:
        """The single mask token: [MASK] for BERT, <extra_id_0> for T5."""
        if self._mask_id is None:
            raise UserError(f"vocabulary {self.name!r} has no mask token")
        return self._mask_id

    @property
    def num_sentinels(self) -> int:
        return len(self._sentinel_ids)

    def sentinel_id(self, index: int) -> int:
        """Id of <extra_id_{index}>."""
        return self._sentinel_ids[index]

    @property
    def sentinel_ids(self) -> np.ndarray:
        return np.array(self._sentinel_ids, dtype=np.int32)

    def piece(self, token_id: int) -> str:
        return self._pieces[token_id]

    @property
    def pieces(self) -> tuple[str, ...]:
        return self._pieces


def prot_t5_vocabulary() -> ProteinVocabulary:
    """ProtT5's 128-id SentencePiece table; <extra_id_0> (127) doubles as the mask token."""
    pieces = ["<pad>", "</s>", "<unk>"]
    pieces += ["\u2581" + aa for aa in PROT_T5_RESIDUE_ORDER]
    pieces += [f"<extra_id_{n}>" for n in reversed(range(PROT_T5_NUM_SENTINELS))]
    assert len(pieces) == 128
    sentinels = [len(pieces) - 1 - n for n in range(PROT_T5_NUM_SENTINELS)]
    return ProteinVocabulary("prot_t5", pieces, PROT_T5_RESIDUE_ORDER, 3,
                             pad_id=0, eos_id=1, unk_id=2, mask_id=sentinels[0],
                             sentinel_ids=sentinels)


def prot_bert_vocabulary() -> ProteinVocabulary:
    """ProtBert's 30-token vocab.txt table (also ProtAlbert/ProtElectra style BERT inputs).

    eos is [SEP] and bos is [CLS], so seqio's EOS handling appends [SEP] and the BERT feature
    converter prepends [CLS].
    """
    pieces = list(PROT_BERT_SPECIALS) + list(PROT_BERT_RESIDUE_ORDER)
    assert len(pieces) == 30
    return ProteinVocabulary("prot_bert", pieces, PROT_BERT_RESIDUE_ORDER, 5,
                             pad_id=0, eos_id=3, unk_id=1, mask_id=4, bos_id=2)


def prot_albert_vocabulary() -> ProteinVocabulary:
    """The project's 34-id ProtAlbert table (ids unverified: module docstring): <pad> <unk>
    [CLS] [SEP] [MASK], "▁L" .. "▁O" at 5..29, <unused_0..3> at 30..33."""
    pieces = list(PROT_ALBERT_SPECIALS) + ["\u2581" + aa for aa in PROT_BERT_RESIDUE_ORDER]
    pieces += [f"<unused_{n}>" for n in range(PROT_ALBERT_VOCAB_SIZE - len(pieces))]
    assert len(pieces) == PROT_ALBERT_VOCAB_SIZE
    return ProteinVocabulary("prot_albert", pieces, PROT_BERT_RESIDUE_ORDER, len(PROT_ALBERT_SPECIALS),
                             pad_id=0, eos_id=3, unk_id=1, mask_id=4, bos_id=2)


def prot_txl_vocabulary() -> ProteinVocabulary:
    """The project's 32-id ProtTXL table (no ProtTXL vocabulary was ever released; families-spec
    6.2: cybertronai's is word-level from corpus counts, `<eos>` per line, padded to a multiple
    of 8): <pad> <unk> <eos> at 0..2, the residues in ProtBert's order at 3..27, <unused_0..3>.
    `<eos>` ends each protein in the stream and is the separator the next one follows."""
    pieces = list(PROT_TXL_SPECIALS) + list(PROT_BERT_RESIDUE_ORDER)
    pieces += [f"<unused_{n}>" for n in range(PROT_TXL_VOCAB_SIZE - len(pieces))]
    assert len(pieces) == PROT_TXL_VOCAB_SIZE
    return ProteinVocabulary("prot_txl", pieces, PROT_BERT_RESIDUE_ORDER, len(PROT_TXL_SPECIALS),
                             pad_id=0, eos_id=2, unk_id=1)


def prot_xlnet_vocabulary() -> ProteinVocabulary:
    """The project's 29-id ProtXLNet table (residue ids unverified: module docstring): XLNet's
    specials at 0..8, "▁L" .. "▁W" (the 20 standard residues) at 9..28; X, U, Z, O, B -> <unk>.

    eos is <sep> and bos <cls>, the two ids XLNet appends (`residues <sep> <cls>`)."""
    residues = "".join(aa for aa in PROT_BERT_RESIDUE_ORDER if aa in STANDARD_AMINO_ACIDS)
    pieces = list(PROT_XLNET_SPECIALS) + ["\u2581" + aa for aa in residues]
    ids = {name: PROT_XLNET_SPECIALS.index(name) for name in PROT_XLNET_SPECIALS}
    return ProteinVocabulary("prot_xlnet", pieces, residues, len(PROT_XLNET_SPECIALS), pad_id=ids["<pad>"],
                             eos_id=ids["<sep>"], unk_id=ids["<unk>"], mask_id=ids["<mask>"], bos_id=ids["<cls>"])


def prot_t5_residue_ids() -> tuple[int, int]:
    """(first residue id, first sentinel id) of ProtT5's table: the residues lie in between."""
    vocabulary = prot_t5_vocabulary()
    return vocabulary.pieces.index("▁A"), int(min(vocabulary.sentinel_ids))
