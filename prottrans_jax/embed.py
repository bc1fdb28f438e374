r"""Embeddings for whole proteomes: FASTA in, HDF5 of the encoder's last hidden states out.

    python -m prottrans_jax.embed --fasta proteins.fasta --output embeddings.h5 \
        (--model_dir DIR | --hf_model DIR) [--per_residue] [--per_protein] \
        [--dtype bfloat16|float16|float32] [--max_tokens N] [--max_length L] [--policy error|skip] \
        [--attention auto|xla|chunked|cudnn|pallas] [--compilation_cache_dir DIR|off]

Any family (`prottrans_jax.families`): `--model_dir`, a trainer MODEL_DIR (family, config and
vocabulary from its model.json, parameters of the latest checkpoint, optimizer state never
read); `--hf_model`, a local Hugging Face directory of a known `model_type` (config.json,
model.safetensors or pytorch_model.bin, and the tokenizer files shipped with the weights,
which give the id table). No network, no pickles executed. Each family frames a protein its
own way (ProtT5: residues `</s>`; ProtBert: `[CLS]` residues `[SEP]`) and only the residues'
states are written. `embed_sequences` is the in-memory core that `downstream` calls.

Output, as ProtTrans' prott5_embedder.py: one root-level dataset per protein, named by the
FASTA id ('/' becomes '_'; the id is kept in the `original_id` attribute), holding the last
hidden state of the residues (special tokens removed): (length, d_model) per residue, or the
mean over residues, (d_model,), per protein. Attributes: `length` and `original_id` on each
dataset; `model`, `model_fingerprint`, `dtype` (compute), `embedding`, `d_model` and the
attention used (`attention`: the request; `attention_short` / `attention_long`: the
implementation up to / above --max_length) on the file. With neither flag: per residue. With both: per residue in --output and per protein
in `<output stem>.per_protein.h5` beside it. Arrays are float32 when computing in float32,
float16 otherwise (as prott5_embedder.py's half-precision output); per-protein means are
always float32.

Batching, static shapes, long proteins and device use: `prottrans_jax.inference`. The
defaults: --max_tokens 4096 padded tokens per batch on CPU, 16384 on accelerators;
--max_length 1000 (prott5_embedder.py's max_seq_len): longer proteins are never truncated but
embedded alone, and counted in the summary. --attention auto (the default) embeds those with
chunked attention, whose memory grows linearly with length (a 35,213-residue protein with a
ProtT5-XL-shaped encoder: README, Performance), and the others with dense attention (`xla`).
The fused GPU kernels run only on request until their GPU tests have run: cuDNN's
(`--attention cudnn`) and the Pallas kernel that computes T5's bias inside it (`--attention
pallas`, memory linear in length like chunked). Dense attention memory grows with length
squared (ProtT5-XL in bf16: about heads x L^2 x 6 bytes per layer, ~13 GB at L = 8,000). A
protein that runs out of device memory is skipped and reported by id.

Resuming: re-running with the same output skips proteins already there. Each protein's
dataset is written under `_incomplete/` and moved to its name once complete; the file is
opened only to write a batch, so an interruption during compute leaves a consistent file
(leftovers under `_incomplete/` are deleted on the next run). SIGTERM stops after the batch
in flight. HDF5 itself has no journal: a kill -9 during a write may corrupt the file, which
the next run reports.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from prottrans_jax import compilation_cache
from prottrans_jax.errors import USER_ERRORS, UserError, first_line
from prottrans_jax.fasta import FastaStats, read_fasta
from prottrans_jax.inference import (ATTENTION_CHOICES, DEFAULT_MAX_LENGTH, DEFAULT_MAX_TOKENS, DTYPES,
                                     OutOfMemoryError, Protein, attention_plan, embed_sequences,
                                     load_for_inference, replicated_sharding)
from prottrans_jax.vocab import normalize_sequence

INCOMPLETE = "_incomplete"
RESERVED_NAMES = {".": "'.' is the file's root group", INCOMPLETE: "the staging group of unfinished datasets"}
FORMAT_VERSION = 2  # 2: any family; the fingerprint samples every parameter array


# ------------------------------------------------------------------------------ HDF5 output


class H5Output:
    """One HDF5 file of root-level datasets; opened only while a batch is written."""

    def __init__(self, path: str, kind: str, attrs: dict[str, Any], check: dict[str, Any]):
        self.path, self.kind = path, kind
        import h5py

        if os.path.exists(path):
            try:
                with h5py.File(path, "a") as f:
                    self._check_compatible(f, check)
                    if INCOMPLETE in f:  # datasets of an interrupted write
                        del f[INCOMPLETE]
                    self.existing = {name for name in f.keys() if name != INCOMPLETE}
            except OSError as err:
                raise OSError(f"cannot open the existing output {path} ({first_line(err)}); it may be "
                              "corrupt from a crash during a write: move it away and re-run") from None
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with h5py.File(path, "w") as f:
                f.attrs.update({**attrs, **check})
            self.existing = set()

    def _check_compatible(self, f, check: dict[str, Any]) -> None:
        for key, value in check.items():
            stored = f.attrs.get(key)
            stored = stored.decode() if isinstance(stored, bytes) else stored
            if stored != value:
                raise UserError(f"{self.path} holds embeddings with {key}={stored!r}, this run has {value!r}: "
                                 "resuming would mix them; choose another --output")

    def write(self, items: Iterable[tuple[Protein, np.ndarray]]) -> None:
        """Writes each protein under _incomplete/ and moves it to its name: all or nothing."""
        import h5py

        with h5py.File(self.path, "a") as f:
            staging = f.require_group(INCOMPLETE)
            for protein, array in items:
                if protein.name in self.existing:
                    continue
                dataset = staging.create_dataset(protein.name, data=array)
                dataset.attrs["length"] = len(protein.sequence)
                dataset.attrs["original_id"] = protein.id
                f.move(f"{INCOMPLETE}/{protein.name}", protein.name)
                self.existing.add(protein.name)
            del f[INCOMPLETE]
            f.flush()


def per_protein_path(output_path: str) -> str:
    """Where per-protein means go when per-residue arrays fill the main output."""
    stem, _ = os.path.splitext(output_path)
    return f"{stem}.per_protein.h5"


# ------------------------------------------------------------------------------ embedding


class _StopFlag:
    """SIGTERM sets a flag checked between batches, so a write is never cut short."""

    def __init__(self):
        self.stop = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.stop = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def read_proteins(fasta_path: str, policy: str = "error") -> tuple[list[Protein], FastaStats]:
    """The FASTA's valid proteins (normalised), refusing two ids that map to one dataset name."""
    stats = FastaStats()
    proteins = [Protein(r.id, normalize_sequence(r.sequence)) for r in read_fasta(fasta_path, policy, stats)]
    names: dict[str, str] = {}
    for protein in proteins:
        if protein.name in RESERVED_NAMES:  # HDF5's own "." and this file's staging group
            raise UserError(f"{fasta_path}: FASTA id {protein.id!r} cannot name an HDF5 dataset "
                             f"({RESERVED_NAMES[protein.name]}); rename it")
        if names.setdefault(protein.name, protein.id) != protein.id:
            raise UserError(f"FASTA ids {names[protein.name]!r} and {protein.id!r} both become dataset "
                             f"{protein.name!r} ('/' is replaced by '_'); rename one")
    return proteins, stats


def embed_fasta_to_h5(fasta_path: str, output_path: str, model_dir: str | None = None, hf_model: str | None = None,
                      per_residue: bool = True, per_protein: bool = False, dtype: str | None = None,
                      max_tokens: int | None = None, max_length: int | None = None, policy: str = "error",
                      progress: bool = False, after_batch: Callable[[int], None] | None = None,
                      part: str | None = None, attention: str = "auto") -> dict:
    """Embeds every valid protein of a FASTA file into HDF5 (see the module docstring).

    Returns the summary: counts read / embedded / skipped (already in the output) / invalid by
    reason / long proteins processed alone, with rates. `after_batch(n)` runs after the n-th
    batch is written (used by tests to simulate an interruption).
    """
    if not per_residue and not per_protein:
        raise UserError("nothing to write: ask for per_residue and/or per_protein embeddings")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r}: expected one of {DTYPES}")
    for name, value in (("max_tokens", max_tokens), ("max_length", max_length)):
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    # Read first: a FASTA error should not wait for a model to load.
    proteins, stats = read_proteins(fasta_path, policy)
    if not proteins:  # an empty output would look like a finished embedding of nothing
        dropped = f", all dropped: {dict(stats.dropped)}" if stats.dropped else ""
        raise UserError(f"{fasta_path}: no protein to embed ({stats.read} record(s) read{dropped})")
    if attention not in ATTENTION_CHOICES:
        raise UserError(f"--attention {attention!r}: expected one of {ATTENTION_CHOICES}")
    model = load_for_inference(model_dir, hf_model, dtype, sharding=replicated_sharding(), part=part)
    plan = attention_plan(model, attention)  # before any output: cudnn without a GPU is refused here
    check = {"model_fingerprint": model.fingerprint, "dtype": model.dtype, "d_model": model.d_model}
    attrs = {"model": model.name, "family": model.family.name, "part": model.encoder.part,
             "format_version": FORMAT_VERSION,
             "producer": "prottrans_jax.embed", **plan}
    outputs: list[H5Output] = []
    if per_residue:
        outputs.append(H5Output(output_path, "per_residue", attrs, {**check, "embedding": "per_residue"}))
    if per_protein:
        path = per_protein_path(output_path) if per_residue else output_path
        outputs.append(H5Output(path, "per_protein", attrs, {**check, "embedding": "per_protein"}))
    done = set.intersection(*(o.existing for o in outputs))
    todo = [p for p in proteins if p.name not in done]
    storage = np.float32 if model.dtype == "float32" else np.float16
    summary = {"fasta": str(fasta_path), "outputs": [o.path for o in outputs], "read": stats.read,
               "valid": stats.kept, "invalid": dict(stats.dropped),
               "skipped_existing": len(proteins) - len(todo), "interrupted": False}
    bar = _progress_bar(len(todo), progress)
    start = time.perf_counter()
    with _StopFlag() as flag:
        try:
            for written, result in enumerate(embed_sequences(
                    model, todo, max_tokens=max_tokens, max_length=max_length, per_residue=per_residue,
                    summary=summary, attention=attention, should_stop=lambda: flag.stop), start=1):
                for output in outputs:
                    if output.kind == "per_residue":
                        output.write((p, rows.astype(storage)) for p, rows in zip(result.batch.proteins, result.per_residue))
                    else:
                        output.write(zip(result.batch.proteins, result.means))
                bar.update(len(result.batch.proteins))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{summary['residues_embedded'] / elapsed:,.0f} residues/s", refresh=False)
                if after_batch is not None:
                    after_batch(written)
        finally:
            bar.close()
    missing = len(todo) - summary["embedded"] - len(summary["out_of_memory_ids"])
    summary["interrupted"] = flag.stop and missing > 0
    seconds = time.perf_counter() - start
    summary.update(seconds=round(seconds, 3),
                   proteins_per_second=round(summary["embedded"] / max(seconds, 1e-9), 2),
                   residues_per_second=round(summary["residues_embedded"] / max(seconds, 1e-9), 1))
    return summary


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="protein", disable=not enabled, dynamic_ncols=True, smoothing=0.05)


# ------------------------------------------------------------------------------ command line


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m prottrans_jax.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", required=True, help="input FASTA (plain or gzip)")
    parser.add_argument("--output", required=True, help="output HDF5 file (resumed if it exists)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_dir", help="trainer MODEL_DIR")
    source.add_argument("--hf_model", help="local Hugging Face directory (T5, BERT, ...)")
    parser.add_argument("--part", default=None,
                        help="which part embeds (default: the family's; ProtElectra: discriminator | generator)")
    parser.add_argument("--per_residue", action="store_true", help="(length, d_model) per protein (default)")
    parser.add_argument("--per_protein", action="store_true", help="mean over residues, (d_model,)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="compute dtype (default: float32 on CPU, bfloat16 on accelerators)")
    parser.add_argument("--max_tokens", type=int, default=None,
                        help=f"padded tokens per batch (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--max_length", type=int, default=None,
                        help=f"longer proteins are embedded alone, never truncated (default {DEFAULT_MAX_LENGTH})")
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                        help="attention implementation: auto (default) is chunked above --max_length, dense "
                             "(xla) up to it; xla, chunked, cudnn or pallas (CUDA GPUs) for all proteins")
    parser.add_argument("--policy", choices=("error", "skip"), default="error",
                        help="invalid FASTA records: stop (error) or drop and count (skip)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    compilation_cache.add_flag(parser)
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; prints the summary as one JSON line. Exit 0 done, 1 error, 2 interrupted."""
    args = parse_flags(sys.argv[1:] if argv is None else argv)
    compilation_cache.enable(args.compilation_cache_dir)  # a second run reads its programs back
    per_residue = args.per_residue or not args.per_protein
    try:
        summary = embed_fasta_to_h5(args.fasta, args.output, model_dir=args.model_dir, hf_model=args.hf_model,
                                    per_residue=per_residue, per_protein=args.per_protein, dtype=args.dtype,
                                    max_tokens=args.max_tokens, max_length=args.max_length, policy=args.policy,
                                    progress=not args.no_progress, part=args.part, attention=args.attention)
    except (*USER_ERRORS, OutOfMemoryError) as err:
        if args.debug:
            raise
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    if summary["out_of_memory_ids"]:
        print(f"warning: {len(summary['out_of_memory_ids'])} long proteins did not fit in device memory and "
              f"were not embedded: {', '.join(summary['out_of_memory_ids'][:5])}", file=sys.stderr)
    return 2 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
