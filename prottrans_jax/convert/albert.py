"""Hugging Face ALBERT (`AlbertForPreTraining`, `AlbertForMaskedLM`, `AlbertModel`) <-> our Flax
ALBERT, and the SentencePiece `spiece.model` tokenizer.

The family's table for `convert/mapping.py` (layouts in ../shared/design/families-spec.md
section 3.4): every linear weight is transposed; each layer group's parameters occur once
(`albert.encoder.albert_layer_groups.{g}.albert_layers.{j}` <-> `encoder/groups_{g}/layers_{j}`,
the same whether the model scans or not); the MLM decoder is the token embedding (tied: a
stored `predictions.decoder.weight` must equal it) and its bias is `predictions.bias`. Parts:
"full", the pre-training model (MLM head, plus the pooler and sentence-order head when the
checkpoint has them: `AlbertForPreTraining`, as ProtAlbert was released), and "encoder",
what embedding reads (`AlbertModel` without its pooler). Checkpoints saved from `AlbertModel`
(no `albert.` prefix) are read too; `position_ids`/`token_type_ids` buffers are ignored.
`vocab_size` comes from the embedding's shape. ProtAlbert's config.json has no `model_type`:
`config_from_hf` takes a missing one as ALBERT, and exported configs carry "albert".
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from prottrans_jax.convert import mapping
from prottrans_jax.convert.bert import layer_norm, linear
from prottrans_jax.convert.mapping import Entry, ParamMap
from prottrans_jax.errors import UserError, first_line
from prottrans_jax.models.albert import AlbertConfig, AlbertMLMModel
from prottrans_jax.vocab import PROTEIN_ALPHABET, STANDARD_AMINO_ACIDS, ProteinVocabulary, prot_albert_vocabulary

PARTS = ("full", "encoder")
WORD_EMBEDDINGS = "albert.embeddings.word_embeddings.weight"
DECODER_WEIGHT = "predictions.decoder.weight"
DECODER_BIAS = "predictions.decoder.bias"
OUTPUT_BIAS = "predictions.bias"
POOLER = "albert.pooler.weight"
SOP = "sop_classifier.classifier.weight"
HEADS = ("predictions.", "sop_classifier.")
SPIECE = "spiece.model"
SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁": every residue piece starts with it


# ------------------------------------------------------------------------------ the table


def _layer_entries(group: int, layer: int) -> list[Entry]:
    p = f"albert.encoder.albert_layer_groups.{group}.albert_layers.{layer}"
    ours = ("encoder", f"groups_{group}", f"layers_{layer}")
    return [
        *linear(ours + ("attention", "query"), f"{p}.attention.query"),
        *linear(ours + ("attention", "key"), f"{p}.attention.key"),
        *linear(ours + ("attention", "value"), f"{p}.attention.value"),
        *linear(ours + ("attention", "out"), f"{p}.attention.dense"),
        *layer_norm(ours + ("attention_layer_norm",), f"{p}.attention.LayerNorm"),
        *linear(ours + ("mlp", "wi"), f"{p}.ffn"),
        *linear(ours + ("mlp", "wo"), f"{p}.ffn_output"),
        *layer_norm(ours + ("mlp_layer_norm",), f"{p}.full_layer_layer_norm"),
    ]


def param_map(config: AlbertConfig, part: str) -> ParamMap:
    """The ALBERT table for `part` ("full" or "encoder"), with HF names in AlbertFor* form."""
    entries = [
        Entry(("embeddings", "word", "embedding"), WORD_EMBEDDINGS),
        Entry(("embeddings", "position", "embedding"), "albert.embeddings.position_embeddings.weight"),
        Entry(("embeddings", "token_type", "embedding"), "albert.embeddings.token_type_embeddings.weight"),
        *layer_norm(("embeddings", "layer_norm"), "albert.embeddings.LayerNorm"),
        *linear(("encoder", "embedding_hidden_mapping_in"), "albert.encoder.embedding_hidden_mapping_in"),
    ]
    for group in range(config.num_hidden_groups):
        for layer in range(config.inner_group_num):
            entries += _layer_entries(group, layer)
    if part == "full":
        entries += [*linear(("mlm", "transform"), "predictions.dense"),
                    *layer_norm(("mlm", "layer_norm"), "predictions.LayerNorm"),
                    Entry(("mlm", "output_bias"), OUTPUT_BIAS)]
        if config.pretraining_heads:
            entries += [*linear(("pooler",), "albert.pooler"),
                        *linear(("sop",), "sop_classifier.classifier")]
    return ParamMap(tuple(entries))


def _check_part(part: str) -> str:
    if part not in PARTS:
        raise UserError(f"ALBERT part {part!r}; expected one of {PARTS}")
    return part


def canonical_state_dict(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF names as AlbertFor* saves them: `albert.` prefix (AlbertModel saves none), LayerNorm
    weight/bias (legacy: gamma/beta), no position_ids/token_type_ids buffers."""
    bare = not any(k.startswith("albert.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("position_ids", "token_type_ids")) and "embeddings" in key:
            continue  # buffers, not weights
        if bare and not key.startswith(HEADS):
            key = f"albert.{key}"
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = np.asarray(value)
    return out


def _tied_copies(state_dict: dict[str, np.ndarray]) -> set[str]:
    """The stored copies of tied weights (decoder = token embedding, decoder bias = bias),
    checked equal to what they copy; they carry nothing else."""
    copies = set()
    for copy, original in ((DECODER_WEIGHT, WORD_EMBEDDINGS), (DECODER_BIAS, OUTPUT_BIAS)):
        if copy in state_dict:
            if not np.array_equal(state_dict[copy], state_dict.get(original)):
                raise UserError(f"Hugging Face weight {copy!r} differs from {original!r}; ALBERT ties them")
            copies.add(copy)
    return copies


# ------------------------------------------------------------------------------ HF <-> ours


def hf_to_flax(state_dict: dict[str, Any], config: AlbertConfig, part: str = "full") -> dict[str, Any]:
    """Hugging Face ALBERT weights -> our params (numpy, config.param_dtype) for `part`.

    Every weight must be used (for part "encoder", the heads and pooler count as used),
    every parameter filled, else ValueError naming the key.
    """
    state_dict = canonical_state_dict(state_dict)
    part = _check_part(part)
    if part == "encoder":
        ignored = {k for k in state_dict if not k.startswith(("albert.embeddings.", "albert.encoder."))}
    else:
        ignored = _tied_copies(state_dict)
    params = mapping.hf_to_flax(state_dict, param_map(config, part), config.param_dtype, ignored=ignored,
                                what=f"ALBERT config {_short(config)} (part {part})")
    abstract = AlbertMLMModel(config).abstract_params()
    if part == "encoder":
        abstract = mapping.select(abstract, ("embeddings", "encoder"))
    mapping.check_shapes(params, abstract)
    return params


def flax_to_hf(params: Any, config: AlbertConfig, part: str = "full") -> dict[str, np.ndarray]:
    """Our params -> a Hugging Face state_dict: AlbertFor* names for "full", AlbertModel names
    (no `albert.` prefix) for "encoder"."""
    part = _check_part(part)
    if part == "encoder":
        params = mapping.select(params, ("embeddings", "encoder"))
    state_dict = mapping.flax_to_hf(params, param_map(config, part))
    if part == "encoder":
        return {key[len("albert."):]: value for key, value in state_dict.items()}
    return state_dict


# ------------------------------------------------------------------------------ configs


def config_from_hf(hf_config: dict[str, Any], state_dict: dict[str, Any] | None = None,
                   **overrides: Any) -> AlbertConfig:
    """A Hugging Face ALBERT `config.json` dict -> AlbertConfig (overrides: e.g. dtype, scan_layers).

    A missing `model_type` reads as ALBERT (ProtAlbert's release has none). With the weights,
    `vocab_size` comes from the embedding's shape and `pretraining_heads` from whether the
    pooler and sentence-order head are stored. Defaults are Hugging Face's AlbertConfig's.
    """
    if hf_config.get("model_type", "albert") != "albert":
        raise UserError(f"not an ALBERT config: model_type={hf_config.get('model_type')!r}")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"unsupported ALBERT position_embedding_type "
                         f"{hf_config['position_embedding_type']!r}; expected 'absolute'")
    act = mapping.activation_from_hf(hf_config.get("hidden_act", "gelu_new"), "ALBERT")
    kwargs = dict(
        vocab_size=hf_config.get("vocab_size", 30000),
        embedding_size=hf_config.get("embedding_size", 128),
        hidden_size=hf_config.get("hidden_size", 4096),
        num_layers=hf_config.get("num_hidden_layers", 12),
        num_hidden_groups=hf_config.get("num_hidden_groups", 1),
        inner_group_num=hf_config.get("inner_group_num", 1),
        num_heads=hf_config.get("num_attention_heads", 64),
        intermediate_size=hf_config.get("intermediate_size", 16384),
        hidden_act=act,
        max_position_embeddings=hf_config.get("max_position_embeddings", 512),
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        hidden_dropout_prob=hf_config.get("hidden_dropout_prob", 0.0),
        attention_dropout_prob=hf_config.get("attention_probs_dropout_prob", 0.0),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        initializer_range=hf_config.get("initializer_range", 0.02),
        pad_id=hf_config.get("pad_token_id", 0) or 0,
    )
    if state_dict is not None:
        canonical = canonical_state_dict(state_dict)
        if WORD_EMBEDDINGS in canonical:
            kwargs["vocab_size"] = int(canonical[WORD_EMBEDDINGS].shape[0])
        kwargs["pretraining_heads"] = POOLER in canonical and SOP in canonical
    kwargs.update(overrides)
    return AlbertConfig(**kwargs)


def hf_config_from(config: AlbertConfig, part: str = "full") -> dict[str, Any]:
    """AlbertConfig -> a `config.json` dict that transformers 5 loads equivalently (with
    `model_type`, which the released ProtAlbert config lacks)."""
    if _check_part(part) == "encoder":
        architecture = "AlbertModel"
    else:
        architecture = "AlbertForPreTraining" if config.pretraining_heads else "AlbertForMaskedLM"
    return {
        "architectures": [architecture],
        "model_type": "albert",
        "vocab_size": config.vocab_size,
        "embedding_size": config.embedding_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_hidden_groups": config.num_hidden_groups,
        "inner_group_num": config.inner_group_num,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": mapping.ACTIVATIONS_TO_HF[config.hidden_act],
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_dropout_prob,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def _short(config: AlbertConfig) -> str:
    return (f"(embedding={config.embedding_size}, hidden={config.hidden_size}, layers={config.num_layers}, "
            f"groups={config.num_hidden_groups}x{config.inner_group_num}, heads={config.num_heads}, "
            f"vocab={config.vocab_size}, pretraining_heads={config.pretraining_heads})")


# ------------------------------------------------------------------------------ tokenizer


def tokenizer_pieces(model_dir: str) -> list[str]:
    """The id -> piece table of an ALBERT directory's `spiece.model` (read with sentencepiece)."""
    path = os.path.join(model_dir, SPIECE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer file in {model_dir} ({SPIECE}): it gives the model's "
                                "token ids; copy it from the released model")
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=path)
    except Exception as err:  # sentencepiece raises RuntimeError / OSError with long texts
        raise UserError(f"cannot read the tokenizer {path}: {first_line(err)}") from None
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def residue_piece_ids(pieces: list[str], where: str) -> dict[str, int]:
    """residue letter -> id of its "▁"-prefixed piece in a SentencePiece table (ALBERT's and
    XLNet's); a one-line UserError when a standard residue has none."""
    letters = {piece[1:]: i for i, piece in enumerate(pieces)
               if len(piece) == 2 and piece[0] == WORD_BOUNDARY and piece[1] in PROTEIN_ALPHABET}
    missing = sorted(set(STANDARD_AMINO_ACIDS) - set(letters))
    if missing:
        raise UserError(f"{where} has no '{WORD_BOUNDARY}'-prefixed piece for residue(s) {''.join(missing)}: "
                        "not a one-piece-per-residue protein vocabulary")
    return letters


def vocabulary_from_pieces(pieces: list[str], where: str = "the tokenizer") -> ProteinVocabulary:
    """A vocabulary over an ALBERT SentencePiece table: its special tokens, and one
    "▁"-prefixed piece per residue (a residue it lacks, X included, is encoded as <unk>)."""
    pieces = list(pieces)
    ids = {}
    for role, token in SPECIAL_TOKENS.items():
        if token in pieces:
            ids[role] = pieces.index(token)
        elif role != "mask":
            raise UserError(f"{where} has no {token} piece: not an ALBERT vocabulary")
    letters = residue_piece_ids(pieces, where)
    builtin = prot_albert_vocabulary()
    if pieces == list(builtin.pieces):
        return builtin
    return ProteinVocabulary("albert_spiece", pieces, letters, pad_id=ids["pad"], eos_id=ids["sep"],
                             unk_id=ids["unk"], mask_id=ids.get("mask"), bos_id=ids["cls"])


def _piece_type(piece: str, sp_pb2) -> int:
    kinds = sp_pb2.ModelProto.SentencePiece
    if piece == SPECIAL_TOKENS["unk"]:
        return kinds.UNKNOWN
    if (piece.startswith("<") and piece.endswith(">")) or (piece.startswith("[") and piece.endswith("]")):
        return kinds.CONTROL  # <pad>, [CLS], [SEP], [MASK], reserved pieces: never produced from text
    return kinds.NORMAL


def write_tokenizer(output_dir: str, vocabulary: ProteinVocabulary | None = None) -> None:
    """spiece.model + tokenizer_config.json + special_tokens_map.json (AlbertTokenizer, cased,
    accents kept) for `vocabulary`'s table, id for id.

    The SentencePiece model is built from its protobuf (unigram, identity normaliser: nothing
    is case-folded or NFKC-mapped; the released file's nmt_nfkc map changes no uppercase
    residue letter). transformers' AlbertTokenizer takes <unk> to be id 1, as the table has it.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    vocabulary = vocabulary or prot_albert_vocabulary()
    pieces = list(vocabulary.pieces)
    if vocabulary.unk_id != 1 or pieces[1] != SPECIAL_TOKENS["unk"]:
        raise UserError(f"{vocabulary!r} has no <unk> at id 1, which transformers' AlbertTokenizer assumes")
    model = sp_pb2.ModelProto()
    model.trainer_spec.model_type = sp_pb2.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = len(pieces)
    model.trainer_spec.pad_id, model.trainer_spec.unk_id = vocabulary.pad_id, vocabulary.unk_id
    model.trainer_spec.bos_id, model.trainer_spec.eos_id = -1, -1  # the ALBERT README's spm recipe
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    for token_id, text in enumerate(pieces):
        piece = model.pieces.add()
        piece.piece = text
        piece.type = _piece_type(text, sp_pb2)
        piece.score = -float(token_id) if piece.type == piece.NORMAL else 0.0  # every residue is one piece
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, SPIECE), "wb") as f:
        f.write(model.SerializeToString())
    specials = {f"{role}_token": token for role, token in SPECIAL_TOKENS.items() if token in pieces}
    specials.update(bos_token=SPECIAL_TOKENS["cls"], eos_token=SPECIAL_TOKENS["sep"])
    config = {"tokenizer_class": "AlbertTokenizer", "do_lower_case": False, "keep_accents": True,
              "remove_space": True, "model_max_length": 1000000000, **specials}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        with open(os.path.join(output_dir, name), "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
