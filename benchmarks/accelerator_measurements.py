"""What the accelerator run measures: each function builds one model, batch or sample, or
times one measurement and returns its JSON entry (benchmarks/accelerator_suite.py runs them,
guards them against failures and the time budget, and writes the JSON).

jax, torch and the project's models are imported inside the functions: by then the suite has
put its stand-ins for seqio and tensorflow in place (import_stand_ins.py).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "uniprot_sample.fasta.gz"
ATTENTION_SUMMARY = ("attention", "attention_short", "attention_long")  # what embed_sequences used
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


# ------------------------------------------------------------------------------ configs


def spread(times: list[float]) -> dict:
    return {"median": round(statistics.median(times), 6), "min": round(min(times), 6), "rounds": len(times)}


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


def bert_train(spec: dict, peak: float | None) -> dict:
    import train_throughput

    from prottrans_jax.models.bert import BertConfig, BertMLMModel

    config = gin_config(BertConfig, spec["gin"], hidden_dropout_prob=0.0, attention_dropout_prob=0.0,
                        **spec.get("overrides", {}))
    batch = train_throughput.bert_batch(spec["batch"], spec["length"])
    return {**describe_train(spec, config), "attention": attention_fields(config) or "xla",
            **train_step(BertMLMModel(config), batch, spec["batch"] * spec["length"], spec["rounds"], spec["steps"],
                         peak)}


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


def _free_torch(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
