"""One prepared accelerator run: every GPU figure of issue 13 in one call, one JSON file.

    python benchmarks/accelerator_suite.py --out $OUT/accelerator.json     # one H100/H200, <= 8 min
    python benchmarks/accelerator_suite.py --smoke --out /tmp/smoke.json    # the same paths, tiny, CPU

Measurements, in this order (each guarded: a failure is recorded and the rest still run;
one that would overrun `--budget_s` by its estimate is skipped, recorded; the JSON is
rewritten after each, so a run killed at its limit keeps what it measured):
- long_protein: one 35,213-residue protein (Swiss-Prot 2014's longest) through a ProtT5-XL-
  shaped encoder with chunked attention, via `inference.embed_sequences`: time, and peak
  device memory (`memory_stats()["peak_bytes_in_use"]`, first in the run so that the process
  peak is this one's; XLA's compiled memory analysis where the device keeps no statistics).
- device/matmul: an 8192^3 bf16 matrix product, the FLOP/s plain matmuls reach here, beside
  the datasheet peak that MFU divides by.
- t5_train: ProtT5 train step at base size (gin/models/t5/base.gin), 512 + 512 tokens,
  bfloat16 compute, AdamW: tokens/s and MFU (the model's `flops_per_batch` over the device's
  dense bf16 peak, `trainer.peak_flops_per_device`) with `xla`, `cudnn`, `chunked` and
  `pallas` attention, beside Hugging Face `T5ForConditionalGeneration` (bf16 autocast) on the same
  device and batch (benchmarks/train_throughput.py's two steps).
- embed: ProtT5-XL-shaped encoder over real proteins (a fixed sample of the bundled UniProtKB
  FASTA, long tail included) through `inference.embed_sequences` with `embed`'s default
  attention ("auto": xla up to max_length, chunked above) and, on a GPU, with cudnn for all
  (`embed --attention cudnn`, opt-in until measured here): residues/s and
  fraction of peak FLOP/s (useful FLOPs, real tokens), beside HF `T5EncoderModel` in float16
  with prott5_embedder.py's batching (benchmarks/embed_throughput.py's loop).
- bert_train: ProtBert (gin/models/bert/prot_bert.gin) train step, 512 tokens: MFU.
- long_protein/pallas (GPU): the 35,213-residue protein again through the fused Pallas kernel
  that computes T5's bias inside it (models/pallas_attention.py): time, and XLA's compiled
  memory analysis (the process peak is the first measurement's by then).

`--sections long_protein,t5_train,...` runs only those (the others are recorded as not
selected): a second call that measures what the first one's budget skipped.

Weights are random (speed only), dropout is off on both sides. Compilation is timed apart
from steady state: train steps report compile seconds and the median / min of `rounds`
timed rounds of `steps` steps; embeddings a cold pass (compiles) and warm passes. The JSON
records device kind, versions, date, the exact configs and batches, and the machine's load.
seqio and tensorflow are replaced by import stand-ins (benchmarks/import_stand_ins.py): the
accelerator image has neither and nothing timed here uses them. gin-config must be there
(README, "Accelerator run": its wheel travels); without it the JSON says so.
`--smoke` runs the same code paths with tiny gin configs, few steps, short proteins and a
2,048-residue "long" protein, in well under a minute on a CPU (tests/test_accelerator_suite.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Torch shares the GPU, and memory_stats' peak should be what the run used, not a preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path[:0] = [str(REPO), str(BENCHMARKS)]

import import_stand_ins  # noqa: E402

from prottrans_jax.errors import first_line  # noqa: E402  (imports nothing but sys)

SAMPLE = REPO / "data" / "sample" / "uniprot_sample.fasta.gz"
ATTENTION = ("xla", "cudnn", "chunked", "pallas")
GPU_ONLY = ("cudnn", "pallas")  # fused kernels for CUDA GPUs: recorded as skipped elsewhere
SECTIONS = ("long_protein", "device", "t5_train", "embed", "bert_train")
ATTENTION_SUMMARY = ("attention", "attention_short", "attention_long")  # what embed_sequences used
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"

# Sizes; `estimate_s` is a guess of each measurement's wall time on an H100/H200, for the budget.
FULL = {
    "t5_train": dict(gin="gin/models/t5/base.gin", batch=32, inputs_length=512, targets_length=512,
                     rounds=5, steps=5, estimate_s=70, hf_estimate_s=40),
    "embed": dict(gin="gin/models/t5/xl.gin", proteins=384, repeats=2, estimate_s=120, hf_estimate_s=45),
    "long_protein": dict(residues=35213, attention="chunked", estimate_s=90),
    "bert_train": dict(gin="gin/models/bert/prot_bert.gin", batch=32, length=512, rounds=5, steps=5,
                       estimate_s=75),
    "matmul": dict(n=8192, repeats=10, estimate_s=10),
    "budget_s": 440,
}
SMOKE = {  # tiny gin configs cut to one layer: the smoke run checks code paths, and compiling dominates it
    "t5_train": dict(gin="gin/models/t5/tiny.gin",  # 16-token tiles: chunked really tiles its 32 tokens
                     overrides=dict(num_encoder_layers=1, num_decoder_layers=1, attention_block_size=16), batch=2,
                     inputs_length=32, targets_length=32, rounds=2, steps=2, estimate_s=10, hf_estimate_s=5),
    "embed": dict(gin="gin/models/t5/tiny.gin", overrides=dict(num_encoder_layers=1), proteins=6, max_residues=31,
                  repeats=2, estimate_s=10, hf_estimate_s=5),
    "long_protein": dict(residues=2048, attention="chunked", estimate_s=10),  # 512-token tiles (the default)
    "bert_train": dict(gin="gin/models/bert/tiny.gin", overrides=dict(num_layers=1), batch=2, length=32, rounds=2,
                       steps=2, estimate_s=10),
    "matmul": dict(n=256, repeats=3, estimate_s=5),
    "budget_s": 600,
}


# ------------------------------------------------------------------------------ the run


class Run:
    """The JSON being written: one entry per measurement, rewritten after each."""

    def __init__(self, out: Path, budget_s: float, header: dict, sections: tuple[str, ...] | None = None):
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.sections = sections  # None: every section
        self.result = {**header, "budget_seconds": budget_s, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def measure(self, section: str, name: str, estimate_s: float, fn: Callable[[], dict]) -> dict:
        """Runs fn unless it would overrun the budget or its section was not selected; an
        exception is recorded, not raised."""
        if self.sections is not None and section not in self.sections:
            return self.record(section, name, {"skipped": "not selected (--sections)"})
        spent = self.elapsed()
        if spent + estimate_s > self.budget_s:
            return self.record(section, name, {"skipped": f"time budget: {spent:.0f} s spent + ~{estimate_s:.0f} s "
                                                          f"estimated > {self.budget_s:.0f} s"})
        load, start = os.getloadavg()[0], time.perf_counter()
        try:
            entry = fn()
        except Exception as err:  # one failure must not cost the run's other figures
            lines = traceback.format_exc().strip().splitlines()
            entry = {"error": f"{type(err).__name__}: {first_line(err, 500)}", "traceback_tail": lines[-6:]}
        entry.update(wall_seconds=round(time.perf_counter() - start, 2), load_average_1min=round(load, 2))
        return self.record(section, name, entry)

    def record(self, section: str, name: str, entry: dict) -> dict:
        self.result["sections"].setdefault(section, {})[name] = entry
        self.result["elapsed_seconds"] = round(self.elapsed(), 1)
        self.write()
        status = entry.get("skipped") or entry.get("error") or "ok"
        print(f"[{self.elapsed():6.1f} s] {section}/{name}: {status}", flush=True)
        return entry

    def why_not(self, section: str, name: str) -> str:
        """Why a measurement that needs what `section/name` builds cannot run: its skip reason,
        or that it failed."""
        return self.result["sections"][section][name].get("skipped") or f"{section}/{name} failed"

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text(json.dumps(self.result, indent=1, default=_jsonable))
        partial.replace(self.out)


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def spread(times: list[float]) -> dict:
    return {"median": round(statistics.median(times), 6), "min": round(min(times), 6), "rounds": len(times)}


# ------------------------------------------------------------------------------ configs


def with_attention(config: Any, implementation: str) -> Any:
    """The config with its attention implementation set; today's dense path is `xla`, so a
    config from before the field existed runs `xla` unchanged and nothing else."""
    if "attention_implementation" not in {f.name for f in dataclasses.fields(config)}:
        if implementation == "xla":
            return config
        raise RuntimeError(f"{type(config).__name__} has no attention_implementation field: "
                           f"{implementation!r} attention is not in this checkout")
    return dataclasses.replace(config, attention_implementation=implementation)


def gin_config(config_cls: type, gin_file: str, **overrides: Any) -> Any:
    from prottrans_jax.models.gin_utils import config_from_gin

    return dataclasses.replace(config_from_gin(config_cls, [gin_file]), **overrides)


def attention_fields(config: Any) -> dict:
    values = dataclasses.asdict(config)
    return {k: values[k] for k in ("attention_implementation", "attention_block_size") if k in values}


# ------------------------------------------------------------------------------ train steps


def train_step(model: Any, batch: dict, tokens: int, rounds: int, steps: int, peak: float | None) -> dict:
    """Our jitted step (train_throughput.Ours: compile + 2 warm-up steps, then timed rounds)."""
    import train_throughput

    ours = train_throughput.Ours(model, batch)
    times = [ours.time(steps) for _ in range(rounds)]
    median = statistics.median(times)
    result = {"step_seconds": spread(times), "tokens_per_step": tokens,
              "tokens_per_second": round(tokens / median, 1),
              "compile_and_first_step_seconds": round(ours.compile_seconds, 2),
              "model_flops_per_step": ours.flops, "mfu": _fraction(ours.flops / median, peak)}
    del ours
    gc.collect()
    return result


def hf_train_step(family: str, config: Any, batch: dict, tokens: int, rounds: int, steps: int, flops: float,
                  peak: float | None, device: str) -> dict:
    import train_throughput

    hf = train_throughput.HF(family, config, batch, device)  # builds, moves, 2 warm-up steps
    times = [hf.time(steps) for _ in range(rounds)]
    median = statistics.median(times)
    result = {"step_seconds": spread(times), "tokens_per_second": round(tokens / median, 1),
              "mfu": _fraction(flops / median, peak),
              "precision": "float32 parameters, torch.autocast bfloat16" if config.dtype == "bfloat16" else "float32"}
    del hf
    _free_torch(device)
    return result


def _fraction(flops_per_second: float, peak: float | None) -> float | None:
    return None if not peak else round(flops_per_second / peak, 4)


def t5_model(spec: dict):
    from prottrans_jax.models.encoder_decoder import EncoderDecoderModel
    from prottrans_jax.models.t5 import T5Config

    config = gin_config(T5Config, spec["gin"], dropout_rate=0.0, **spec.get("overrides", {}))
    return EncoderDecoderModel(config), config


def t5_train(t5: dict, spec: dict, implementation: str, peak: float | None) -> dict:
    from prottrans_jax.models.encoder_decoder import EncoderDecoderModel

    config = with_attention(t5["config"], implementation)
    return {"attention": attention_fields(config) or "xla",
            **train_step(EncoderDecoderModel(config), t5["batch"], t5["tokens"], spec["rounds"], spec["steps"], peak)}


def t5_batch(spec: dict) -> tuple[dict, int]:
    import train_throughput

    if spec["inputs_length"] != spec["targets_length"]:
        raise ValueError("train_throughput.t5_batch builds equal input and target lengths")
    batch = train_throughput.t5_batch(spec["batch"], spec["inputs_length"])
    return batch, spec["batch"] * (spec["inputs_length"] + spec["targets_length"])


def describe_train(spec: dict, config: Any) -> dict:
    return {"gin": spec["gin"], "overrides": spec.get("overrides", {}), "config": dataclasses.asdict(config),
            "batch": {k: spec[k] for k in spec if k in ("batch", "inputs_length", "targets_length", "length")},
            "rounds": spec["rounds"], "steps_per_round": spec["steps"],
            "optimizer": "AdamW lr 1e-4 wd 0.01 (optax.adamw / torch.optim.AdamW)", "dropout": 0.0}


# ------------------------------------------------------------------------------ embedding


class Encoders:
    """One random-weight encoder (parameters built once on the device), seen through any
    attention implementation: an `inference.InferenceModel` as `load_for_inference` returns."""

    def __init__(self, spec: dict, dtype: str):
        import jax

        from prottrans_jax import families
        from prottrans_jax.models.t5 import T5Config
        from prottrans_jax.partitioning import unbox_shapes

        # The embedding path's own overrides (inference.load_for_inference): no decoder.
        self.config = gin_config(T5Config, spec["gin"], num_decoder_layers=0, dropout_rate=0.0, dtype=dtype,
                                 param_dtype=dtype, remat_policy="none", scan_layers=True,
                                 **spec.get("overrides", {}))
        self.family = families.get("prot_t5")
        keys = self.family.make_encoder(self.config).param_keys
        start = time.perf_counter()
        abstract = unbox_shapes(self.family.pretrain_model(self.config).abstract_params())
        shapes = {k: abstract[k] for k in keys}
        self.params = jax.block_until_ready(jax.jit(lambda rng: random_like(shapes, rng))(jax.random.key(0)))
        self.init_seconds = round(time.perf_counter() - start, 2)
        self.parameters = int(sum(x.size for x in jax.tree.leaves(self.params)))
        self.dtype, self.gin = dtype, spec["gin"]

    def model(self, implementation: str):
        from prottrans_jax import inference

        config = with_attention(self.config, implementation)
        return inference.InferenceModel(self.family, self.family.make_encoder(config), self.params,
                                        self.family.default_vocabulary(), "random weights", "random", self.dtype)

    def hf_shape(self) -> dict:
        c = self.config
        return dict(d_model=c.d_model, num_heads=c.num_heads, d_kv=c.head_dim, d_ff=c.d_ff,
                    num_layers=c.num_encoder_layers)

    def describe(self) -> dict:
        return {"gin": self.gin, "config": dataclasses.asdict(self.config), "parameters": self.parameters,
                "init_seconds": self.init_seconds, "weights": "random (speed only)"}


def random_like(abstract: Any, rng: Any) -> Any:
    """N(0, 0.02) weights and unit norm scales shaped like `abstract`: random weights without
    compiling the model's own initialiser (which would build the decoder too)."""
    import jax
    import jax.numpy as jnp

    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract)
    keys = jax.random.split(rng, len(leaves))

    def fill(path, a, key):
        if str(getattr(path[-1], "key", "")) == "scale":
            return jnp.ones(a.shape, a.dtype)
        return (0.02 * jax.random.normal(key, a.shape)).astype(a.dtype)

    return tree.unflatten([fill(path, a, key) for (path, a), key in zip(leaves, keys)])


def sample_proteins(spec: dict) -> list:
    """A fixed random sample of the bundled FASTA (embed_throughput's reservoir); with
    `max_residues` (smoke), a fixed sample of the proteins that short."""
    import random

    from embed_throughput import sample_proteins as reservoir

    from prottrans_jax.inference import Protein
    from prottrans_jax.vocab import normalize_sequence

    cap = spec.get("max_residues")
    if cap is None:
        pool = reservoir(SAMPLE, spec["proteins"])
    else:
        short = [p for p in reservoir(SAMPLE, 10**6) if len(p[1]) <= cap]
        pool = random.Random(0).sample(short, min(spec["proteins"], len(short)))
    return [Protein(i, normalize_sequence(s)) for i, s in pool]


def embed_pass(model: Any, proteins: list, attention: str) -> tuple[float, dict]:
    """One `embed_sequences` pass (`attention`: its choice, "auto" as `embed` runs by default)."""
    from prottrans_jax.inference import embed_sequences

    summary: dict = {}
    start = time.perf_counter()
    for _ in embed_sequences(model, proteins, summary=summary, attention=attention):
        pass
    return time.perf_counter() - start, summary


def embed_ours(encoders: Encoders, spec: dict, proteins: list, peak: float | None, attention: str = "auto") -> dict:
    from embed_throughput import encoder_flops

    from prottrans_jax.inference import inference_devices

    model = encoders.model("xla")  # `attention` picks per batch, as `embed --attention` does
    lengths = [len(p.sequence) for p in proteins]
    cold, summary = embed_pass(model, proteins, attention)
    if summary["embedded"] != len(proteins):
        raise RuntimeError(f"embedded {summary['embedded']} of {len(proteins)} proteins "
                           f"(out of memory: {summary['out_of_memory_ids'][:3]})")
    warm = [embed_pass(model, proteins, attention)[0] for _ in range(spec["repeats"])]
    median = statistics.median(warm)
    flops = encoder_flops("t5", encoders.hf_shape(), lengths)
    devices = len(inference_devices())  # embedding is data parallel over every local device
    return {"model": encoders.describe(), "attention": {k: summary[k] for k in ATTENTION_SUMMARY},
            "fasta": str(SAMPLE.relative_to(REPO)), "proteins": len(proteins), "residues": sum(lengths),
            "length_median": int(statistics.median(lengths)), "length_max": max(lengths),
            "batches": summary["batches"], "static_shapes": summary["static_shapes"],
            "max_tokens": summary["max_tokens"], "max_length": summary["max_length"],
            "long_processed_alone": summary["long_processed_alone"],
            "cold_seconds": round(cold, 3), "warm_seconds": spread(warm),
            "residues_per_second": round(sum(lengths) / median, 1), "useful_flops": flops, "devices": devices,
            "fraction_of_peak_flops": _fraction(flops / median, peak and peak * devices)}


def embed_hf(encoders: Encoders, spec: dict, proteins: list, device: str) -> dict:
    import torch
    import transformers
    from embed_throughput import hf_embed

    from prottrans_jax.convert import t5 as t5_convert

    half = device == "cuda"
    config = transformers.T5Config(vocab_size=encoders.config.vocab_size, feed_forward_proj="relu",
                                   dropout_rate=0.0, num_decoder_layers=0, **encoders.hf_shape())
    with tempfile.TemporaryDirectory() as tmp:
        t5_convert.write_tokenizer(tmp)
        tokenizer = transformers.T5Tokenizer.from_pretrained(tmp)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.T5EncoderModel(config).eval()
    if half:
        model = model.half()
    pairs = [(p.id, p.sequence) for p in proteins]
    hf_embed(model, tokenizer, pairs[:8], 0, device)  # warm-up: CUDA context, kernels
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        hf_embed(model, tokenizer, pairs, 0, device)
        times.append(time.perf_counter() - start)
    del model
    _free_torch(device)
    residues = sum(len(p.sequence) for p in proteins)
    return {"dtype": "float16" if half else "float32",
            "batching": "prott5_embedder.py (benchmarks/embed_throughput.py)",
            "seconds": spread(times), "residues_per_second": round(residues / statistics.median(times), 1)}


def long_protein(encoders: Encoders, spec: dict, attention: str, device_peak: bool = True) -> dict:
    """One long random protein embedded alone with `attention`. `device_peak`: memory from the
    device's peak statistics (only meaningful for the process's first measurement), else
    from XLA's compiled memory analysis."""
    import jax
    import numpy as np

    from prottrans_jax import inference

    rng = np.random.default_rng(0)
    sequence = "".join(rng.choice(list(AMINO_ACIDS), spec["residues"]))
    protein = inference.Protein(f"random_{spec['residues']}", sequence)
    model = encoders.model(attention)
    device = jax.local_devices()[0]
    stats_before = device.memory_stats()
    cold, summary = embed_pass(model, [protein], attention)
    if summary["embedded"] != 1:
        raise RuntimeError(f"not embedded (out of memory: {summary['out_of_memory_ids']})")
    warm, _ = embed_pass(model, [protein], attention)
    stats = device.memory_stats() if device_peak else None
    result = {"model": encoders.describe(), "attention": {k: summary[k] for k in ATTENTION_SUMMARY},
              "residues": spec["residues"], "sequence": "random residues (seed 0)",
              "processed_alone": summary["long_processed_alone"] == 1,
              "cold_seconds": round(cold, 3), "warm_seconds": round(warm, 3),
              "residues_per_second_warm": round(spec["residues"] / warm, 1)}
    if stats and "peak_bytes_in_use" in stats:
        result["peak_bytes_in_use"] = stats["peak_bytes_in_use"]
        result["peak_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 3)
        result["peak_before_bytes"] = (stats_before or {}).get("peak_bytes_in_use")
        result["peak_source"] = "device memory_stats (process peak; this is the run's first measurement)"
    else:
        result.update(compiled_memory(model, protein))
    return result


def compiled_memory(model: Any, protein: Any) -> dict:
    """XLA's compiled memory analysis of the program embed runs for this protein alone."""
    import jax
    import jax.numpy as jnp

    from prottrans_jax import inference

    framing = model.encoder.framing(model.vocabulary)
    (batch,) = inference.plan_batches([protein], inference.DEFAULT_MAX_TOKENS["cpu"], inference.DEFAULT_MAX_LENGTH,
                                      steps_per_octave=4 if jax.default_backend() == "cpu" else 2,
                                      special_tokens=len(framing[0]) + len(framing[1]))
    tokens = jax.ShapeDtypeStruct((batch.rows, batch.length), jnp.int32)
    lengths = jax.ShapeDtypeStruct((batch.rows,), jnp.int32)
    analysis = inference._encode_fn(model.encoder, framing).lower(model.params, tokens, lengths).compile()
    stats = analysis.memory_analysis()
    peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes)
    return {"padded_length": batch.length, "peak_bytes_in_use": int(peak), "peak_gib": round(peak / 2**30, 3),
            "peak_source": "XLA compiled memory analysis (arguments + outputs + temporaries - aliased)",
            "argument_bytes": int(stats.argument_size_in_bytes), "temp_bytes": int(stats.temp_size_in_bytes)}


# ------------------------------------------------------------------------------ the machine


def matmul_ceiling(spec: dict, peak: float | None) -> dict:
    """An n x n x n bf16 matrix product (3 warm-ups, then `repeats` timed): the FLOP/s this
    device reaches on plain matmuls, beside the datasheet peak MFU is measured against."""
    import jax
    import jax.numpy as jnp

    n = spec["n"]
    a, b = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in jax.random.split(jax.random.key(0)))
    product = jax.jit(jnp.matmul)
    for _ in range(3):
        product(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(spec["repeats"]):
        out = product(a, b)
    out.block_until_ready()
    seconds = (time.perf_counter() - start) / spec["repeats"]
    flops = 2 * n**3 / seconds
    return {"n": n, "dtype": "bfloat16", "repeats": spec["repeats"], "seconds": round(seconds, 6),
            "tflops_per_second": round(flops / 1e12, 2), "fraction_of_peak_flops": _fraction(flops, peak)}



def hf_device(backend: str) -> tuple[str | None, str | None]:
    """(torch device for the HF side, None) or (None, why it cannot run beside ours)."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as err:
        return None, f"unavailable ({err})"
    if backend == "gpu":
        return ("cuda", None) if torch.cuda.is_available() else (None, "unavailable (torch has no CUDA here)")
    if backend == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        return "cpu", None
    return None, f"unavailable (JAX runs on {backend}; the comparison needs torch on the same device)"


def _free_torch(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def versions() -> dict:
    import importlib.metadata

    found = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "gin-config", "torch", "transformers"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def header(args: argparse.Namespace, stand_ins: list[str]) -> dict:
    return {"suite": "accelerator_suite", "mode": "smoke" if args.smoke else "full", "argv": sys.argv[1:],
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                     "load_average_1min_start": round(os.getloadavg()[0], 2)},
            "versions": versions(), "import_stand_ins": stand_ins,
            "weights": "random everywhere (speed only; no figure here depends on trained values)"}


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU, well under a minute")
    parser.add_argument("--budget_s", type=float, default=None, help="default: 440 (full), 600 (smoke)")
    parser.add_argument("--attention", default=",".join(ATTENTION), help="T5 train-step implementations")
    parser.add_argument("--long_attention", default=None, help="default: chunked")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="which sections run (default all); the others are recorded as not selected")
    parser.add_argument("--peak_flops", type=float, default=None,
                        help="peak FLOP/s per device for MFU (default: trainer.peak_flops_per_device)")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.long_attention:
        sizes = {**sizes, "long_protein": {**sizes["long_protein"], "attention": args.long_attention}}
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; expected some of {SECTIONS}")
    run = Run(Path(args.out), args.budget_s or sizes["budget_s"], header(args, import_stand_ins.install()), sections)
    try:
        import gin  # noqa: F401
    except ImportError as err:
        for section in ("long_protein", "t5_train", "embed", "bert_train"):
            run.record(section, "all", {"skipped": f"gin-config is not installed ({err}): carry its wheel "
                                                   "(README, 'Accelerator run')"})
        return 0

    import jax

    from prottrans_jax.trainer import peak_flops_per_device

    backend, device = jax.default_backend(), jax.devices()[0]
    peak = args.peak_flops or peak_flops_per_device(device)
    hf_on, hf_why = hf_device(backend)
    run.result.update(backend=backend, device_kind=device.device_kind, device_count=jax.device_count(),
                      peak_flops_per_device=peak,
                      peak_flops_source="--peak_flops" if args.peak_flops else "trainer.peak_flops_per_device",
                      hf_device=hf_on or hf_why, sizes=sizes)
    run.write()
    embed_dtype = "float32" if backend == "cpu" else "bfloat16"
    encoders: dict[str, Encoders] = {}

    def xl() -> Encoders:  # built once, shared by long_protein and embed
        if "xl" not in encoders:
            encoders["xl"] = Encoders(sizes["embed"], embed_dtype)
        return encoders["xl"]

    # 1. The long protein first: the process's memory peak is then its own. Then the
    # device's plain-matmul ceiling, beside the datasheet peak.
    long_spec, matmul_spec = sizes["long_protein"], sizes["matmul"]
    run.measure("long_protein", long_spec["attention"], long_spec["estimate_s"],
                lambda: long_protein(xl(), long_spec, long_spec["attention"]))
    run.measure("device", "matmul", matmul_spec["estimate_s"], lambda: matmul_ceiling(matmul_spec, peak))

    # 2. ProtT5 base train step: xla, then HF beside it, the other implementations after embed.
    t5_spec, t5 = sizes["t5_train"], {}

    def t5_setup() -> dict:
        t5["model"], t5["config"] = t5_model(t5_spec)
        t5["batch"], t5["tokens"] = t5_batch(t5_spec)
        t5["flops"] = t5["model"].flops_per_batch(t5["batch"])
        return {**describe_train(t5_spec, t5["config"]), "model_flops_per_step": t5["flops"],
                "tokens_per_step": t5["tokens"]}

    run.measure("t5_train", "setup", 5, t5_setup)
    implementations = [i for i in args.attention.split(",") if i]

    def t5_measure(implementation: str) -> None:
        if "config" not in t5:
            run.record("t5_train", implementation, {"skipped": run.why_not("t5_train", "setup")})
        elif implementation in GPU_ONLY and backend != "gpu":
            run.record("t5_train", implementation, {"skipped": gpu_only(implementation, backend)})
        else:
            run.measure("t5_train", implementation, t5_spec["estimate_s"],
                        lambda: t5_train(t5, t5_spec, implementation, peak))

    for implementation in implementations[:1]:
        t5_measure(implementation)
    if not hf_on or "config" not in t5:
        run.record("t5_train", "hf", {"skipped": f"hf: {hf_why}" if not hf_on else run.why_not("t5_train", "setup")})
    else:
        run.measure("t5_train", "hf", t5_spec["hf_estimate_s"], lambda: {
            "model": "transformers.T5ForConditionalGeneration", "device": hf_on,
            **hf_train_step("t5", t5["config"], t5["batch"], t5["tokens"], t5_spec["rounds"], t5_spec["steps"],
                            t5["flops"], peak, hf_on)})

    # 3. Embedding throughput, ours then HF's route.
    embed_spec, proteins = sizes["embed"], []

    def embed_measure() -> dict:
        proteins.extend(sample_proteins(embed_spec))
        return embed_ours(xl(), embed_spec, proteins, peak)

    run.measure("embed", "ours", embed_spec["estimate_s"], embed_measure)
    if backend != "gpu":
        run.record("embed", "ours_cudnn", {"skipped": gpu_only("cudnn", backend)})
    elif not proteins:
        run.record("embed", "ours_cudnn", {"skipped": run.why_not("embed", "ours")})
    else:
        run.measure("embed", "ours_cudnn", embed_spec["estimate_s"],
                    lambda: embed_ours(xl(), embed_spec, proteins, peak, attention="cudnn"))
    if not hf_on or not proteins:
        run.record("embed", "hf", {"skipped": f"hf: {hf_why}" if not hf_on else run.why_not("embed", "ours")})
    else:
        run.measure("embed", "hf", embed_spec["hf_estimate_s"], lambda: {
            "model": "transformers.T5EncoderModel", "device": hf_on, **embed_hf(xl(), embed_spec, proteins, hf_on)})
    encoders.clear()
    gc.collect()

    # 4. The other attention implementations of the T5 step.
    for implementation in implementations[1:]:
        t5_measure(implementation)

    # 5. ProtBert's train step.
    bert_spec = sizes["bert_train"]
    run.measure("bert_train", "xla", bert_spec["estimate_s"], lambda: bert_train(bert_spec, peak))

    # 6. The long protein through the fused Pallas kernel (T5's bias computed in it).
    if long_spec["attention"] != "pallas":
        if backend != "gpu":
            run.record("long_protein", "pallas", {"skipped": gpu_only("pallas", backend)})
        else:
            run.measure("long_protein", "pallas", long_spec["estimate_s"],
                        lambda: long_protein(xl(), long_spec, "pallas", device_peak=False))

    add_ratios(run.result["sections"])
    run.result["host"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    run.record("summary", "targets", targets(run.result["sections"]))
    return 0


def gpu_only(implementation: str, backend: str) -> str:
    return f"{implementation} attention runs only on a GPU backend ({backend} here)"


def bert_train(spec: dict, peak: float | None) -> dict:
    import train_throughput

    from prottrans_jax.models.bert import BertConfig, BertMLMModel

    config = gin_config(BertConfig, spec["gin"], hidden_dropout_prob=0.0, attention_dropout_prob=0.0,
                        **spec.get("overrides", {}))
    batch = train_throughput.bert_batch(spec["batch"], spec["length"])
    return {**describe_train(spec, config), "attention": attention_fields(config) or "xla",
            **train_step(BertMLMModel(config), batch, spec["batch"] * spec["length"], spec["rounds"], spec["steps"],
                         peak)}


def add_ratios(sections: dict) -> None:
    """Speed-ups over Hugging Face, where both sides were measured (HF's time / ours)."""
    train = sections.get("t5_train", {})
    hf = train.get("hf", {}).get("step_seconds")
    for name, entry in train.items():
        if hf and name in ATTENTION and "step_seconds" in entry:
            entry["speedup_vs_hf"] = round(hf["median"] / entry["step_seconds"]["median"], 3)
    embed = sections.get("embed", {})
    for name in ("ours", "ours_cudnn"):
        if "seconds" in embed.get("hf", {}) and "warm_seconds" in embed.get(name, {}):
            ours, hf_seconds = embed[name]["warm_seconds"]["median"], embed["hf"]["seconds"]["median"]
            embed[name]["speedup_vs_hf"] = round(hf_seconds / ours, 3)


def targets(sections: dict) -> dict:
    """Issue 13's targets, as measured in this run (None: not measured)."""
    xla = sections.get("t5_train", {}).get("xla", {})
    embed = sections.get("embed", {}).get("ours", {})
    best = [e["mfu"] for n, e in sections.get("t5_train", {}).items() if n in ATTENTION and e.get("mfu")]
    return {"t5_train_mfu_best (target >= 0.40)": max(best) if best else None,
            "t5_train_xla_speedup_vs_hf (target >= 2)": xla.get("speedup_vs_hf"),
            "embed_speedup_vs_hf_fp16 (target >= 3)": embed.get("speedup_vs_hf")}


if __name__ == "__main__":
    sys.exit(main())
