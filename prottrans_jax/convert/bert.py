"""Hugging Face BERT (`BertForPreTraining`, `BertForMaskedLM`, `BertModel`) <-> our Flax BERT,
and the `vocab.txt` tokenizer.

The family's table for `convert/mapping.py` (layouts in ../shared/design/families-spec.md
section 2.4): every linear weight is transposed; the MLM decoder is the token embedding
(tied: a stored `cls.predictions.decoder.weight` must equal it) and its bias is
`cls.predictions.bias`. Parts: "full", the pre-training model (MLM head, plus the pooler and
next-sentence head when the checkpoint has them: `BertForPreTraining`), and "encoder", what
embedding reads (`BertModel` without its pooler). Checkpoints saved from `BertModel` (no
`bert.` prefix) and legacy `gamma`/`beta` LayerNorm names are read too; `position_ids` buffers
are ignored. `vocab_size` comes from the embedding's shape, not from config.json.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from prottrans_jax.convert import mapping
from prottrans_jax.convert.mapping import TRANSPOSE, Entry, LayerStack, ParamMap
from prottrans_jax.errors import UserError
from prottrans_jax.models.bert import BertConfig, BertMLMModel
from prottrans_jax.vocab import PROTEIN_ALPHABET, ProteinVocabulary, prot_bert_vocabulary

PARTS = ("full", "encoder")
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
DECODER_WEIGHT = "cls.predictions.decoder.weight"
DECODER_BIAS = "cls.predictions.decoder.bias"
POOLER = "bert.pooler.dense.weight"
NSP = "cls.seq_relationship.weight"
VOCAB_TXT = "vocab.txt"
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}



# ------------------------------------------------------------------------------ the table


def linear(flax_path: tuple[str, ...], hf_prefix: str) -> list[Entry]:
    return [Entry(flax_path + ("kernel",), f"{hf_prefix}.weight", TRANSPOSE),
            Entry(flax_path + ("bias",), f"{hf_prefix}.bias")]


def layer_norm(flax_path: tuple[str, ...], hf_prefix: str) -> list[Entry]:
    return [Entry(flax_path + ("scale",), f"{hf_prefix}.weight"),
            Entry(flax_path + ("bias",), f"{hf_prefix}.bias")]


def layer_entries(p: str = "bert.encoder.layer.{i}") -> tuple[Entry, ...]:
    """One BERT layer's table (also ELECTRA's, under `electra.encoder.layer.{i}`)."""
    return (
        *linear(("attention", "query"), f"{p}.attention.self.query"),
        *linear(("attention", "key"), f"{p}.attention.self.key"),
        *linear(("attention", "value"), f"{p}.attention.self.value"),
        *linear(("attention", "out"), f"{p}.attention.output.dense"),
        *layer_norm(("attention_layer_norm",), f"{p}.attention.output.LayerNorm"),
        *linear(("mlp", "wi"), f"{p}.intermediate.dense"),
        *linear(("mlp", "wo"), f"{p}.output.dense"),
        *layer_norm(("mlp_layer_norm",), f"{p}.output.LayerNorm"),
    )


def param_map(config: BertConfig, part: str) -> ParamMap:
    """The BERT table for `part` ("full" or "encoder"), with HF names in BertFor* form."""
    entries = [
        Entry(("embeddings", "word", "embedding"), WORD_EMBEDDINGS),
        Entry(("embeddings", "position", "embedding"), "bert.embeddings.position_embeddings.weight"),
        Entry(("embeddings", "token_type", "embedding"), "bert.embeddings.token_type_embeddings.weight"),
        *layer_norm(("embeddings", "layer_norm"), "bert.embeddings.LayerNorm"),
    ]
    if part == "full":
        entries += [*linear(("mlm", "transform"), "cls.predictions.transform.dense"),
                    *layer_norm(("mlm", "layer_norm"), "cls.predictions.transform.LayerNorm"),
                    Entry(("mlm", "output_bias"), "cls.predictions.bias")]
        if config.pretraining_heads:
            entries += [*linear(("pooler",), "bert.pooler.dense"),
                        *linear(("nsp",), "cls.seq_relationship")]
    stack = LayerStack(("encoder",), config.num_layers, layer_entries(), config.scan_layers)
    return ParamMap(tuple(entries), (stack,))


def _check_part(part: str) -> str:
    if part not in PARTS:
        raise UserError(f"BERT part {part!r}; expected one of {PARTS}")
    return part


def canonical_state_dict(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF names as BertFor* saves them: `bert.` prefix (BertModel saves none), LayerNorm
    weight/bias (legacy checkpoints: gamma/beta), no position_ids buffers."""
    bare = not any(k.startswith("bert.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("position_ids", "token_type_ids")) and "embeddings" in key:
            continue  # buffers, not weights
        if bare and not key.startswith("cls."):
            key = f"bert.{key}"
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = np.asarray(value)
    return out


# ------------------------------------------------------------------------------ HF <-> ours


def hf_to_flax(state_dict: dict[str, Any], config: BertConfig, part: str = "full") -> dict[str, Any]:
    """Hugging Face BERT weights -> our params (numpy, config.param_dtype) for `part`.

    Every weight must be used (for part "encoder", the heads count as used), every parameter
    filled, else ValueError naming the key.
    """
    state_dict = canonical_state_dict(state_dict)
    part = _check_part(part)
    ignored = set()
    if part == "encoder":
        ignored = {k for k in state_dict if not k.startswith(("bert.embeddings.", "bert.encoder."))}
    elif DECODER_WEIGHT in state_dict:  # the tied output layer, when saved: must be the embedding
        if not np.array_equal(state_dict[DECODER_WEIGHT], state_dict.get(WORD_EMBEDDINGS)):
            raise UserError(f"Hugging Face weight {DECODER_WEIGHT!r} differs from {WORD_EMBEDDINGS!r}; "
                             "BERT ties them")
        ignored.add(DECODER_WEIGHT)
    if part == "full" and DECODER_BIAS in state_dict:
        if not np.array_equal(state_dict[DECODER_BIAS], state_dict.get("cls.predictions.bias")):
            raise UserError(f"Hugging Face weight {DECODER_BIAS!r} differs from 'cls.predictions.bias'")
        ignored.add(DECODER_BIAS)
    params = mapping.hf_to_flax(state_dict, param_map(config, part), config.param_dtype, ignored=ignored,
                                what=f"BERT config {_short(config)} (part {part})")
    abstract = BertMLMModel(config).abstract_params()
    if part == "encoder":
        abstract = mapping.select(abstract, ("embeddings", "encoder"))
    mapping.check_shapes(params, abstract)
    return params


def flax_to_hf(params: Any, config: BertConfig, part: str = "full") -> dict[str, np.ndarray]:
    """Our params -> a Hugging Face state_dict: BertFor* names for "full", BertModel names
    (no `bert.` prefix) for "encoder"."""
    part = _check_part(part)
    if part == "encoder":
        params = mapping.select(params, ("embeddings", "encoder"))
    state_dict = mapping.flax_to_hf(params, param_map(config, part))
    if part == "encoder":
        return {key[len("bert."):]: value for key, value in state_dict.items()}
    return state_dict


# ------------------------------------------------------------------------------ configs


def config_from_hf(hf_config: dict[str, Any], state_dict: dict[str, Any] | None = None,
                   **overrides: Any) -> BertConfig:
    """A Hugging Face BERT `config.json` dict -> BertConfig (overrides: e.g. dtype, scan_layers).

    With the weights, `vocab_size` comes from the embedding's shape and `pretraining_heads`
    from whether the pooler and next-sentence head are stored.
    """
    if hf_config.get("model_type", "bert") != "bert":
        raise UserError(f"not a BERT config: model_type={hf_config.get('model_type')!r}")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"unsupported BERT position_embedding_type "
                         f"{hf_config['position_embedding_type']!r}; expected 'absolute'")
    act = mapping.activation_from_hf(hf_config.get("hidden_act", "gelu"), "BERT")
    kwargs = dict(
        vocab_size=hf_config.get("vocab_size", 30522),
        hidden_size=hf_config.get("hidden_size", 768),
        num_layers=hf_config.get("num_hidden_layers", 12),
        num_heads=hf_config.get("num_attention_heads", 12),
        intermediate_size=hf_config.get("intermediate_size", 3072),
        hidden_act=act,
        max_position_embeddings=hf_config.get("max_position_embeddings", 512),
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        hidden_dropout_prob=hf_config.get("hidden_dropout_prob", 0.1),
        attention_dropout_prob=hf_config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        initializer_range=hf_config.get("initializer_range", 0.02),
        pad_id=hf_config.get("pad_token_id", 0) or 0,
    )
    if state_dict is not None:
        canonical = canonical_state_dict(state_dict)
        if WORD_EMBEDDINGS in canonical:
            kwargs["vocab_size"] = int(canonical[WORD_EMBEDDINGS].shape[0])
        kwargs["pretraining_heads"] = POOLER in canonical and NSP in canonical
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def hf_config_from(config: BertConfig, part: str = "full") -> dict[str, Any]:
    """BertConfig -> a `config.json` dict that transformers 5 loads equivalently."""
    architecture = "BertModel" if _check_part(part) == "encoder" else "BertForMaskedLM"
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
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


def _short(config: BertConfig) -> str:
    return (f"(hidden={config.hidden_size}, layers={config.num_layers}, heads={config.num_heads}, "
            f"vocab={config.vocab_size}, pretraining_heads={config.pretraining_heads})")


# ------------------------------------------------------------------------------ tokenizer


def tokenizer_pieces(model_dir: str) -> list[str]:
    """The id -> token table of a BERT directory's `vocab.txt` (id = line index)."""
    path = os.path.join(model_dir, VOCAB_TXT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer file in {model_dir} ({VOCAB_TXT}): it gives the model's "
                                "token ids; copy it from the released model")
    try:
        with open(path, encoding="utf-8") as f:
            tokens = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not tokens:
        raise UserError(f"{path}: empty vocabulary file")
    return tokens


def vocabulary_from_pieces(pieces: list[str], where: str = "the tokenizer") -> ProteinVocabulary:
    """A vocabulary over a BERT token table: its special tokens, and its single-letter residue
    tokens (a residue it lacks, X included, is encoded as [UNK])."""
    pieces = list(pieces)
    ids = {}
    for role, token in SPECIAL_TOKENS.items():
        if token in pieces:
            ids[role] = pieces.index(token)
        elif role != "mask":
            raise UserError(f"{where} has no {token} token: not a BERT vocabulary")
    letters = {token: i for i, token in enumerate(pieces) if len(token) == 1 and token in PROTEIN_ALPHABET}
    missing = sorted(set("ACDEFGHIKLMNPQRSTVWY") - set(letters))
    if missing:
        raise UserError(f"{where} has no token for residue(s) {''.join(missing)}: not a protein vocabulary")
    builtin = prot_bert_vocabulary()
    if pieces == list(builtin.pieces):
        return builtin
    return ProteinVocabulary("bert_vocab", pieces, letters, pad_id=ids["pad"], eos_id=ids["sep"],
                             unk_id=ids["unk"], mask_id=ids.get("mask"), bos_id=ids["cls"])


def write_tokenizer(output_dir: str, vocabulary: ProteinVocabulary | None = None,
                    tokenizer_class: str = "BertTokenizer") -> None:
    """vocab.txt + tokenizer_config.json + special_tokens_map.json (BertTokenizer, cased;
    ELECTRA's tokenizer class reads the same files)."""
    vocabulary = vocabulary or prot_bert_vocabulary()
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, VOCAB_TXT), "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary.pieces) + "\n")
    specials = {f"{role}_token": token for role, token in SPECIAL_TOKENS.items()
                if token in vocabulary.pieces}
    config = {"tokenizer_class": tokenizer_class, "do_lower_case": False, "do_basic_tokenize": True,
              "tokenize_chinese_chars": False, "strip_accents": False,
              "model_max_length": 1000000000, **specials}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        with open(os.path.join(output_dir, name), "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
