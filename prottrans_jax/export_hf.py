r"""Export a trained MODEL_DIR, of any family, as a Hugging Face model directory.

    python -m prottrans_jax.export_hf --model_dir runs/demo/model --output runs/demo/hf \
        [--step N] [--part full|encoder|...] [--encoder_only] [--overwrite]

Writes `config.json`, `model.safetensors` (float32) and the family's tokenizer files, so that
transformers' classes load it with no network: ProtT5 as `T5ForConditionalGeneration` (or
`T5EncoderModel` with `--part encoder`, like the released `prot_t5_xl_half_uniref50-enc`) with
`spiece.model`; ProtBert as `BertForMaskedLM` / `BertForPreTraining` with `vocab.txt`.
ProtElectra as `ElectraForPreTraining` (`--part discriminator`) and `ElectraForMaskedLM`
(`--part generator`), each with `vocab.txt`, or both, in `OUTPUT/discriminator` and
`OUTPUT/generator` (the default). `--encoder_only` is `--part encoder`. The family, config and vocabulary come from MODEL_DIR's
model.json (`prottrans_jax.model_dir`).

The directory is written beside `--output` and moved into place once complete, so a crash
never leaves a half-written model there, and `--overwrite` replaces the old export only then.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Sequence

from prottrans_jax.convert.hf_dir import split_parts
from prottrans_jax.convert.hf_io import CONFIG, save_hf_model
from prottrans_jax.errors import USER_ERRORS, UserError, first_line
from prottrans_jax.model_dir import read_model, restore_params


def export_model_dir(model_dir: str, output_dir: str, step: int | None = None, part: str | None = None,
                     overwrite: bool = False) -> dict:
    """Writes MODEL_DIR's checkpoint (float32) as a Hugging Face directory; returns a summary.

    A family released as one directory per part (ELECTRA) writes its whole model as one
    subdirectory per part (`output/generator`, `output/discriminator`).
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(f"--output {output_dir} is a file")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        what = "already holds a model" if _holds_model(output_dir) else "is not empty"
        raise FileExistsError(f"{output_dir} {what}; pass --overwrite to replace it")
    stored = read_model(model_dir, param_dtype="float32")
    family, converter = stored.family, stored.family.converter
    part = part or converter.PARTS[0]
    if part not in converter.PARTS:
        raise UserError(f"--part {part!r}: a {family.name} model has parts {list(converter.PARTS)}")
    keys = family.make_encoder(stored.config, part).param_keys if part in family.encoder.PARTS else None
    params, step = restore_params(model_dir, stored, keys, step)
    split = split_parts(converter)
    layout = {name: name for name in split} if part == converter.PARTS[0] and split else {"": part}
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.export-", dir=parent)
    tensors = parameters = 0
    try:
        for subdirectory, written_part in layout.items():
            state_dict = converter.flax_to_hf(params, stored.config, written_part)
            target = os.path.join(staging, subdirectory)
            save_hf_model(target, state_dict, converter.hf_config_from(stored.config, written_part))
            converter.write_tokenizer(target, stored.vocabulary)
            tensors += len(state_dict)
            parameters += int(sum(v.size for v in state_dict.values()))
        _move_into_place(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"output": output_dir, "family": family.name, "step": step, "part": part,
            "tensors": tensors, "parameters": parameters}


def _holds_model(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, *name, CONFIG))
               for name in [()] + [(entry,) for entry in os.listdir(directory)])


def _move_into_place(staging: str, output_dir: str) -> None:
    """Replaces output_dir by the complete staging directory (the old one is removed last)."""
    previous = None
    if os.path.exists(output_dir):
        previous = f"{staging}.previous"
        os.rename(output_dir, previous)
    os.rename(staging, output_dir)
    if previous:
        shutil.rmtree(previous, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prottrans_jax.export_hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="trainer MODEL_DIR (model.json + orbax checkpoints)")
    parser.add_argument("--output", required=True, help="directory to write the Hugging Face model to")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--part", default=None,
                        help="which model to write (default: the whole pre-training model; ProtT5, "
                             "ProtBert: full | encoder; ProtElectra: full | discriminator | generator)")
    parser.add_argument("--encoder_only", action="store_true", help="the same as --part encoder")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.encoder_only and args.part not in (None, "encoder"):
        parser.error("--encoder_only contradicts --part")
    try:
        summary = export_model_dir(args.model_dir, args.output, args.step,
                                   "encoder" if args.encoder_only else args.part, args.overwrite)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
