"""Hugging Face XLNet (`XLNetLMHeadModel`, `XLNetModel`) <-> our Flax XLNet, and the same table
for our Transformer-XL.

The family's table for `convert/mapping.py` (layouts in ../shared/design/families-spec.md
section 5.4): q / k / v / r are stored (d, heads, head_dim), already our layout; o is used as
`ibnd,hnd->ibh`, so ours is its (heads, head_dim, d) transpose; the FFN's Linear weights are
transposed; `mask_emb` (1, 1, d) is our (d,); the LM head is the token embedding (tied: a
stored `lm_loss.weight` must equal it) plus `lm_loss.bias`. Parts: "full", XLNetLMHeadModel;
"encoder", XLNetModel (checkpoints without the `transformer.` prefix are read too).
`vocab_size` comes from the embedding's shape, not from config.json.

Transformer-XL has no class in transformers 5: `transfo_xl_from_hf` reads an
`XLNetModel(attn_type="uni")` / `XLNetLMHeadModel` checkpoint through the same table, without
the parts a one-stream, segment-free model lacks (mask_emb, r_s_bias, seg_embed), and an XLNet
checkpoint has no output bias for the encoder part: zeros then.

The tokenizer is SentencePiece `spiece.model`, read with sentencepiece (`tokenizer_pieces`):
ProtXLNet's id table is not known here, so an import always takes the shipped one. Ids 0-8
are XLNet's hard-coded specials (models/xlnet.py SPECIAL_IDS: <unk> 0, <s> 1, </s> 2, <cls> 3,
<sep> 4, <pad> 5, <mask> 6, <eod> 7, <eop> 8); the residues are "▁"-prefixed pieces; X (and U
Z O B, as the ProtTrans notebooks do) has none and maps to <unk> (spm also collapses a run of
X's into one <unk>; our vocabulary keeps one id per residue). `write_tokenizer` writes an
spiece.model and the XLNetTokenizer config (padding on the left, `<sep> <cls>` appended).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import numpy as np

from prottrans_jax.convert import mapping
from prottrans_jax.convert.albert import SPIECE, residue_piece_ids, tokenizer_pieces  # noqa: F401  (the contract's)
from prottrans_jax.convert.mapping import TRANSPOSE, Entry, LayerStack, ParamMap, Transform
from prottrans_jax.errors import UserError
from prottrans_jax.models import transfo_xl, xlnet
from prottrans_jax.models.transfo_xl import TransfoXLConfig
from prottrans_jax.models.xlnet import XLNetConfig
from prottrans_jax.vocab import ProteinVocabulary, prot_xlnet_vocabulary

PARTS = ("full", "encoder")
WORD_EMBEDDING = "transformer.word_embedding.weight"
LM_WEIGHT = "lm_loss.weight"
LM_BIAS = "lm_loss.bias"
MASK_EMB = "transformer.mask_emb"
SEGMENT_KEYS = ("rel_attn.r_s_bias", "rel_attn.seg_embed")  # per layer; not in Transformer-XL

# XLNet's o (d, heads, head_dim) <-> our output kernel (heads, head_dim, d).
OUT_KERNEL = Transform(lambda x: x.transpose(1, 2, 0), lambda x: x.transpose(2, 0, 1))
MASK_EMBEDDING = Transform(lambda x: x.reshape(-1), lambda x: x.reshape(1, 1, -1))


# ------------------------------------------------------------------------------ the table


def _linear(flax_path: tuple[str, ...], hf_prefix: str) -> list[Entry]:
    return [Entry(flax_path + ("kernel",), f"{hf_prefix}.weight", TRANSPOSE),
            Entry(flax_path + ("bias",), f"{hf_prefix}.bias")]


def _layer_norm(flax_path: tuple[str, ...], hf_prefix: str) -> list[Entry]:
    return [Entry(flax_path + ("scale",), f"{hf_prefix}.weight"),
            Entry(flax_path + ("bias",), f"{hf_prefix}.bias")]


def layer_entries(segments: bool = True, p: str = "transformer.layer.{i}") -> tuple[Entry, ...]:
    """One layer's table; without `segments` (Transformer-XL) no r_s_bias, no seg_embed."""
    attention = [Entry(("attention", name), f"{p}.rel_attn.{name}") for name in ("q", "k", "v", "r")]
    attention += [Entry(("attention", "o"), f"{p}.rel_attn.o", OUT_KERNEL),
                  Entry(("attention", "r_w_bias"), f"{p}.rel_attn.r_w_bias"),
                  Entry(("attention", "r_r_bias"), f"{p}.rel_attn.r_r_bias")]
    if segments:
        attention += [Entry(("attention", "r_s_bias"), f"{p}.rel_attn.r_s_bias"),
                      Entry(("attention", "seg_embed"), f"{p}.rel_attn.seg_embed")]
    return (*attention,
            *_layer_norm(("attention_layer_norm",), f"{p}.rel_attn.layer_norm"),
            *_linear(("mlp", "wi"), f"{p}.ff.layer_1"),
            *_linear(("mlp", "wo"), f"{p}.ff.layer_2"),
            *_layer_norm(("mlp_layer_norm",), f"{p}.ff.layer_norm"))


def param_map(config: XLNetConfig | TransfoXLConfig, part: str, segments: bool = True) -> ParamMap:
    """The table for `part` ("full" or "encoder"), HF names in XLNetLMHeadModel form;
    `segments=False` is Transformer-XL's (no query stream, no segment term)."""
    entries = [Entry(("word_embedding", "embedding"), WORD_EMBEDDING)]
    if segments:
        entries.append(Entry(("mask_emb",), MASK_EMB, MASK_EMBEDDING))
    if _check_part(part) == "full":
        entries.append(Entry(("lm_head", "bias"), LM_BIAS))
    stack = LayerStack(("stack",), config.num_layers, layer_entries(segments), config.scan_layers)
    return ParamMap(tuple(entries), (stack,))


def _check_part(part: str) -> str:
    if part not in PARTS:
        raise UserError(f"XLNet part {part!r}; expected one of {PARTS}")
    return part


def canonical_state_dict(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF names as XLNetLMHeadModel saves them: the `transformer.` prefix (XLNetModel saves none)."""
    bare = not any(k.startswith("transformer.") for k in state_dict)
    return {(f"transformer.{k}" if bare and not k.startswith("lm_loss.") else k): np.asarray(v)
            for k, v in state_dict.items()}


def _tied_head(state_dict: dict[str, np.ndarray]) -> set[str]:
    """{lm_loss.weight} when stored (it must equal the embedding: XLNet ties them), else {}."""
    if LM_WEIGHT not in state_dict:
        return set()
    if not np.array_equal(state_dict[LM_WEIGHT], state_dict.get(WORD_EMBEDDING)):
        raise UserError(f"Hugging Face weight {LM_WEIGHT!r} differs from {WORD_EMBEDDING!r}; XLNet ties them")
    return {LM_WEIGHT}


# ------------------------------------------------------------------------------ HF <-> ours


def hf_to_flax(state_dict: dict[str, Any], config: XLNetConfig, part: str = "full") -> dict[str, Any]:
    """Hugging Face XLNet weights -> our params (numpy, config.param_dtype) for `part`.

    Every weight must be used (for part "encoder", the LM head counts as used), every
    parameter filled, else ValueError naming the key.
    """
    state_dict = canonical_state_dict(state_dict)
    ignored = _tied_head(state_dict) | ({LM_BIAS} if _check_part(part) == "encoder" else set())
    params = mapping.hf_to_flax(state_dict, param_map(config, part), config.param_dtype, ignored=ignored,
                                what=f"XLNet config {_short(config)} (part {part})")
    abstract = _abstract(xlnet.init_params, config)
    if part == "encoder":
        abstract = mapping.select(abstract, ("word_embedding", "mask_emb", "stack"))
    mapping.check_shapes(params, abstract)
    return params


def flax_to_hf(params: Any, config: XLNetConfig, part: str = "full") -> dict[str, np.ndarray]:
    """Our params -> a Hugging Face state_dict: XLNetLMHeadModel names for "full" (with the
    tied `lm_loss.weight`, as it saves), XLNetModel names (no prefix) for "encoder"."""
    if _check_part(part) == "encoder":
        params = mapping.select(params, ("word_embedding", "mask_emb", "stack"))
    state_dict = mapping.flax_to_hf(params, param_map(config, part))
    if part == "encoder":
        return {key[len("transformer."):]: value for key, value in state_dict.items()}
    return {**state_dict, LM_WEIGHT: state_dict[WORD_EMBEDDING]}


def transfo_xl_from_hf(state_dict: dict[str, Any], config: TransfoXLConfig) -> dict[str, Any]:
    """An XLNet(attn_type="uni") checkpoint -> our Transformer-XL's params: the same table
    without mask_emb / r_s_bias / seg_embed (unused by a one-stream, segment-free model); the
    output bias is lm_loss.bias, or zeros from an XLNetModel checkpoint."""
    state_dict = canonical_state_dict(state_dict)
    unused = {MASK_EMB} | _tied_head(state_dict)
    unused |= {f"transformer.layer.{i}.{key}" for i in range(config.num_layers) for key in SEGMENT_KEYS}
    part = "full" if LM_BIAS in state_dict else "encoder"
    params = mapping.hf_to_flax(state_dict, param_map(config, part, segments=False), config.param_dtype,
                                ignored=unused, what=f"Transformer-XL config {_short(config)}")
    if part == "encoder":
        params["lm_head"] = {"bias": np.zeros((config.vocab_size,), config.param_dtype)}
    mapping.check_shapes(params, _abstract(transfo_xl.init_params, config))
    return params


def _abstract(init_params, config) -> Any:
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


# ------------------------------------------------------------------------------ configs


def config_from_hf(hf_config: dict[str, Any], state_dict: dict[str, Any] | None = None,
                   **overrides: Any) -> XLNetConfig:
    """A Hugging Face XLNet `config.json` dict -> XLNetConfig (overrides: e.g. dtype, scan_layers).

    With the weights, `vocab_size` comes from the embedding's shape (ProtXLNet's config.json
    value is unknown). null `mem_len` / `reuse_len` become 0.
    """
    if hf_config.get("model_type", "xlnet") != "xlnet":
        raise UserError(f"not an XLNet config: model_type={hf_config.get('model_type')!r}")
    if hf_config.get("untie_r", True) is not True:
        raise UserError("unsupported XLNet untie_r=False: transformers 5 keeps per-layer biases")
    d_model, n_head = hf_config.get("d_model", 1024), hf_config.get("n_head", 16)
    dropout = hf_config.get("dropout", 0.1)
    kwargs = dict(
        vocab_size=hf_config.get("vocab_size", 32000),
        hidden_size=d_model,
        num_layers=hf_config.get("n_layer", 24),
        num_heads=n_head,
        head_dim=hf_config.get("d_head", d_model // n_head),
        intermediate_size=hf_config.get("d_inner", 4096),
        hidden_act=mapping.activation_from_hf(hf_config.get("ff_activation", "gelu"), "XLNet"),
        dropout_prob=dropout,
        attention_dropout_prob=dropout,
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        initializer_range=hf_config.get("initializer_range", 0.02),
        clamp_len=hf_config.get("clamp_len", -1),
        same_length=hf_config.get("same_length", False),
        mem_len=hf_config.get("mem_len") or 0,
        reuse_len=hf_config.get("reuse_len") or 0,
        attn_type=hf_config.get("attn_type", "bi"),
        bi_data=hf_config.get("bi_data", False),
        pad_id=hf_config.get("pad_token_id", xlnet.SPECIAL_IDS["<pad>"]),
    )
    if state_dict is not None:
        canonical = canonical_state_dict(state_dict)
        if WORD_EMBEDDING in canonical:
            kwargs["vocab_size"] = int(canonical[WORD_EMBEDDING].shape[0])
    kwargs.update(overrides)
    return XLNetConfig(**kwargs)


def hf_config_from(config: XLNetConfig, part: str = "full") -> dict[str, Any]:
    """XLNetConfig -> a `config.json` dict that transformers 5 loads equivalently."""
    if config.dropout_prob != config.attention_dropout_prob:
        raise UserError(f"XLNetConfig.attention_dropout_prob {config.attention_dropout_prob} differs from "
                         f"dropout_prob {config.dropout_prob}: Hugging Face XLNet has one dropout")
    architecture = "XLNetModel" if _check_part(part) == "encoder" else "XLNetLMHeadModel"
    return {
        "architectures": [architecture],
        "model_type": "xlnet",
        "vocab_size": config.vocab_size,
        "d_model": config.hidden_size,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "d_head": config.head_dim,
        "d_inner": config.intermediate_size,
        "ff_activation": mapping.ACTIVATIONS_TO_HF[config.hidden_act],
        "dropout": config.dropout_prob,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "attn_type": config.attn_type,
        "bi_data": config.bi_data,
        "clamp_len": config.clamp_len,
        "same_length": config.same_length,
        "mem_len": config.mem_len or None,
        "reuse_len": config.reuse_len or None,
        "pad_token_id": config.pad_id,
        "bos_token_id": xlnet.SPECIAL_IDS["<s>"],
        "eos_token_id": xlnet.SPECIAL_IDS["</s>"],
        "tie_word_embeddings": True,
    }


def _short(config: XLNetConfig | TransfoXLConfig) -> str:
    return (f"(hidden={config.hidden_size}, layers={config.num_layers}, heads={config.num_heads}x"
            f"{config.head_dim}, vocab={config.vocab_size})")


# ------------------------------------------------------------------------------ tokenizer

REQUIRED_SPECIALS = ("<unk>", "<cls>", "<sep>", "<pad>")


def vocabulary_from_pieces(pieces: list[str], where: str = "the tokenizer") -> ProteinVocabulary:
    """A vocabulary over an XLNet SentencePiece table: its specials (<unk> <cls> <sep> <pad>,
    <mask> if present) and one "▁"-prefixed piece per residue (a residue it lacks, X included,
    is encoded as <unk>)."""
    pieces = list(pieces)
    missing = [token for token in REQUIRED_SPECIALS if token not in pieces]
    if missing:
        raise UserError(f"{where} has no {missing[0]} piece: not an XLNet vocabulary")
    letters = residue_piece_ids(pieces, where)
    builtin = prot_xlnet_vocabulary()
    if pieces == list(builtin.pieces):
        return builtin
    index = pieces.index
    return ProteinVocabulary("xlnet_spiece", pieces, letters, pad_id=index("<pad>"), eos_id=index("<sep>"),
                             unk_id=index("<unk>"), mask_id=index("<mask>") if "<mask>" in pieces else None,
                             bos_id=index("<cls>"))


def write_tokenizer(output_dir: str, vocabulary: ProteinVocabulary | None = None) -> None:
    """spiece.model + tokenizer_config.json + special_tokens_map.json (XLNetTokenizer, cased,
    padding on the left) for `vocabulary`'s table, id for id.

    The SentencePiece model is built from its protobuf (unigram, identity normaliser); the
    specials are control pieces (<unk> the unknown one), every residue a normal piece.
    transformers' XLNetTokenizer appends `<sep> <cls>` with token types 0 and 2.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    vocabulary = vocabulary or prot_xlnet_vocabulary()
    pieces = list(vocabulary.pieces)
    kinds = sp_pb2.ModelProto.SentencePiece
    model = sp_pb2.ModelProto()
    model.trainer_spec.model_type = sp_pb2.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = len(pieces)
    model.trainer_spec.unk_id, model.trainer_spec.pad_id = vocabulary.unk_id, vocabulary.pad_id
    model.trainer_spec.bos_id = pieces.index("<s>") if "<s>" in pieces else -1
    model.trainer_spec.eos_id = pieces.index("</s>") if "</s>" in pieces else -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    for token_id, text in enumerate(pieces):
        piece = model.pieces.add()
        piece.piece = text
        if token_id == vocabulary.unk_id:
            piece.type = kinds.UNKNOWN
        elif text.startswith("<") and text.endswith(">"):
            piece.type = kinds.CONTROL
        else:
            piece.type = kinds.NORMAL
        piece.score = -float(token_id) if piece.type == kinds.NORMAL else 0.0
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, SPIECE), "wb") as f:
        f.write(model.SerializeToString())
    specials = {f"{role}_token": token for role, token in (
        ("unk", "<unk>"), ("bos", "<s>"), ("eos", "</s>"), ("cls", "<cls>"), ("sep", "<sep>"), ("pad", "<pad>"),
        ("mask", "<mask>")) if token in pieces}
    config = {"tokenizer_class": "XLNetTokenizer", "do_lower_case": False, "keep_accents": True,
              "remove_space": True, "padding_side": "left", "model_max_length": 1000000000, **specials}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        with open(os.path.join(output_dir, name), "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
