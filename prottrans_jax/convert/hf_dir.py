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
from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict
from prottrans_jax.vocab import ProteinVocabulary


@dataclasses.dataclass
class HFModel:
    family: families.Family
    config: Any
    params: dict  # numpy arrays, the converter's layout for `part`
    vocabulary: ProteinVocabulary
    part: str


def load_hf_dir(directory: str, inference: bool = False, **config_overrides: Any) -> HFModel:
    """Reads a Hugging Face directory of any registered family: the whole pre-training model,
    or with `inference` only the part its encoder reads."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Hugging Face model directory {directory} does not exist")
    hf_config = load_hf_config(directory)
    family = families.for_hf_config(hf_config, os.path.join(directory, "config.json"))
    converter = family.converter
    part = family.encoder.part if inference else converter.PARTS[0]
    vocabulary = converter.vocabulary_from_pieces(converter.tokenizer_pieces(directory),
                                                  f"the tokenizer in {directory}")
    state_dict = load_hf_state_dict(directory)
    config = converter.config_from_hf(hf_config, state_dict, **config_overrides)
    params = converter.hf_to_flax(state_dict, config, part)
    return HFModel(family, config, params, vocabulary, part)


def check_same_architecture(imported: Any, model: Any, where: str) -> None:
    """Raises ValueError naming the first config field (other than dtypes, dropout, remat and
    scan, which do not change what the weights compute) where the two configs differ."""
    runtime = set(getattr(type(model), "RUNTIME_FIELDS", ()))
    if type(imported) is not type(model):
        raise ValueError(f"{where} holds a {type(imported).__name__}, the model is a "
                         f"{type(model).__name__}")
    for field in dataclasses.fields(model):
        if field.name in runtime:
            continue
        ours, theirs = getattr(model, field.name), getattr(imported, field.name)
        if ours != theirs:
            raise ValueError(f"{where} has {type(model).__name__}.{field.name}={theirs!r} but the "
                             f"model being trained has {ours!r}: bind the same value in gin")
