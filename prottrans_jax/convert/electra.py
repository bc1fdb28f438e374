"""Hugging Face ELECTRA (`ElectraForPreTraining`, `ElectraForMaskedLM`) <-> our Flax ELECTRA.

ProtElectra was released as two directories (families-spec.md sections 4.1, 4.4): the
discriminator as `ElectraForPreTraining`, the generator as `ElectraForMaskedLM`, each with
its own copy of the shared embeddings and ProtBert's `vocab.txt`. Here both towers are one
parameter tree, so:

- parts "discriminator" and "generator" are one directory each (`SPLIT_PARTS`); "full", the
  pre-training model, is a directory holding both, as `export_hf` writes it, and what
  continued pre-training reads (`merge_parts` checks that their embeddings are identical);
- a tower's layers have BERT's names under `electra.encoder.layer.{i}`; `embeddings_project`
  exists when the tower is narrower than the embeddings; the generator's output layer is
  the word embedding (tied: a stored `generator_lm_head.weight` must equal it) plus
  `generator_lm_head.bias`;
- the released files are larger than their parameters (families-spec.md 1.1: what else they
  hold is unknown), so keys outside ELECTRA's own prefixes are ignored, not errors; inside
  them every key must be used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prottrans_jax.convert import bert as bert_convert, mapping
from prottrans_jax.convert.bert import linear, layer_norm, layer_entries
from prottrans_jax.convert.mapping import Entry, LayerStack, ParamMap
from prottrans_jax.errors import UserError
from prottrans_jax.models.electra import TOWERS, ElectraConfig, ElectraPretrainModel

PARTS = ("full", *TOWERS)
SPLIT_PARTS = TOWERS
WORD_EMBEDDINGS = "electra.embeddings.word_embeddings.weight"
LM_HEAD_WEIGHT = "generator_lm_head.weight"
HEAD_PREFIXES = {"discriminator": ("discriminator_predictions.",),
                 "generator": ("generator_predictions.", "generator_lm_head.")}
ARCHITECTURES = {"discriminator": "ElectraForPreTraining", "generator": "ElectraForMaskedLM"}
# Our tower fields <- Hugging Face ElectraConfig keys (the generator's fields: `generator_` + ours).
TOWER_FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
                "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size"}
SHARED_FIELDS = {"vocab_size": "vocab_size", "embedding_size": "embedding_size",
                 "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
                 "hidden_dropout_prob": "hidden_dropout_prob",
                 "attention_dropout_prob": "attention_probs_dropout_prob", "layer_norm_eps": "layer_norm_eps",
                 "initializer_range": "initializer_range"}
# transformers 5's ElectraConfig defaults (ELECTRA-small), for keys a config.json omits.
HF_DEFAULTS = {"vocab_size": 30522, "embedding_size": 128, "hidden_size": 256, "num_hidden_layers": 12,
               "num_attention_heads": 4, "intermediate_size": 1024, "max_position_embeddings": 512,
               "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
               "layer_norm_eps": 1e-12, "initializer_range": 0.02}

tokenizer_pieces = bert_convert.tokenizer_pieces
vocabulary_from_pieces = bert_convert.vocabulary_from_pieces


def write_tokenizer(output_dir: str, vocabulary=None) -> None:
    bert_convert.write_tokenizer(output_dir, vocabulary, tokenizer_class="ElectraTokenizer")


# ------------------------------------------------------------------------------ the table


def _tower(part: str) -> str:
    if part not in TOWERS:
        raise UserError(f"ELECTRA part {part!r}: one directory holds one of {TOWERS} "
                         "(the whole model is one directory per part)")
    return part


def param_map(config: ElectraConfig, part: str) -> ParamMap:
    """The table of one tower's Hugging Face model (shared embeddings included)."""
    tower = config.tower(_tower(part))
    entries = [
        Entry(("embeddings", "word", "embedding"), WORD_EMBEDDINGS),
        Entry(("embeddings", "position", "embedding"), "electra.embeddings.position_embeddings.weight"),
        Entry(("embeddings", "token_type", "embedding"), "electra.embeddings.token_type_embeddings.weight"),
        *layer_norm(("embeddings", "layer_norm"), "electra.embeddings.LayerNorm"),
    ]
    if tower.hidden_size != config.embedding_size:
        entries += linear((part, "projection"), "electra.embeddings_project")
    if part == "discriminator":
        entries += [*linear((part, "head", "dense"), "discriminator_predictions.dense"),
                    *linear((part, "head", "prediction"), "discriminator_predictions.dense_prediction")]
    else:
        entries += [*linear((part, "head", "dense"), "generator_predictions.dense"),
                    *layer_norm((part, "head", "layer_norm"), "generator_predictions.LayerNorm"),
                    Entry((part, "head", "output_bias"), "generator_lm_head.bias")]
    stack = LayerStack((part, "encoder"), tower.num_layers, layer_entries("electra.encoder.layer.{i}"),
                       config.scan_layers)
    return ParamMap(tuple(entries), (stack,))


def _own_keys(state_dict: dict[str, Any]) -> dict[str, np.ndarray]:
    """ELECTRA's own weights: `electra.*` and the heads', without position/token-type buffers."""
    prefixes = ("electra.", *HEAD_PREFIXES["discriminator"], *HEAD_PREFIXES["generator"])
    return {key: np.asarray(value) for key, value in state_dict.items()
            if key.startswith(prefixes) and not key.endswith(("position_ids", "token_type_ids"))}


def hf_part(hf_config: dict[str, Any], state_dict: dict[str, Any]) -> str:
    """Which tower one Hugging Face directory holds, from its heads' weights."""
    del hf_config  # `architectures` may be missing; the weights say it
    found = [part for part in TOWERS if any(key.startswith(HEAD_PREFIXES[part]) for key in state_dict)]
    if len(found) != 1:
        raise UserError("an ELECTRA directory holds an ElectraForPreTraining (discriminator) or an "
                         f"ElectraForMaskedLM (generator); this one has {'both heads' if found else 'no head'}")
    return found[0]


# ------------------------------------------------------------------------------ HF <-> ours


def hf_to_flax(state_dict: dict[str, Any], config: ElectraConfig, part: str) -> dict[str, Any]:
    """One tower's Hugging Face weights -> our params for `embeddings` and that tower (numpy,
    config.param_dtype). Inside ELECTRA's prefixes every weight must be used, and every
    parameter filled, else ValueError naming the key."""
    part = _tower(part)
    state_dict = _own_keys(state_dict)
    ignored = set()
    if part == "generator" and LM_HEAD_WEIGHT in state_dict:
        if not np.array_equal(state_dict[LM_HEAD_WEIGHT], state_dict.get(WORD_EMBEDDINGS)):
            raise UserError(f"Hugging Face weight {LM_HEAD_WEIGHT!r} differs from {WORD_EMBEDDINGS!r}; "
                             "ELECTRA's generator ties them")
        ignored.add(LM_HEAD_WEIGHT)
    params = mapping.hf_to_flax(state_dict, param_map(config, part), config.param_dtype, ignored=ignored,
                                what=f"ELECTRA {part} {_short(config, part)}")
    abstract = mapping.select(ElectraPretrainModel(config).abstract_params(), ("embeddings", part))
    mapping.check_shapes(params, abstract)
    return params


def flax_to_hf(params: Any, config: ElectraConfig, part: str) -> dict[str, np.ndarray]:
    """Our params -> one tower's Hugging Face state_dict (the tied output layer written out)."""
    part = _tower(part)
    state_dict = mapping.flax_to_hf(mapping.select(params, ("embeddings", part)), param_map(config, part))
    if part == "generator":
        state_dict[LM_HEAD_WEIGHT] = state_dict[WORD_EMBEDDINGS].copy()
    return state_dict


def merge_parts(loaded: dict[str, tuple[dict, dict]], **overrides: Any) -> tuple[ElectraConfig, dict]:
    """The whole model from {tower: (hf_config, state_dict)}: one config (the shared fields
    must agree) and one tree (the shared embeddings must be identical)."""
    configs = {part: config_from_hf(*loaded[part], **overrides) for part in TOWERS}
    discriminator, generator = configs["discriminator"], configs["generator"]
    for field in (*SHARED_FIELDS, "hidden_act", "pad_id"):
        if getattr(discriminator, field) != getattr(generator, field):
            raise UserError(f"the ELECTRA generator has {field}={getattr(generator, field)!r}, the "
                             f"discriminator {getattr(discriminator, field)!r}: they must agree")
    config = ElectraConfig(**{**_fields(discriminator, "discriminator"), **_fields(generator, "generator"),
                              **{f: getattr(discriminator, f) for f in (*SHARED_FIELDS, "hidden_act", "pad_id")},
                              **overrides})
    params = {part: hf_to_flax(loaded[part][1], config, part) for part in TOWERS}
    for path, value in mapping.flatten(params["discriminator"]["embeddings"], ("embeddings",)):
        if not np.array_equal(value, mapping.get_path(params["generator"], path)):
            raise UserError(f"the ELECTRA generator's and discriminator's {'/'.join(path)} differ: "
                             "this model shares the embeddings of both")
    return config, {"embeddings": params["discriminator"]["embeddings"],
                    **{part: params[part][part] for part in TOWERS}}


# ------------------------------------------------------------------------------ configs


def _fields(config: ElectraConfig, part: str) -> dict[str, Any]:
    prefix = "generator_" if part == "generator" else ""
    return {f"{prefix}{field}": getattr(config, f"{prefix}{field}") for field in TOWER_FIELDS}


def config_from_hf(hf_config: dict[str, Any], state_dict: dict[str, Any] | None = None,
                   **overrides: Any) -> ElectraConfig:
    """One tower's `config.json` -> an ElectraConfig with that tower's sizes (the other tower
    keeps the defaults: `merge_parts` joins both). Without the weights, a config that names
    `ElectraForMaskedLM` is the generator's. `vocab_size` comes from the embedding's shape."""
    if hf_config.get("model_type", "electra") != "electra":
        raise UserError(f"not an ELECTRA config: model_type={hf_config.get('model_type')!r}")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"unsupported ELECTRA position_embedding_type {hf_config['position_embedding_type']!r}")
    act = mapping.activation_from_hf(hf_config.get("hidden_act", "gelu"), "ELECTRA")
    if state_dict is not None:
        part = hf_part(hf_config, state_dict)
    else:
        part = "generator" if "ElectraForMaskedLM" in (hf_config.get("architectures") or []) else "discriminator"
    value = lambda key: hf_config.get(key, HF_DEFAULTS[key])  # noqa: E731
    prefix = "generator_" if part == "generator" else ""
    kwargs = {f"{prefix}{ours}": value(theirs) for ours, theirs in TOWER_FIELDS.items()}
    kwargs.update({ours: value(theirs) for ours, theirs in SHARED_FIELDS.items()})
    kwargs.update(hidden_act=act, pad_id=hf_config.get("pad_token_id", 0) or 0)
    if state_dict is not None and WORD_EMBEDDINGS in state_dict:
        kwargs["vocab_size"] = int(np.asarray(state_dict[WORD_EMBEDDINGS]).shape[0])
    kwargs.update(overrides)
    return ElectraConfig(**kwargs)


def hf_config_from(config: ElectraConfig, part: str) -> dict[str, Any]:
    """One tower's `config.json` dict, as transformers 5's ElectraConfig reads it."""
    part = _tower(part)
    prefix = "generator_" if part == "generator" else ""
    out = {"architectures": [ARCHITECTURES[part]], "model_type": "electra",
           **{theirs: getattr(config, f"{prefix}{ours}") for ours, theirs in TOWER_FIELDS.items()},
           **{theirs: getattr(config, ours) for ours, theirs in SHARED_FIELDS.items()},
           "hidden_act": mapping.ACTIVATIONS_TO_HF[config.hidden_act],
           "pad_token_id": config.pad_id, "position_embedding_type": "absolute", "tie_word_embeddings": True}
    return out


def _short(config: ElectraConfig, part: str) -> str:
    tower = config.tower(part)
    return (f"(embedding={config.embedding_size}, hidden={tower.hidden_size}, layers={tower.num_layers}, "
            f"heads={tower.num_heads}, vocab={config.vocab_size})")
