r"""Embeddings for whole proteomes: FASTA in, HDF5 of ProtT5 encoder states out.

    python -m prottrans_jax.embed --fasta proteins.fasta --output embeddings.h5 \
        (--model_dir DIR | --hf_model DIR) [--per_residue] [--per_protein] \
        [--dtype bfloat16|float16|float32] [--max_tokens N] [--max_length L] [--policy error|skip]

`--model_dir`: a trainer MODEL_DIR (config from its operative config, parameters of the latest
checkpoint, optimizer state never read). `--hf_model`: a local Hugging Face T5 directory, full
or encoder-only (config.json, model.safetensors or pytorch_model.bin, and tokenizer files,
which must hold ProtT5's id table). No network, no pickles executed.

Output, as ProtTrans' prott5_embedder.py: one root-level dataset per protein, named by the
FASTA id ('/' becomes '_'; the id is kept in the `original_id` attribute), holding the last
encoder hidden state with the final </s> removed: (length, d_model) per residue, or the mean
over residues, (d_model,), per protein. Attributes: `length` and `original_id` on each
dataset; `model`, `model_fingerprint`, `dtype` (compute), `embedding` and `d_model` on the
file. With neither flag: per residue. With both: per residue in --output and per protein
in `<output stem>.per_protein.h5` beside it. Arrays are float32 when computing in float32,
float16 otherwise (as prott5_embedder.py's half-precision output); per-protein means are
always float32.

Throughput: proteins are sorted by length (longest first, so memory limits show at once)
and batched under a token budget (--max_tokens, padded tokens per batch) in static shape
buckets (lengths on a grid of 2 steps per octave on accelerators, 4 on CPU; batch rows a
fixed count per bucket, or a power of two for a bucket's last batch), so XLA compiles a
bounded number of programs. bfloat16 on accelerators, float32 on CPU. All local
accelerators are used, data parallel; layers run under `scan` (one compiled layer body).

Long sequences: ProtT5 has no length limit, so proteins longer than --max_length residues
(default 1000, prott5_embedder.py's max_seq_len) are never truncated: each is processed
alone (one per device), and counted in the summary. Memory grows with length squared
(attention): ProtT5-XL in bf16 needs about heads x L^2 x 6 bytes per layer, ~13 GB at
L = 8,000. A protein that runs out of device memory is skipped and reported by id.

Resuming: re-running with the same output skips proteins already there. Each protein's
dataset is written under `_incomplete/` and moved to its name once complete; the file is
opened only to write a batch, so an interruption during compute leaves a consistent file
(leftovers under `_incomplete/` are deleted on the next run). SIGTERM stops after the batch
in flight. HDF5 itself has no journal: a kill -9 during a write may corrupt the file, which
the next run reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

DEFAULT_MAX_LENGTH = 1000  # prott5_embedder.py: longer sequences are embedded one at a time
DEFAULT_MAX_TOKENS = {"cpu": 4096, "accelerator": 16384}
INCOMPLETE = "_incomplete"
FORMAT_VERSION = 1


class OutOfMemoryError(RuntimeError):
    """A batch did not fit in device memory (a smaller --max_tokens will)."""


@dataclasses.dataclass(frozen=True)
class Protein:
    id: str
    sequence: str  # normalised: upper case, U/Z/O/B as X

    @property
    def name(self) -> str:
        """Dataset name: HDF5 reads '/' as a group separator."""
        return self.id.replace("/", "_")


@dataclasses.dataclass(frozen=True)
class Batch:
    proteins: tuple[Protein, ...]
    rows: int  # static batch dimension (>= len(proteins))
    length: int  # static token dimension (>= every sequence + </s>)
    alone: bool  # longer than max_length: one protein per row, one row per device


@dataclasses.dataclass
class Model:
    config: Any  # T5Config
    params: Any
    name: str  # the directory it came from
    fingerprint: str  # changes when the weights change (checked on resume)


# ------------------------------------------------------------------------------ models


def default_dtype() -> str:
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load_model(model_dir: str | None = None, hf_model: str | None = None, dtype: str = "float32",
               sharding=None) -> Model:
    """The encoder's config and parameters (cast to `dtype`) from a MODEL_DIR or an HF directory."""
    import jax

    from prottrans_jax import export_hf, model_dir as model_dir_lib

    if (model_dir is None) == (hf_model is None):
        raise ValueError("give exactly one of model_dir / hf_model")
    import jax.numpy as jnp

    overrides = dict(dtype=dtype, param_dtype=dtype, dropout_rate=0.0, remat_policy="none")
    if model_dir is not None:
        config = model_dir_lib.config_from_model_dir(model_dir, **overrides)
        params, _ = model_dir_lib.restore_params(model_dir, config, encoder_only=True, sharding=sharding)
        source = model_dir
    else:
        from prottrans_jax.convert.hf_io import load_hf_config, load_hf_state_dict
        from prottrans_jax.convert.t5 import config_from_hf, hf_to_flax

        if not os.path.isdir(hf_model):
            raise FileNotFoundError(f"Hugging Face model directory {hf_model} does not exist")
        hf_config = load_hf_config(hf_model)
        export_hf.check_tokenizer_files(hf_model)
        state_dict = load_hf_state_dict(hf_model)
        # Scanned layers: XLA compiles one layer body instead of 24 (XL), per bucket shape.
        config = config_from_hf(hf_config, state_dict, **{**overrides, "param_dtype": "float32", "scan_layers": True})
        params = hf_to_flax(state_dict, config, encoder_only=True)  # float32 numpy
        del state_dict
        config = dataclasses.replace(config, param_dtype=dtype)
        params = jax.tree.map(lambda x: jax.device_put(jnp.asarray(x, dtype), sharding), params)
        source = hf_model
    embedding = np.asarray(params["token_embedder"]["embedding"], np.float32)
    fingerprint = hashlib.sha256(embedding.tobytes()).hexdigest()[:16]
    return Model(config, params, os.path.abspath(source), fingerprint)


# ------------------------------------------------------------------------------ batching


def bucket_length(tokens: int, steps_per_octave: int = 2) -> int:
    """The static length for `tokens`: each octave [2^k, 2^(k+1)] cut in equal steps, from 32.

    2 steps (32, 48, 64, 96, ...: at most 50% padding, ~15% on average) keep compilations
    few on accelerators; 4 steps (32, 40, 48, 56, 64, 80, ...) halve the padding on CPU,
    where compiling is cheap. Past 1024 tokens (long proteins, embedded alone) always 4 steps.
    """
    if tokens <= 32:
        return 32
    octave = 1 << ((tokens - 1).bit_length() - 1)  # the largest power of two below tokens
    step = octave // (steps_per_octave if octave < 1024 else 4)
    return -(-tokens // step) * step


def plan_batches(proteins: Sequence[Protein], max_tokens: int, max_length: int, row_multiple: int = 1,
                 steps_per_octave: int = 2) -> list[Batch]:
    """Sorted, bucketed batches: every batch's padded tokens fit max_tokens (bar long proteins)."""
    ordered = sorted(proteins, key=lambda p: (-len(p.sequence), p.id))
    batches: list[Batch] = []
    long = [p for p in ordered if len(p.sequence) > max_length]
    for i in range(0, len(long), row_multiple):  # one long protein per device
        group = tuple(long[i:i + row_multiple])
        length = bucket_length(len(group[0].sequence) + 1, steps_per_octave)
        batches.append(Batch(group, row_multiple, length, alone=True))
    groups: dict[int, list[Protein]] = {}
    for protein in ordered[len(long):]:
        groups.setdefault(bucket_length(len(protein.sequence) + 1, steps_per_octave), []).append(protein)
    for length in sorted(groups, reverse=True):
        members = groups[length]
        full = max(row_multiple, (max_tokens // length) // row_multiple * row_multiple)
        for i in range(0, len(members), full):
            chunk = tuple(members[i:i + full])
            rows = full if len(chunk) == full else min(full, _round_up(_next_power_of_two(len(chunk)), row_multiple))
            batches.append(Batch(chunk, rows, length, alone=False))
    return batches


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def batch_tokens(batch: Batch, vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (rows, length) int32 with </s> after each sequence, lengths (rows,) int32)."""
    tokens = np.zeros((batch.rows, batch.length), np.int32)  # 0 = <pad>
    lengths = np.zeros((batch.rows,), np.int32)
    for row, protein in enumerate(batch.proteins):
        ids = vocabulary.encode(protein.sequence)
        tokens[row, : len(ids)] = ids
        tokens[row, len(ids)] = vocabulary.eos_id
        lengths[row] = len(ids)
    return tokens, lengths


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
                raise OSError(f"cannot open the existing output {path} ({_first_line(err)}); it may be "
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
                raise ValueError(f"{self.path} holds embeddings with {key}={stored!r}, this run has {value!r}: "
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


def embed_fasta_to_h5(fasta_path: str, output_path: str, model_dir: str | None = None, hf_model: str | None = None,
                      per_residue: bool = True, per_protein: bool = False, dtype: str | None = None,
                      max_tokens: int | None = None, max_length: int | None = None, policy: str = "error",
                      progress: bool = False, after_batch: Callable[[int], None] | None = None) -> dict:
    """Embeds every valid protein of a FASTA file into HDF5 (see the module docstring).

    Returns the summary: counts read / embedded / skipped (already in the output) / invalid by
    reason / long proteins processed alone, with rates. `after_batch(n)` runs after the n-th
    batch is written (used by tests to simulate an interruption).
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from prottrans_jax.fasta import FastaStats, read_fasta
    from prottrans_jax.vocab import normalize_sequence, prot_t5_vocabulary

    if not per_residue and not per_protein:
        raise ValueError("nothing to write: ask for per_residue and/or per_protein embeddings")
    on_cpu = jax.default_backend() == "cpu"
    dtype = dtype or default_dtype()
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype {dtype!r}: expected bfloat16, float16 or float32")
    max_tokens = max_tokens or DEFAULT_MAX_TOKENS["cpu" if on_cpu else "accelerator"]
    max_length = max_length or DEFAULT_MAX_LENGTH
    if max_tokens <= 0 or max_length <= 0:
        raise ValueError("max_tokens and max_length must be positive")
    # Fake host devices (XLA_FLAGS) bring no speed on CPU: use one there.
    devices = jax.local_devices()[:1] if on_cpu else jax.local_devices()
    mesh = Mesh(np.array(devices), ("data",))
    replicated, row_sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))

    # Read first: a FASTA error should not wait for a model to load.
    stats = FastaStats()
    proteins = [Protein(r.id, normalize_sequence(r.sequence)) for r in read_fasta(fasta_path, policy, stats)]
    names: dict[str, str] = {}
    for protein in proteins:
        if names.setdefault(protein.name, protein.id) != protein.id:
            raise ValueError(f"FASTA ids {names[protein.name]!r} and {protein.id!r} both become dataset "
                             f"{protein.name!r} ('/' is replaced by '_'); rename one")

    model = load_model(model_dir, hf_model, dtype, sharding=replicated)
    config = model.config
    check = {"model_fingerprint": model.fingerprint, "dtype": dtype, "d_model": config.d_model}
    attrs = {"model": model.name, "format_version": FORMAT_VERSION, "producer": "prottrans_jax.embed"}
    outputs: list[H5Output] = []
    if per_residue:
        outputs.append(H5Output(output_path, "per_residue", attrs, {**check, "embedding": "per_residue"}))
    if per_protein:
        path = per_protein_path(output_path) if per_residue else output_path
        outputs.append(H5Output(path, "per_protein", attrs, {**check, "embedding": "per_protein"}))
    done = set.intersection(*(o.existing for o in outputs))
    todo = [p for p in proteins if p.name not in done]
    batches = plan_batches(todo, max_tokens, max_length, row_multiple=len(devices),
                           steps_per_octave=4 if on_cpu else 2)
    vocabulary = prot_t5_vocabulary()
    storage = np.float32 if dtype == "float32" else np.float16

    encode = _encoder(config)
    summary = {"fasta": str(fasta_path), "outputs": [o.path for o in outputs], "model": model.name, "dtype": dtype,
               "devices": len(devices), "read": stats.read, "valid": stats.kept, "invalid": dict(stats.dropped),
               "skipped_existing": len(proteins) - len(todo), "embedded": 0, "residues_embedded": 0,
               "long_processed_alone": 0, "long_ids": [], "out_of_memory_ids": [], "batches": len(batches),
               "static_shapes": len({(b.rows, b.length) for b in batches}), "max_tokens": max_tokens,
               "max_length": max_length, "interrupted": False}
    bar = _progress_bar(len(todo), progress)
    start = time.perf_counter()

    def dispatch(batch: Batch):
        tokens, lengths = batch_tokens(batch, vocabulary)
        tokens, lengths = jax.device_put((tokens, lengths), row_sharded)
        return encode(model.params, tokens, lengths)

    def finish(batch: Batch, result) -> None:
        try:
            hidden, means = result
            hidden = np.asarray(hidden) if per_residue else None
            means = np.asarray(means)
        except Exception as err:  # XLA may report out-of-memory only when the result is awaited
            _skip_if_alone_and_out_of_memory(err, batch, summary, max_tokens)
            return
        for output in outputs:
            if output.kind == "per_residue":
                output.write((p, hidden[i, : len(p.sequence)].astype(storage)) for i, p in enumerate(batch.proteins))
            else:
                output.write((p, means[i]) for i, p in enumerate(batch.proteins))
        residues = sum(len(p.sequence) for p in batch.proteins)
        summary["embedded"] += len(batch.proteins)
        summary["residues_embedded"] += residues
        if batch.alone:
            summary["long_processed_alone"] += len(batch.proteins)
            summary["long_ids"].extend(p.id for p in batch.proteins)
        bar.update(len(batch.proteins))
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{summary['residues_embedded'] / elapsed:,.0f} residues/s", refresh=False)

    written = 0

    def finish_and_count(pending) -> None:
        nonlocal written
        finish(*pending)
        written += 1
        if after_batch is not None:
            after_batch(written)

    with _StopFlag() as flag:
        pending = None  # one batch in flight: the next is dispatched before the last is written
        try:
            for batch in batches:
                result = _dispatch_or_oom(dispatch, batch, summary, max_tokens)
                if pending is not None:
                    finish_and_count(pending)
                pending = (batch, result) if result is not None else None
                if flag.stop:
                    break
            if pending is not None:
                finish_and_count(pending)
        finally:
            bar.close()
    missing = len(todo) - summary["embedded"] - len(summary["out_of_memory_ids"])
    summary["interrupted"] = flag.stop and missing > 0
    seconds = time.perf_counter() - start
    summary.update(seconds=round(seconds, 3),
                   proteins_per_second=round(summary["embedded"] / max(seconds, 1e-9), 2),
                   residues_per_second=round(summary["residues_embedded"] / max(seconds, 1e-9), 1))
    return summary


@functools.lru_cache(maxsize=4)
def _encoder(config):
    """The jitted encoder for a config, kept so later calls in a process reuse its programs.

    Returns (hidden states in the compute dtype, float32 means over each row's residues).
    """
    import jax
    import jax.numpy as jnp

    from prottrans_jax.models.t5 import T5

    module = T5(config)

    @jax.jit
    def encode(params, tokens, lengths):
        hidden = module.apply({"params": params}, tokens, method=T5.encode)
        mask = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
        sums = jnp.einsum("bl,bld->bd", mask, hidden.astype(jnp.float32))
        return hidden, sums / jnp.maximum(lengths, 1)[:, None].astype(jnp.float32)

    return encode


def _dispatch_or_oom(dispatch, batch: Batch, summary: dict, max_tokens: int):
    """Starts a batch; a long protein that does not fit is reported instead of stopping the run."""
    try:
        return dispatch(batch)
    except Exception as err:
        _skip_if_alone_and_out_of_memory(err, batch, summary, max_tokens)
        return None


def _skip_if_alone_and_out_of_memory(err: Exception, batch: Batch, summary: dict, max_tokens: int) -> None:
    """Records a long protein that does not fit; a batch that does not fit stops the run."""
    if "RESOURCE_EXHAUSTED" not in str(err):
        raise err
    if not batch.alone:
        raise OutOfMemoryError(f"out of device memory on a batch of {batch.rows} x {batch.length} tokens: "
                               f"lower --max_tokens (now {max_tokens})") from err
    summary["out_of_memory_ids"].extend(p.id for p in batch.proteins)


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="protein", disable=not enabled, dynamic_ncols=True, smoothing=0.05)


# ------------------------------------------------------------------------------ command line


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m prottrans_jax.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", required=True, help="input FASTA (plain or gzip)")
    parser.add_argument("--output", required=True, help="output HDF5 file (resumed if it exists)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_dir", help="trainer MODEL_DIR")
    source.add_argument("--hf_model", help="local Hugging Face T5 directory")
    parser.add_argument("--per_residue", action="store_true", help="(length, d_model) per protein (default)")
    parser.add_argument("--per_protein", action="store_true", help="mean over residues, (d_model,)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="compute dtype (default: float32 on CPU, bfloat16 on accelerators)")
    parser.add_argument("--max_tokens", type=int, default=None,
                        help=f"padded tokens per batch (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--max_length", type=int, default=None,
                        help=f"longer proteins are embedded alone, never truncated (default {DEFAULT_MAX_LENGTH})")
    parser.add_argument("--policy", choices=("error", "skip"), default="error",
                        help="invalid FASTA records: stop (error) or drop and count (skip)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; prints the summary as one JSON line. Exit 0 done, 1 error, 2 interrupted."""
    args = parse_flags(sys.argv[1:] if argv is None else argv)
    per_residue = args.per_residue or not args.per_protein
    try:
        summary = embed_fasta_to_h5(args.fasta, args.output, model_dir=args.model_dir, hf_model=args.hf_model,
                                    per_residue=per_residue, per_protein=args.per_protein, dtype=args.dtype,
                                    max_tokens=args.max_tokens, max_length=args.max_length, policy=args.policy,
                                    progress=not args.no_progress)
    except (ValueError, OSError, OutOfMemoryError) as err:  # FastaError is a ValueError
        if args.debug:
            raise
        print(f"error: {_first_line(err)}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    if summary["out_of_memory_ids"]:
        print(f"warning: {len(summary['out_of_memory_ids'])} long proteins did not fit in device memory and "
              f"were not embedded: {', '.join(summary['out_of_memory_ids'][:5])}", file=sys.stderr)
    return 2 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
