"""The family registry: what the trainer, `embed`, `export_hf` and `downstream` look a model up in.

A family is a model config class, its pre-training model (models/base.py: `PretrainModel`),
its inference encoder (`Encoder` below) and its Hugging Face converter module. Each family
registers itself at the end of its model file (`register(Family(...))`); importing this
module imports every module of `prottrans_jax.models`, so a new family needs no edit here.

A converter module (`prottrans_jax/convert/<family>.py`) provides:

    config_from_hf(hf_config, state_dict, **overrides) -> config
    hf_config_from(config, part) -> config.json dict
    hf_to_flax(state_dict, config, part) -> params (numpy)     part: one of PARTS
    flax_to_hf(params, config, part) -> state_dict (numpy)
    tokenizer_pieces(directory) -> id -> piece table of the tokenizer shipped with weights
    vocabulary_from_pieces(pieces) -> ProteinVocabulary
    write_tokenizer(directory, vocabulary)
    PARTS: the parts a checkpoint can hold; PARTS[0] is the whole pre-training model and
           each of `Encoder.PARTS` is a part that embedding can read

and, for a family whose released form is one Hugging Face directory per part (ELECTRA: the
generator and the discriminator), also:

    SPLIT_PARTS: the parts stored apart; the whole model (PARTS[0]) is a directory holding
           one subdirectory per split part, named by it
    hf_part(hf_config, state_dict) -> which split part one directory holds
    merge_parts({part: (hf_config, state_dict)}, **overrides) -> (config, params)

MODEL_DIR/model.json (written by the trainer) names the family, its config and vocabulary,
so nothing downstream needs a flag, or gin, to know what a directory holds.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping, Protocol

import gin
import jax
import numpy as np

from prottrans_jax.errors import UserError
from prottrans_jax.vocab import ProteinVocabulary


class Encoder(Protocol):
    """What embedding needs of a family: framing, the residues' hidden states, the table.

    `Encoder(config, part)`: `part` is one of the class's `PARTS` (the first by default;
    ELECTRA embeds with its discriminator or its generator), a part of the converter's too;
    `param_keys` are the top-level parameter subtrees it reads (orbax restores only those);
    `hidden_states` is jittable and returns (batch, length, width) in the compute dtype.
    """

    PARTS: tuple[str, ...]
    config: Any
    part: str
    param_keys: tuple[str, ...]
    width: int  # of the hidden states (not of the token embedding: ALBERT, ELECTRA differ)

    def framing(self, vocabulary: ProteinVocabulary) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(ids before, ids after) the residues of one protein, e.g. ([CLS]) and ([SEP])."""

    def hidden_states(self, params: Any, tokens: jax.Array, valid: jax.Array) -> jax.Array: ...

    def token_embedding(self, params: Any) -> np.ndarray:
        """The input embedding table (vocab, d): the amino-acid t-SNE and the fingerprint."""


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    hf_model_types: tuple[str, ...]  # config.json `model_type` values this family reads
    pretrain_model: Callable[[Any], Any]  # config -> PretrainModel (default loss settings)
    encoder: type  # the Encoder class: Encoder(config, part); see `make_encoder`
    # e.g. "prottrans_jax.convert.bert", imported when needed; None: the family has no Hugging
    # Face form (ProtTXL: no released weights, no transformers 5 class), so export_hf and
    # --hf_model refuse it with one line.
    converter_module: str | None
    default_vocabulary: Callable[[], ProteinVocabulary]
    # The released model evaluation sets a run beside (downstream/report.py): one name, or
    # one per encoder part.
    paper_model: str | Mapping[str, str]
    # config.json dict -> whether it is this family's, for a config without `model_type`
    # (ProtAlbert's release has none); None: the family needs `model_type`.
    matches_untyped_hf_config: Callable[[Mapping[str, Any]], bool] | None = None

    @property
    def converter(self):
        if self.converter_module is None:
            raise UserError(f"the {self.name} family has no Hugging Face form (no released weights and "
                            "no transformers class to load them): export_hf and --hf_model do not apply; "
                            "use its MODEL_DIR (embed --model_dir)")
        return importlib.import_module(self.converter_module)

    def vocabulary_from_pieces(self, pieces: list[str], where: str) -> ProteinVocabulary:
        """The vocabulary of a stored id table (model.json): the converter's reading, or for a
        family without one its own table, which the pieces must be."""
        if self.converter_module is not None:
            return self.converter.vocabulary_from_pieces(pieces, where)
        vocabulary = self.default_vocabulary()
        if list(pieces) != list(vocabulary.pieces):
            raise UserError(f"{where}: the vocabulary is not {self.name}'s table {vocabulary.name!r}")
        return vocabulary

    def encoder_part(self, part: str | None = None) -> str:
        """`part` if the family embeds with it (default: its first), else a one-line error."""
        parts = self.encoder.PARTS
        if part is None:
            return parts[0]
        if part not in parts:
            raise UserError(f"--part {part!r}: a {self.name} model embeds with {' or '.join(parts)}")
        return part

    def make_encoder(self, config: Any, part: str | None = None) -> Encoder:
        return self.encoder(config, self.encoder_part(part))

    def paper_model_for(self, part: str) -> str:
        return self.paper_model if isinstance(self.paper_model, str) else self.paper_model[part]

    def config_from_dict(self, values: Mapping[str, Any], **overrides: Any):
        """The config dataclass from model.json's dict; an unknown key is an error naming it."""
        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise UserError(f"{self.config_cls.__name__} has no field {unknown[0]!r}")
        return self.config_cls(**{**values, **overrides})


_FAMILIES: dict[str, Family] = {}
_DISCOVERED = False


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def _discover() -> None:
    """Imports every model module once: each family registers itself at import."""
    global _DISCOVERED
    if not _DISCOVERED:
        import prottrans_jax.models as models_package

        # The modules define gin configurables: gin may already be locked (inside train()).
        with gin.unlock_config():
            for module in pkgutil.iter_modules(models_package.__path__):
                importlib.import_module(f"{models_package.__name__}.{module.name}")
        _DISCOVERED = True


def all_families() -> dict[str, Family]:
    _discover()
    return dict(_FAMILIES)


def get(name: str) -> Family:
    families = all_families()
    if name not in families:
        raise UserError(f"unknown model family {name!r}; known: {sorted(families)}")
    return families[name]


def for_hf_config(hf_config: Mapping[str, Any], where: str) -> Family:
    """The family whose converter reads a Hugging Face config.json: by its `model_type`, or
    without one by the families' `matches_untyped_hf_config`, when exactly one matches."""
    model_type = hf_config.get("model_type")
    families = all_families().values()
    for family in families:
        if model_type in family.hf_model_types:
            return family
    if model_type is None:
        matches = [f for f in families if f.matches_untyped_hf_config and f.matches_untyped_hf_config(hf_config)]
        if len(matches) == 1:
            return matches[0]
    known = sorted(t for f in families for t in f.hf_model_types)
    raise UserError(f"{where}: model_type {model_type!r} is not a family this project reads "
                     f"(known: {known})")
