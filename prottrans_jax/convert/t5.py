"""Hugging Face T5 (PyTorch state_dict names) <-> our Flax T5 parameters, and ProtT5's tokenizer.

    config = config_from_hf(load_hf_config(d), state_dict := load_hf_state_dict(d))
    params = hf_to_flax(state_dict, config)          # {'token_embedder', 'encoder', 'decoder'}
    state_dict = flax_to_hf(params, config)           # for save_hf_model / from_pretrained

The family's table for `convert/mapping.py`: linear weights are transposed; the relative
position table is (buckets, heads) there and (heads, buckets) here, and lives in layer 0
there but once per stack here. An encoder-only checkpoint (`T5EncoderModel`: shared +
encoder.*) converts to the {'token_embedder', 'encoder'} subset (part "encoder"), which is all
`T5.encode` reads. The tokenizer half writes and reads ProtT5's SentencePiece files.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from prottrans_jax.convert import mapping
from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict
from prottrans_jax.convert.mapping import TRANSPOSE, Entry, LayerStack, ParamMap
from prottrans_jax.errors import UserError, first_line
from prottrans_jax.models.t5 import T5Config, abstract_variables
from prottrans_jax.vocab import PROT_T5_NUM_SENTINELS, ProteinVocabulary, prot_t5_vocabulary

PARTS = ("full", "encoder")
EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
LM_HEAD_KEY = "lm_head.weight"
# Old checkpoints carry a cross-attention position table that T5 never uses (HF ignores it too).
IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

_ATTENTION = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))


# ------------------------------------------------------------------------------ the table


def _mlp_entries(hf_prefix: str, config: T5Config) -> list[Entry]:
    names = ("wi", "wo") if config.feed_forward == "relu" else ("wi_0", "wi_1", "wo")
    return [Entry(("mlp", n, "kernel"), f"{hf_prefix}.DenseReluDense.{n}.weight", TRANSPOSE) for n in names]


def _attention_entries(prefix: str, hf_prefix: str) -> list[Entry]:
    return [Entry((prefix, ours, "kernel"), f"{hf_prefix}.{theirs}.weight", TRANSPOSE) for ours, theirs in _ATTENTION]


def _layer_entries(stack: str, config: T5Config) -> tuple[Entry, ...]:
    """Entries of layer i with flax paths relative to the layer and `{i}` in the HF names."""
    p = f"{stack}.block.{{i}}.layer"
    if stack == "encoder":
        return (
            Entry(("pre_attention_layer_norm", "scale"), f"{p}.0.layer_norm.weight"),
            *_attention_entries("attention", f"{p}.0.SelfAttention"),
            Entry(("pre_mlp_layer_norm", "scale"), f"{p}.1.layer_norm.weight"),
            *_mlp_entries(f"{p}.1", config),
        )
    return (
        Entry(("pre_self_attention_layer_norm", "scale"), f"{p}.0.layer_norm.weight"),
        *_attention_entries("self_attention", f"{p}.0.SelfAttention"),
        Entry(("pre_cross_attention_layer_norm", "scale"), f"{p}.1.layer_norm.weight"),
        *_attention_entries("encoder_decoder_attention", f"{p}.1.EncDecAttention"),
        Entry(("pre_mlp_layer_norm", "scale"), f"{p}.2.layer_norm.weight"),
        *_mlp_entries(f"{p}.2", config),
    )


def _stack_entries(stack: str, config: T5Config) -> list[Entry]:
    """Per-stack (not per-layer) entries."""
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    entries = [
        Entry((stack, "relpos_bias", "rel_embedding"),
              f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", TRANSPOSE),
        Entry((stack, norm, "scale"), f"{stack}.final_layer_norm.weight"),
    ]
    if stack == "decoder" and not config.tie_word_embeddings:
        entries.append(Entry(("decoder", "logits_dense", "kernel"), LM_HEAD_KEY, TRANSPOSE))
    return entries


def _stacks(part: str) -> tuple[str, ...]:
    return ("encoder",) if part == "encoder" else ("encoder", "decoder")


def param_map(config: T5Config, part: str, embedding_key: str = "shared.weight") -> ParamMap:
    """The T5 table for `part`: "full" (encoder-decoder) or "encoder"."""
    entries = [Entry(("token_embedder", "embedding"), embedding_key)]
    stacks = []
    for stack in _stacks(part):
        entries += _stack_entries(stack, config)
        layers = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
        stacks.append(LayerStack((stack,), layers, _layer_entries(stack, config), config.scan_layers))
    return ParamMap(tuple(entries), tuple(stacks))


def _part(part: str | None, state_dict) -> str:
    """None: "encoder" for a `T5EncoderModel` checkpoint (no decoder.* weights), else "full"."""
    if part is None:
        return "full" if any(k.startswith("decoder.") for k in state_dict) else "encoder"
    if part not in PARTS:
        raise UserError(f"T5 part {part!r}; expected one of {PARTS}")
    return part


# ------------------------------------------------------------------------------ HF <-> ours


def hf_to_flax(state_dict: dict[str, Any], config: T5Config, part: str | None = None) -> dict[str, Any]:
    """Hugging Face T5 weights -> our params tree (numpy arrays in config.param_dtype).

    part=None detects a `T5EncoderModel` checkpoint (no decoder.* weights). Every HF weight
    must be used (the decoder of a full checkpoint counts as used for part "encoder") and
    every parameter filled, else ValueError naming the key.
    """
    state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
    part = _part(part, state_dict)
    embedding_key = next((k for k in EMBEDDING_KEYS if k in state_dict), None)
    if embedding_key is None:
        raise UserError(f"missing Hugging Face weight 'shared.weight' (nor any alias {EMBEDDING_KEYS[1:]})")
    ignored = set(k for k in IGNORED_KEYS if k in state_dict)
    if part == "encoder":  # the encoder of a full checkpoint: its decoder is not needed
        ignored.update(k for k in state_dict if k.startswith("decoder.") or k == LM_HEAD_KEY)
    tied_copies = EMBEDDING_KEYS + ((LM_HEAD_KEY,) if config.tie_word_embeddings else ())
    for key in tied_copies:  # other names of the same table must hold the same values
        if key in state_dict and key not in ignored and key != embedding_key:
            _check_tied_copy(state_dict, key, embedding_key)
            ignored.add(key)
    params = mapping.hf_to_flax(state_dict, param_map(config, part, embedding_key), config.param_dtype,
                                ignored=ignored, what=f"T5 config {_short(config)}")
    mapping.check_shapes(params, abstract_variables(config, encoder_only=part == "encoder")["params"])
    return params


def _check_tied_copy(state_dict: dict[str, np.ndarray], key: str, embedding_key: str) -> None:
    if state_dict[key].shape != state_dict[embedding_key].shape or not np.array_equal(
        state_dict[key], state_dict[embedding_key]
    ):
        raise UserError(
            f"Hugging Face weight {key!r} differs from {embedding_key!r} but the config ties them; "
            "use tie_word_embeddings=False (config_from_hf(..., state_dict) detects this)"
        )


def flax_to_hf(params: Any, config: T5Config, part: str | None = None) -> dict[str, np.ndarray]:
    """Our params (boxed or plain, scanned or not) -> Hugging Face T5 state_dict of numpy arrays.

    Writes each tensor once under its canonical name (`shared.weight`; `lm_head.weight` only
    when untied); `from_pretrained` ties the embedding aliases itself. part=None: "encoder"
    when the params hold no decoder.
    """
    if "params" in params and "token_embedder" not in params:
        params = params["params"]
    if part is None:
        part = "full" if "decoder" in params else "encoder"
    return mapping.flax_to_hf(params, param_map(config, _part(part, ())))


# ------------------------------------------------------------------------------ configs


_HF_TO_OURS = {
    "vocab_size": "vocab_size",
    "d_model": "d_model",
    "num_heads": "num_heads",
    "d_kv": "head_dim",
    "d_ff": "d_ff",
    "num_layers": "num_encoder_layers",
    "relative_attention_num_buckets": "relative_attention_num_buckets",
    "relative_attention_max_distance": "relative_attention_max_distance",
    "dropout_rate": "dropout_rate",
    "layer_norm_epsilon": "layer_norm_epsilon",
    "pad_token_id": "pad_id",
    "eos_token_id": "eos_id",
    "decoder_start_token_id": "decoder_start_id",
}


def config_from_hf(
    hf_config: dict[str, Any], state_dict: dict[str, Any] | None = None, **overrides: Any
) -> T5Config:
    """A Hugging Face T5 `config.json` dict -> T5Config (overrides: e.g. dtype, scan_layers).

    Follows transformers 5: decoder outputs are scaled by d_model**-0.5 as `scale_decoder_outputs`
    says, or when absent (configs from transformers 4 and older, e.g. the released ProtT5) unless
    `tie_word_embeddings` is false; the output layer is a separate lm_head only when the
    checkpoint holds an `lm_head.weight` that differs from `shared.weight` (pass state_dict to
    detect it; without it, tying follows the scaling as in T5 1.0 / 1.1).
    """
    if hf_config.get("model_type", "t5") != "t5":
        raise UserError(f"not a T5 config: model_type={hf_config.get('model_type')!r}")
    feed_forward = hf_config.get("feed_forward_proj", "relu")
    if feed_forward not in ("relu", "gated-gelu"):
        raise UserError(f"unsupported T5 feed_forward_proj {feed_forward!r}; expected 'relu' or 'gated-gelu'")
    kwargs: dict[str, Any] = {ours: hf_config[theirs] for theirs, ours in _HF_TO_OURS.items() if hf_config.get(theirs) is not None}
    if isinstance(kwargs.get("eos_id"), list):
        kwargs["eos_id"] = kwargs["eos_id"][0]
    kwargs["num_decoder_layers"] = hf_config.get("num_decoder_layers") or hf_config.get("num_layers", 6)
    kwargs["feed_forward"] = feed_forward
    if hf_config.get("scale_decoder_outputs") is not None:  # written by transformers >= 5
        scale = bool(hf_config["scale_decoder_outputs"])
    else:
        scale = hf_config.get("tie_word_embeddings", True) is not False
    tied = scale
    if state_dict is not None:
        embedding_key = next((k for k in EMBEDDING_KEYS if k in state_dict), None)
        lm_head = state_dict.get(LM_HEAD_KEY)
        tied = lm_head is None or (
            embedding_key is not None
            and np.shape(lm_head) == np.shape(state_dict[embedding_key])
            and np.array_equal(np.asarray(lm_head), np.asarray(state_dict[embedding_key]))
        )
    kwargs["tie_word_embeddings"] = tied
    kwargs["scale_decoder_outputs"] = None if scale == tied else scale  # None: T5's convention
    kwargs.update(overrides)
    return T5Config(**kwargs)


def hf_config_from(config: T5Config, part: str = "full") -> dict[str, Any]:
    """T5Config -> a Hugging Face `config.json` dict that transformers 5 loads equivalently."""
    return {
        "architectures": ["T5EncoderModel" if _part(part, ()) == "encoder" else "T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "num_heads": config.num_heads,
        "d_kv": config.head_dim,
        "d_ff": config.d_ff,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "feed_forward_proj": config.feed_forward,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        # transformers 5 ties lm_head to shared unless the weights hold a different
        # lm_head.weight, and scales by `scale_decoder_outputs`; older versions read the
        # scaling from `tie_word_embeddings`.
        "scale_decoder_outputs": config.scales_decoder_outputs,
        "tie_word_embeddings": config.scales_decoder_outputs,
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.decoder_start_id,
    }


def load_hf_t5(model_dir: str, **overrides: Any) -> tuple[T5Config, dict[str, Any]]:
    """Config and params of a local Hugging Face T5 directory (full or encoder-only)."""
    state_dict = load_hf_state_dict(model_dir)
    config = config_from_hf(load_hf_config(model_dir), state_dict, **overrides)
    return config, hf_to_flax(state_dict, config)


def _short(config: T5Config) -> str:
    return (
        f"(d_model={config.d_model}, layers={config.num_encoder_layers}+{config.num_decoder_layers}, "
        f"feed_forward={config.feed_forward}, tied={config.tie_word_embeddings})"
    )


# ------------------------------------------------------------------------------ tokenizer
# The T5 convention, as the released ProtT5 tokenizers: the SentencePiece model holds the 28
# pieces <pad> </s> <unk> and the 25 residues; T5Tokenizer appends `extra_ids` sentinels at
# the top of the table in reverse (<extra_id_0> = last id).

SPIECE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def write_tokenizer(output_dir: str, vocabulary: ProteinVocabulary | None = None) -> None:
    """spiece.model + tokenizer_config.json + special_tokens_map.json for ProtT5's table.

    The SentencePiece model is built from its protobuf: pieces 0..27 of the table (identity
    normaliser, so nothing is case-folded or NFKC-mapped); T5Tokenizer adds the 100 sentinels.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    vocabulary = vocabulary or prot_t5_vocabulary()
    if vocabulary != prot_t5_vocabulary():
        raise UserError(f"only ProtT5's id table can be written as a T5 tokenizer, not {vocabulary!r}")
    pieces = vocabulary.pieces[: len(vocabulary.pieces) - PROT_T5_NUM_SENTINELS]
    model = sp_pb2.ModelProto()
    model.trainer_spec.model_type = sp_pb2.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = len(pieces)
    model.trainer_spec.pad_id, model.trainer_spec.eos_id = vocabulary.pad_id, vocabulary.eos_id
    model.trainer_spec.unk_id, model.trainer_spec.bos_id = vocabulary.unk_id, -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    kinds = {vocabulary.pad_id: sp_pb2.ModelProto.SentencePiece.CONTROL,
             vocabulary.eos_id: sp_pb2.ModelProto.SentencePiece.CONTROL,
             vocabulary.unk_id: sp_pb2.ModelProto.SentencePiece.UNKNOWN}
    for token_id, text in enumerate(pieces):
        piece = model.pieces.add()
        piece.piece = text
        piece.type = kinds.get(token_id, sp_pb2.ModelProto.SentencePiece.NORMAL)
        piece.score = 0.0 if token_id in kinds else -float(token_id)  # every residue is one piece
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, SPIECE), "wb") as f:
        f.write(model.SerializeToString())
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "additional_special_tokens": [f"<extra_id_{i}>" for i in range(PROT_T5_NUM_SENTINELS)]}
    tokenizer_config = {"tokenizer_class": "T5Tokenizer", "extra_ids": PROT_T5_NUM_SENTINELS,
                        "do_lower_case": False, "model_max_length": 1000000000, **specials}
    _write_json(os.path.join(output_dir, TOKENIZER_CONFIG), tokenizer_config)
    _write_json(os.path.join(output_dir, SPECIAL_TOKENS_MAP), specials)


def tokenizer_pieces(model_dir: str) -> list[str]:
    """The id -> piece table of a Hugging Face T5 directory's tokenizer files.

    Reads spiece.model (sentencepiece; T5Tokenizer's `extra_ids` sentinels appended as it
    does) or else tokenizer.json (a Unigram vocabulary plus its added tokens).
    """
    spiece = os.path.join(model_dir, SPIECE)
    tokenizer_json = os.path.join(model_dir, TOKENIZER_JSON)
    if os.path.isfile(spiece):
        import sentencepiece as spm

        try:
            processor = spm.SentencePieceProcessor(model_file=spiece)
        except Exception as err:
            raise UserError(f"cannot read the tokenizer {spiece}: {first_line(err)}") from None
        table = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        if not any(piece.startswith("<extra_id_") for piece in table):
            extra_ids = _read_json(os.path.join(model_dir, TOKENIZER_CONFIG)).get("extra_ids", 100)
            table += [f"<extra_id_{n}>" for n in reversed(range(int(extra_ids)))]
        return table
    if os.path.isfile(tokenizer_json):
        data = _read_json(tokenizer_json)
        try:
            table = {i: piece for i, (piece, _) in enumerate(data["model"]["vocab"])}
            table.update({int(t["id"]): t["content"] for t in data.get("added_tokens", [])})
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"cannot read the tokenizer {tokenizer_json}: not a Unigram vocabulary ({err!r})") from None
        if sorted(table) != list(range(len(table))):
            raise UserError(f"tokenizer {tokenizer_json} has gaps in its ids")
        return [table[i] for i in range(len(table))]
    raise FileNotFoundError(
        f"no tokenizer files in {model_dir} ({SPIECE} or {TOKENIZER_JSON}): they are needed to check "
        "that the model's token ids are ProtT5's; copy them from the released model")


def vocabulary_from_pieces(pieces: list[str], where: str = "the tokenizer") -> ProteinVocabulary:
    """ProtT5's vocabulary, if `pieces` are exactly its table (else ValueError naming the id)."""
    vocabulary = prot_t5_vocabulary()
    ours = list(vocabulary.pieces)
    for token_id, (a, b) in enumerate(zip(pieces, ours)):
        if a != b:
            raise UserError(f"{where} disagrees with ProtT5's id table at id {token_id}: "
                             f"{a!r} there, {b!r} in prottrans_jax.vocab; this is not a ProtT5 tokenizer")
    if len(pieces) != len(ours):
        raise UserError(f"{where} has {len(pieces)} ids, ProtT5's table {len(ours)}")
    return vocabulary


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
