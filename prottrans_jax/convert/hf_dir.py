"""A local Hugging Face model directory, read for any family: config, weights, tokenizer.

    model = load_hf_dir("path/to/prot_bert", inference=True, dtype="float32")
    model.family.name, model.config, model.params, model.vocabulary

The family comes from config.json's `model_type`; the weights from safetensors or from
`pytorch_model.bin` with `weights_only=True` (no pickle is executed); the vocabulary from the
tokenizer files shipped with the weights, never from a built-in table. Used by `embed`
(inference: only the part the family's encoder reads) and by continued pre-training
(`train.init_from_hf`: the whole pre-training model).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from prottrans_jax import families
from prottrans_jax.convert.hf_io import CONFIG, load_hf_config, load_hf_state_dict
from prottrans_jax.errors import UserError
from prottrans_jax.vocab import ProteinVocabulary


@dataclasses.dataclass
class HFModel:
    family: families.Family
    config: Any
    params: dict  # numpy arrays, the converter's layout for `part`
    vocabulary: ProteinVocabulary
    part: str


def load_hf_dir(directory: str, inference: bool = False, part: str | None = None,
                **config_overrides: Any) -> HFModel:
    """Reads a Hugging Face directory of any registered family: the whole pre-training model,
    or with `inference` only the part an encoder reads (`part`, default: the family's first,
    or the one part the directory holds).

    A family released as one directory per part (ELECTRA) is read whole from a directory of
    part directories, as `export_hf` writes it (`prottrans_jax.families`: SPLIT_PARTS).
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Hugging Face model directory {directory} does not exist")
    if not os.path.exists(os.path.join(directory, CONFIG)) and _part_directories(directory):
        return _load_split(directory, inference, part, config_overrides)
    hf_config = load_hf_config(directory)
    family = families.for_hf_config(hf_config, os.path.join(directory, CONFIG))
    converter = family.converter
    state_dict = load_hf_state_dict(directory)
    held = converter.hf_part(hf_config, state_dict) if split_parts(converter) else None
    if inference:
        part = family.encoder_part(part or held)
        if held is not None and part != held:
            raise UserError(f"{directory} holds the {family.name} {held}, not the {part}")
    elif held is not None:
        raise UserError(f"{directory} holds only the {family.name} {held}; the whole model is a "
                         f"directory with {' and '.join(converter.SPLIT_PARTS)} subdirectories "
                         "(as export_hf writes it)")
    else:
        part = converter.PARTS[0]
    vocabulary = _vocabulary(converter, directory)
    config = converter.config_from_hf(hf_config, state_dict, **config_overrides)
    params = converter.hf_to_flax(state_dict, config, part)
    return HFModel(family, config, params, vocabulary, part)


def split_parts(converter) -> tuple[str, ...]:
    """The parts a family stores one Hugging Face directory each (none for most families)."""
    return tuple(getattr(converter, "SPLIT_PARTS", ()))


def _part_directories(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory)
                  if os.path.isfile(os.path.join(directory, name, CONFIG)))


def _vocabulary(converter, directory: str) -> ProteinVocabulary:
    return converter.vocabulary_from_pieces(converter.tokenizer_pieces(directory),
                                            f"the tokenizer in {directory}")


def _load_split(directory: str, inference: bool, part: str | None, overrides: dict) -> HFModel:
    """A directory of part directories: one part for inference, else every part, merged."""
    found = _part_directories(directory)
    family = families.for_hf_config(load_hf_config(os.path.join(directory, found[0])),
                                    os.path.join(directory, found[0], CONFIG))
    converter = family.converter
    parts = split_parts(converter)
    if not parts:
        raise FileNotFoundError(f"no Hugging Face config: {os.path.join(directory, CONFIG)} does not exist")
    if inference:
        part = family.encoder_part(part)
        return load_hf_dir(os.path.join(directory, part), inference=True, part=part, **overrides)
    missing = [name for name in parts if name not in found]
    if missing:
        raise FileNotFoundError(f"{directory} has no {missing[0]}/ directory: a whole {family.name} model "
                                f"is {' and '.join(parts)} directories")
    loaded, vocabularies = {}, {}
    for name in parts:
        path = os.path.join(directory, name)
        hf_config, state_dict = load_hf_config(path), load_hf_state_dict(path)
        held = converter.hf_part(hf_config, state_dict)
        if held != name:
            raise UserError(f"{path} holds the {family.name} {held}, not the {name}")
        loaded[name] = (hf_config, state_dict)
        vocabularies[name] = _vocabulary(converter, path)
    first = vocabularies[parts[0]]
    for name in parts[1:]:
        if vocabularies[name] != first:
            raise UserError(f"the tokenizers in {directory}/{parts[0]} and {directory}/{name} differ")
    config, params = converter.merge_parts(loaded, **overrides)
    return HFModel(family, config, params, first, converter.PARTS[0])


def check_same_architecture(imported: Any, model: Any, where: str) -> None:
    """Raises ValueError naming the first config field (other than dtypes, dropout, remat and
    scan, which do not change what the weights compute) where the two configs differ."""
    runtime = set(getattr(type(model), "RUNTIME_FIELDS", ()))
    if type(imported) is not type(model):
        raise UserError(f"{where} holds a {type(imported).__name__}, the model is a "
                         f"{type(model).__name__}")
    for field in dataclasses.fields(model):
        if field.name in runtime:
            continue
        ours, theirs = getattr(model, field.name), getattr(imported, field.name)
        if ours != theirs:
            raise UserError(f"{where} has {type(model).__name__}.{field.name}={theirs!r} but the "
                             f"model being trained has {ours!r}: bind the same value in gin")
