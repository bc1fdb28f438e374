"""Pre-training objectives as data: what each one needs from a corpus and gives a model.

An `Objective` declares its vocabulary, the task features it outputs, its preprocessors
(after the corpus records are read), the feature converter that packs them, and how its
feature lengths follow from one model length. `tasks.register_corpus` registers one seqio
Task per objective and remembers which objective each task has, so the trainer can derive
feature lengths (`feature_lengths_for`) and refuse a task whose converter is not the model's.

A new objective is one `register_objective(Objective(...))` call, wherever it is defined.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import seqio

from prottrans_jax.data import objectives, permutation_stream, preprocessors, stream
from prottrans_jax.data.feature_converters import (EncDecMaskedFeatureConverter, EncoderMLMFeatureConverter,
                                                   PermutationLMFeatureConverter)
from prottrans_jax.errors import UserError
from prottrans_jax.vocab import (ProteinVocabulary, prot_albert_vocabulary, prot_bert_vocabulary,
                                 prot_t5_vocabulary, prot_txl_vocabulary, prot_xlnet_vocabulary)

# The masked-positions flag: a pass-through feature whose EOS is NOT_CHOSEN, so seqio's
# append_eos_after_trim keeps it aligned with the targets.
_MASKED_FLAG = seqio.Feature(seqio.PassThroughVocabulary(5, eos_id=objectives.NOT_CHOSEN),
                             add_eos=True)


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    vocabulary: Callable[[], ProteinVocabulary]
    output_features: Callable[[], dict[str, seqio.Feature]]
    preprocessors: Callable[[], list]  # after the records are tokenised as "targets"
    feature_converter_cls: type
    # (inputs_length, targets_length or None) -> the task feature lengths
    feature_lengths: Callable[[int, int | None], dict[str, int]]


OBJECTIVES: dict[str, Objective] = {}
_TASK_OBJECTIVES: dict[str, str] = {}


def register_objective(objective: Objective) -> Objective:
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def remember_task_objective(task_name: str, objective_name: str) -> None:
    _TASK_OBJECTIVES[task_name] = get_objective(objective_name).name


def objective_of(task: seqio.Task | seqio.Mixture) -> Objective | None:
    """The objective a task (or every task of a mixture) was registered with, if known."""
    names = {_TASK_OBJECTIVES.get(t.name) for t in getattr(task, "tasks", [task])}
    if len(names) == 1 and None not in names:
        return OBJECTIVES[names.pop()]
    return None


def feature_lengths_for(task: seqio.Task | seqio.Mixture, inputs_length: int,
                        targets_length: int | None = None) -> dict[str, int]:
    """Task feature lengths for one model length, as the task's objective derives them."""
    objective = objective_of(task)
    if objective is None:
        raise UserError(f"task {task.name!r} was not registered through "
                         "tasks.register_corpus, so its feature lengths are unknown: set "
                         "TASK_FEATURE_LENGTHS (train.task_feature_lengths) explicitly")
    return objective.feature_lengths(inputs_length, targets_length)


# ------------------------------------------------------------------------------ the objectives


def _t5_features() -> dict[str, seqio.Feature]:
    vocabulary = prot_t5_vocabulary()
    return {"inputs": seqio.Feature(vocabulary, add_eos=True),
            "targets": seqio.Feature(vocabulary, add_eos=True),
            "targets_masked": _MASKED_FLAG}


def _denoise_lengths(inputs_length: int, targets_length: int | None) -> dict[str, int]:
    targets_length = targets_length or inputs_length
    return {"inputs": inputs_length, "targets": targets_length, "targets_masked": targets_length}


def _span_corruption_lengths(inputs_length: int, targets_length: int | None) -> dict[str, int]:
    targets_length = targets_length or objectives.span_corruption_feature_lengths(inputs_length)[1]
    return {"inputs": inputs_length, "targets": targets_length, "targets_masked": targets_length}


def _bert_features(vocabulary: Callable[[], ProteinVocabulary] = prot_bert_vocabulary
                   ) -> dict[str, seqio.Feature]:
    vocabulary = vocabulary()  # [CLS]/[SEP] are added by the objective
    return {"inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=False),
            "mlm_weights": seqio.Feature(seqio.PassThroughVocabulary(5), add_eos=False)}


def _encoder_lengths(inputs_length: int, targets_length: int | None) -> dict[str, int]:
    del targets_length  # one length for every feature of an encoder-only objective
    return {"inputs": inputs_length, "targets": inputs_length, "mlm_weights": inputs_length}


_FLAGS = seqio.PassThroughVocabulary(5)


def _permutation_lm_features() -> dict[str, seqio.Feature]:
    """XLNet's features; every one is already framed and padded (add_eos False)."""
    vocabulary = prot_xlnet_vocabulary()
    flag = lambda rank=1: seqio.Feature(_FLAGS, add_eos=False, rank=rank)  # noqa: E731
    return {"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": seqio.Feature(vocabulary, add_eos=False),
            "input_mask": flag(), "token_types": flag(), "perm_mask": flag(2), "target_mapping": flag(2),
            "target_weights": flag()}


def _permutation_lm_lengths(inputs_length: int, targets_length: int | None) -> dict[str, int]:
    """Every feature's first dimension: L for the positions, num_predict for the targets
    (targets_length, or the one `objectives.permutation_lm_settings` gives for L)."""
    num_predict = targets_length or objectives.permutation_lm_num_predict(inputs_length)
    return {"inputs": inputs_length, "input_mask": inputs_length, "token_types": inputs_length,
            "perm_mask": inputs_length, "target_mapping": num_predict, "targets": num_predict,
            "target_weights": num_predict}


register_objective(Objective(
    name="prott5_denoise",
    vocabulary=prot_t5_vocabulary,
    output_features=_t5_features,
    preprocessors=lambda: [preprocessors.random_crop, objectives.prott5_denoise,
                           seqio.preprocessors.append_eos_after_trim],
    feature_converter_cls=EncDecMaskedFeatureConverter,
    feature_lengths=_denoise_lengths,
))
register_objective(Objective(
    name="t5_span_corruption",
    vocabulary=prot_t5_vocabulary,
    output_features=_t5_features,
    preprocessors=lambda: [preprocessors.random_crop_for_span_corruption,
                           objectives.t5_span_corruption, seqio.preprocessors.append_eos_after_trim],
    feature_converter_cls=EncDecMaskedFeatureConverter,
    feature_lengths=_span_corruption_lengths,
))
register_objective(Objective(
    name="bert_mlm",
    vocabulary=prot_bert_vocabulary,
    output_features=_bert_features,
    preprocessors=lambda: [functools.partial(preprocessors.random_crop, reserved=2),
                           objectives.bert_mlm],
    feature_converter_cls=EncoderMLMFeatureConverter,
    feature_lengths=_encoder_lengths,
))
register_objective(Objective(  # BERT masking over ProtAlbert's SentencePiece table
    name="albert_mlm",
    vocabulary=prot_albert_vocabulary,
    output_features=functools.partial(_bert_features, prot_albert_vocabulary),
    preprocessors=lambda: [functools.partial(preprocessors.random_crop, reserved=2),
                           objectives.bert_mlm],
    feature_converter_cls=EncoderMLMFeatureConverter,
    feature_lengths=_encoder_lengths,
))
register_objective(Objective(
    name="electra_mlm",
    vocabulary=prot_bert_vocabulary,  # ProtElectra's vocab.txt is ProtBert's
    output_features=_bert_features,
    preprocessors=lambda: [functools.partial(preprocessors.random_crop, reserved=2),
                           objectives.electra_mlm],
    feature_converter_cls=EncoderMLMFeatureConverter,
    feature_lengths=_encoder_lengths,
))
register_objective(Objective(  # ProtTXL: next-token prediction over a stream (data/stream.py)
    name="causal_lm",
    vocabulary=prot_txl_vocabulary,
    output_features=lambda: {"targets": seqio.Feature(prot_txl_vocabulary(), add_eos=True),
                             "targets_masked": _MASKED_FLAG},
    preprocessors=lambda: [stream.mark_residues, seqio.preprocessors.append_eos],
    feature_converter_cls=stream.StreamFeatureConverter,
    feature_lengths=lambda inputs_length, targets_length: {"targets": inputs_length},  # the segment
))
register_objective(Objective(  # XLNet's permutation LM, one protein per row (ProtXLNet)
    name="permutation_lm",
    vocabulary=prot_xlnet_vocabulary,
    output_features=_permutation_lm_features,
    preprocessors=lambda: [functools.partial(preprocessors.random_crop, reserved=2),
                           objectives.permutation_lm],
    feature_converter_cls=PermutationLMFeatureConverter,
    feature_lengths=_permutation_lm_lengths,
))
register_objective(Objective(  # XLNet's permutation LM over a stream, with memory (ProtXLNet's recipe)
    name="permutation_lm_stream",
    vocabulary=prot_xlnet_vocabulary,
    output_features=lambda: {"targets": seqio.Feature(prot_xlnet_vocabulary(), add_eos=False),
                             "targets_masked": _MASKED_FLAG},
    preprocessors=lambda: [stream.mark_residues, permutation_stream.end_proteins_with_eod],
    feature_converter_cls=permutation_stream.PermutationStreamFeatureConverter,
    feature_lengths=lambda inputs_length, targets_length: {"targets": inputs_length},  # the example
))
