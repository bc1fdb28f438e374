"""Embedding proteins in memory, for any family: load a model, batch, run, collect.

    model = load_for_inference(hf_model="path/to/prot_bert")      # or model_dir=...
    for done in embed_sequences(model, [Protein("p1", "MKTAYIAK"), ...]):
        done.batch.proteins, done.per_residue, done.means

The family's `Encoder` (prottrans_jax.families) frames each protein (ProtT5: residues `</s>`;
ProtBert: `[CLS]` residues `[SEP]`) and only the residues' hidden states come back. The
HDF5 command (`prottrans_jax.embed`) and the evaluation (`prottrans_jax.downstream`) are
both shells around `embed_sequences`.

Throughput: proteins are sorted by length (longest first, so memory limits show at once)
and batched under a token budget (padded tokens per batch) in static shape buckets (lengths
on a grid of 2 steps per octave on accelerators, 4 on CPU; batch rows a fixed count per
bucket, or a power of two for a bucket's last batch), so XLA compiles a bounded number of
programs. One batch is in flight while the previous one is collected. All local
accelerators are used, data parallel. Proteins longer than `max_length` residues are never
truncated: each is processed alone (one per device); one that runs out of device memory is
skipped and reported by id.

Attention (`attention`, models/dot_product_attention.py): "auto" embeds the proteins up to
`max_length` with "xla" and each longer one with "chunked", whose memory grows linearly with
length, so a 35,213-residue protein fits where the dense scores would need hundreds of GiB;
"xla", "chunked", "cudnn" or "pallas" (the fused kernels: CUDA GPUs; opt-in until their GPU
tests have run) use one for all.
A family without chunked attention would keep "xla" under "auto" (every family has it now;
XLNet's and Transformer-XL's tiles compute the relative shift: models/relative_scores.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prottrans_jax import families, model_dir as model_dir_lib
from prottrans_jax.errors import UserError
from prottrans_jax.models.dot_product_attention import IMPLEMENTATIONS, check_available
from prottrans_jax.shapes import next_power_of_two, round_up
from prottrans_jax.vocab import ProteinVocabulary

DEFAULT_MAX_LENGTH = 1000  # prott5_embedder.py: longer sequences are embedded one at a time
DEFAULT_MAX_TOKENS = {"cpu": 4096, "accelerator": 16384}
DTYPES = ("bfloat16", "float16", "float32")
ATTENTION_CHOICES = ("auto", *IMPLEMENTATIONS)
FINGERPRINT_VALUES_PER_ARRAY = 4096


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
    length: int  # static token dimension (>= every framed sequence)
    alone: bool  # longer than max_length: one protein per row, one row per device


@dataclasses.dataclass
class InferenceModel:
    family: families.Family
    encoder: Any  # the family's Encoder
    params: Any
    vocabulary: ProteinVocabulary
    name: str  # the directory it came from
    fingerprint: str  # changes when the weights change (checked on resume, keys caches)
    dtype: str

    @property
    def d_model(self) -> int:
        return int(self.encoder.width)


# ------------------------------------------------------------------------------ models


def default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load_for_inference(model_dir: str | None = None, hf_model: str | None = None,
                       dtype: str | None = None, sharding=None, part: str | None = None) -> InferenceModel:
    """The encoder, its parameters (cast to `dtype`) and vocabulary, from a MODEL_DIR or an
    HF directory of any registered family; `part`: which of the family's encoder parts
    (ELECTRA: discriminator, the default, or generator)."""
    if (model_dir is None) == (hf_model is None):
        raise UserError("give exactly one of model_dir / hf_model")
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r}: expected one of {DTYPES}")
    overrides = dict(dtype=dtype, param_dtype=dtype, remat_policy="none")
    if model_dir is not None:
        stored = model_dir_lib.read_model(model_dir, **overrides)
        encoder = stored.family.make_encoder(stored.config, part)
        params, _ = model_dir_lib.restore_params(model_dir, stored, encoder.param_keys, sharding=sharding)
        family, vocabulary, source = stored.family, stored.vocabulary, model_dir
    else:
        from prottrans_jax.convert.hf_dir import load_hf_dir

        # Scanned layers: XLA compiles one layer body instead of one per layer, per bucket.
        loaded = load_hf_dir(hf_model, inference=True, part=part,
                             **{**overrides, "param_dtype": "float32", "scan_layers": True})
        config = dataclasses.replace(loaded.config, param_dtype=dtype)
        encoder = loaded.family.make_encoder(config, loaded.part)
        params = {key: loaded.params[key] for key in encoder.param_keys}
        params = jax.tree.map(lambda x: jax.device_put(jnp.asarray(x, dtype), sharding), params)
        family, vocabulary, source = loaded.family, loaded.vocabulary, hf_model
    return InferenceModel(family, encoder, params, vocabulary, os.path.abspath(source),
                          fingerprint(params), dtype)


def fingerprint(params: Any) -> str:
    """A short hash of the weights: every array's path, shape and an evenly spaced sample of
    its values, so any trained layer changes it without hashing gigabytes."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                             key=lambda item: jax.tree_util.keystr(item[0])):
        flat = jnp.ravel(leaf)
        stride = max(1, flat.size // FINGERPRINT_VALUES_PER_ARRAY)
        sample = np.asarray(jax.device_get(flat[::stride]), np.float32)
        digest.update(f"{jax.tree_util.keystr(path)}{tuple(leaf.shape)}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def with_attention(encoder: Any, implementation: str) -> Any:
    """The same encoder running `implementation`; UserError where its family has none."""
    if encoder.config.attention_implementation == implementation:
        return encoder
    return dataclasses.replace(encoder, config=dataclasses.replace(encoder.config,
                                                                   attention_implementation=implementation))


def attention_plan(model: InferenceModel, attention: str = "auto") -> dict[str, str]:
    """{"attention": the request, "attention_short": the implementation for proteins up to
    max_length, "attention_long": for the longer ones, embedded alone}; a one-line UserError
    for an unknown choice or one that cannot run here (cudnn or pallas without a CUDA GPU)."""
    if attention not in ATTENTION_CHOICES:
        raise UserError(f"--attention {attention!r}: expected one of {ATTENTION_CHOICES}")
    if attention == "auto":
        # cudnn and pallas only on request: their GPU equality tests (benchmarks/gpu_tests.py)
        # have not yet run on a GPU, and an untested fused kernel is no default.
        short, long = "xla", "chunked"
    else:
        check_available(attention, model.dtype)
        short = long = attention
    plan = {}
    for key, implementation in (("attention_short", short), ("attention_long", long)):
        try:
            with_attention(model.encoder, implementation)
        except UserError:
            if attention != "auto":
                raise
            implementation = "xla"  # the family has only dense attention
        plan[key] = implementation
    return {"attention": attention, **plan}


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
                 steps_per_octave: int = 2, special_tokens: int = 1) -> list[Batch]:
    """Sorted, bucketed batches: every batch's padded tokens fit max_tokens (bar long proteins).

    `special_tokens`: how many framing ids each protein gets beside its residues.
    """
    ordered = sorted(proteins, key=lambda p: (-len(p.sequence), p.id))
    batches: list[Batch] = []
    long = [p for p in ordered if len(p.sequence) > max_length]
    for i in range(0, len(long), row_multiple):  # one long protein per device
        group = tuple(long[i:i + row_multiple])
        length = bucket_length(len(group[0].sequence) + special_tokens, steps_per_octave)
        batches.append(Batch(group, row_multiple, length, alone=True))
    groups: dict[int, list[Protein]] = {}
    for protein in ordered[len(long):]:
        length = bucket_length(len(protein.sequence) + special_tokens, steps_per_octave)
        groups.setdefault(length, []).append(protein)
    for length in sorted(groups, reverse=True):
        members = groups[length]
        full = max(row_multiple, (max_tokens // length) // row_multiple * row_multiple)
        for i in range(0, len(members), full):
            chunk = tuple(members[i:i + full])
            rows = full if len(chunk) == full else min(full, round_up(next_power_of_two(len(chunk)), row_multiple))
            batches.append(Batch(chunk, rows, length, alone=False))
    return batches


def batch_tokens(batch: Batch, vocabulary: ProteinVocabulary,
                 framing: tuple[Sequence[int], Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (rows, length) int32, each protein framed and padded, residue counts (rows,))."""
    prefix, suffix = framing
    tokens = np.full((batch.rows, batch.length), vocabulary.pad_id, np.int32)
    lengths = np.zeros((batch.rows,), np.int32)
    for row, protein in enumerate(batch.proteins):
        ids = [*prefix, *vocabulary.encode(protein.sequence), *suffix]
        tokens[row, : len(ids)] = ids
        lengths[row] = len(protein.sequence)
    return tokens, lengths


# ------------------------------------------------------------------------------ embedding


@dataclasses.dataclass
class Embedded:
    """One batch's results, in its proteins' order."""

    batch: Batch
    per_residue: list[np.ndarray] | None  # (length, d_model) each, compute dtype
    means: np.ndarray  # (proteins, d_model) float32, over residues only


def _new_summary(model: InferenceModel, max_tokens: int, max_length: int, devices: int) -> dict:
    return {"model": model.name, "family": model.family.name, "dtype": model.dtype,
            "devices": devices, "embedded": 0, "residues_embedded": 0, "long_processed_alone": 0,
            "long_ids": [], "out_of_memory_ids": [], "batches": 0, "static_shapes": 0,
            "max_tokens": max_tokens, "max_length": max_length}


def inference_devices() -> list:
    """Local accelerators; one device on CPU (fake host devices bring no speed there)."""
    return jax.local_devices()[:1] if jax.default_backend() == "cpu" else jax.local_devices()


def replicated_sharding() -> NamedSharding:
    return NamedSharding(Mesh(np.array(inference_devices()), ("data",)), PartitionSpec())


def embed_sequences(model: InferenceModel, proteins: Sequence[Protein], *,
                    max_tokens: int | None = None, max_length: int | None = None,
                    per_residue: bool = True, summary: dict | None = None, attention: str = "auto",
                    should_stop: Callable[[], bool] = lambda: False) -> Iterator[Embedded]:
    """Embeds `proteins`, one batch at a time (longest first); counts go to `summary`;
    `attention` as the module docstring says (the implementations used go to `summary`).

    `should_stop()` is asked after each batch is handed over (SIGTERM, Ctrl-C): the batch in
    flight is finished first, so nothing is cut short.
    """
    on_cpu = jax.default_backend() == "cpu"
    max_tokens = DEFAULT_MAX_TOKENS["cpu" if on_cpu else "accelerator"] if max_tokens is None else max_tokens
    max_length = DEFAULT_MAX_LENGTH if max_length is None else max_length
    if max_tokens <= 0 or max_length <= 0:
        raise UserError(f"max_tokens and max_length must be positive, got {max_tokens} and {max_length}")
    plan = attention_plan(model, attention)
    devices = inference_devices()
    row_sharded = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))
    framing = model.encoder.framing(model.vocabulary)
    batches = plan_batches(proteins, max_tokens, max_length, row_multiple=len(devices),
                           steps_per_octave=4 if on_cpu else 2,
                           special_tokens=len(framing[0]) + len(framing[1]))
    summary = summary if summary is not None else {}
    summary.update({k: v for k, v in _new_summary(model, max_tokens, max_length, len(devices)).items()
                    if k not in summary})
    summary["batches"] += len(batches)
    summary["static_shapes"] = len({(b.rows, b.length) for b in batches})
    summary.update(plan)
    encoders = {alone: _encode_fn(with_attention(model.encoder, plan[key]), framing)
                for alone, key in ((False, "attention_short"), (True, "attention_long"))}

    def dispatch(batch: Batch):
        tokens, lengths = jax.device_put(batch_tokens(batch, model.vocabulary, framing), row_sharded)
        return encoders[batch.alone](model.params, tokens, lengths)

    def collect(batch: Batch, result) -> Embedded | None:
        try:
            hidden, means = result
            hidden = np.asarray(hidden) if per_residue else None
            means = np.asarray(means)
        except Exception as err:  # XLA may report out-of-memory only when the result is awaited
            _skip_if_alone_and_out_of_memory(err, batch, summary, max_tokens)
            return None
        start = len(framing[0])
        rows = None if hidden is None else [hidden[i, start:start + len(p.sequence)]
                                            for i, p in enumerate(batch.proteins)]
        summary["embedded"] += len(batch.proteins)
        summary["residues_embedded"] += sum(len(p.sequence) for p in batch.proteins)
        if batch.alone:
            summary["long_processed_alone"] += len(batch.proteins)
            summary["long_ids"].extend(p.id for p in batch.proteins)
        return Embedded(batch, rows, means[: len(batch.proteins)])

    pending = None  # one batch in flight: the next is dispatched before the last is collected
    for batch in batches:
        result = _dispatch_or_oom(dispatch, batch, summary, max_tokens)
        if pending is not None:
            done = collect(*pending)
            if done is not None:
                yield done
        pending = (batch, result) if result is not None else None
        if should_stop():
            break
    if pending is not None:
        done = collect(*pending)
        if done is not None:
            yield done


@functools.lru_cache(maxsize=8)
def _encode_fn(encoder, framing: tuple[tuple[int, ...], tuple[int, ...]]):
    """The jitted encoder, kept so later calls in a process reuse its programs.

    Returns (hidden states in the compute dtype, float32 means over each row's residues).
    """
    before, framed = len(framing[0]), len(framing[0]) + len(framing[1])

    @jax.jit
    def encode(params, tokens, lengths):
        index = jnp.arange(tokens.shape[1])[None, :]
        valid = index < (lengths + framed)[:, None]
        residues = (index >= before) & (index < (lengths + before)[:, None])
        hidden = encoder.hidden_states(params, tokens, valid)
        mask = residues.astype(jnp.float32)
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
