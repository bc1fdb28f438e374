r"""Export a trained ProtT5 (a trainer MODEL_DIR) as a Hugging Face T5 model directory.

    python -m prottrans_jax.export_hf --model_dir runs/demo/model --output runs/demo/hf \
        [--step N] [--encoder_only] [--overwrite]

Writes `config.json`, `model.safetensors` and the tokenizer files (`spiece.model`,
`tokenizer_config.json`, `special_tokens_map.json`), so that
`transformers.T5EncoderModel.from_pretrained(output)` (or `T5ForConditionalGeneration`) and
`T5Tokenizer.from_pretrained(output)` load it with no network. `--encoder_only` writes a
`T5EncoderModel` directory like the released `prot_t5_xl_half_uniref50-enc`.

The MODEL_DIR is read by `prottrans_jax.model_dir`. This module also holds ProtT5's tokenizer
files, which `prottrans_jax.embed` needs too: writing them, and checking that a released
model's files agree with the built-in id table (`prottrans_jax.vocab.prot_t5_vocabulary`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from prottrans_jax.model_dir import config_from_model_dir, first_line, restore_params

# The T5 convention, as the released ProtT5 tokenizers: the SentencePiece model holds the 28
# pieces <pad> </s> <unk> and the 25 residues; T5Tokenizer appends `extra_ids` sentinels at
# the top of the table in reverse (<extra_id_0> = last id).
SPIECE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


# ------------------------------------------------------------------------ tokenizer files


def write_tokenizer_files(output_dir: str) -> None:
    """spiece.model + tokenizer_config.json + special_tokens_map.json for ProtT5's table.

    The SentencePiece model is built from its protobuf: pieces 0..27 of the table (identity
    normaliser, so nothing is case-folded or NFKC-mapped); T5Tokenizer adds the 100 sentinels.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    from prottrans_jax.vocab import PROT_T5_NUM_SENTINELS, prot_t5_vocabulary

    vocabulary = prot_t5_vocabulary()
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


def tokenizer_table(model_dir: str) -> list[str]:
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
            raise ValueError(f"cannot read the tokenizer {spiece}: {first_line(err)}") from None
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
            raise ValueError(f"cannot read the tokenizer {tokenizer_json}: not a Unigram vocabulary ({err!r})") from None
        if sorted(table) != list(range(len(table))):
            raise ValueError(f"tokenizer {tokenizer_json} has gaps in its ids")
        return [table[i] for i in range(len(table))]
    raise FileNotFoundError(
        f"no tokenizer files in {model_dir} ({SPIECE} or {TOKENIZER_JSON}): they are needed to check "
        "that the model's token ids are ProtT5's; copy them from the released model")


def check_tokenizer_files(model_dir: str) -> None:
    """Raises ValueError unless the directory's tokenizer has exactly ProtT5's id table."""
    from prottrans_jax.vocab import prot_t5_vocabulary

    ours = list(prot_t5_vocabulary().pieces)
    theirs = tokenizer_table(model_dir)
    for token_id, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            raise ValueError(f"the tokenizer in {model_dir} disagrees with ProtT5's id table at id {token_id}: "
                             f"{a!r} there, {b!r} in prottrans_jax.vocab; this is not a ProtT5 tokenizer")
    if len(theirs) != len(ours):
        raise ValueError(f"the tokenizer in {model_dir} has {len(theirs)} ids, ProtT5's table {len(ours)}")


# ------------------------------------------------------------------------ export


def export_model_dir(model_dir: str, output_dir: str, step: int | None = None, encoder_only: bool = False,
                     overwrite: bool = False) -> dict:
    """Writes MODEL_DIR's checkpoint (float32) as a Hugging Face T5 directory; returns a summary."""
    from prottrans_jax.convert.hf_io import CONFIG, save_hf_model
    from prottrans_jax.convert.t5 import flax_to_hf, hf_config_from

    if os.path.exists(os.path.join(output_dir, CONFIG)) and not overwrite:
        raise FileExistsError(f"{output_dir} already holds a model ({CONFIG}); pass --overwrite to replace it")
    config = config_from_model_dir(model_dir, param_dtype="float32")
    params, step = restore_params(model_dir, config, step, encoder_only=encoder_only)
    state_dict = flax_to_hf(params, config, encoder_only)
    save_hf_model(output_dir, state_dict, hf_config_from(config, encoder_only=encoder_only))
    write_tokenizer_files(output_dir)
    return {"output": output_dir, "step": step, "encoder_only": encoder_only,
            "tensors": len(state_dict), "parameters": int(sum(v.size for v in state_dict.values()))}


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
        raise ValueError(f"cannot read {path}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prottrans_jax.export_hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="trainer MODEL_DIR (config + orbax checkpoints)")
    parser.add_argument("--output", required=True, help="directory to write the Hugging Face model to")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--encoder_only", action="store_true", help="write a T5EncoderModel (no decoder)")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        summary = export_model_dir(args.model_dir, args.output, args.step, args.encoder_only, args.overwrite)
    except (ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
