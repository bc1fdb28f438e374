"""Memory of embedding the longest Swiss-Prot protein (35,213 residues): dense vs chunked attention.

    python benchmarks/long_protein_memory.py            # compile only: XLA's memory analysis
    python benchmarks/long_protein_memory.py --run      # a real CPU run with a tiny encoder

Default mode: the program `embed` runs for one protein of that length (the jitted encoder of
`prottrans_jax.inference`, the padded length of its shape bucket) with a ProtT5-XL-shaped
encoder (gin/models/t5/xl.gin: 24 layers, d_model 1024, 32 heads x 128, d_ff 16384, ReLU as
released; `--feed_forward gated-gelu` for T5 1.1's), lowered from ShapeDtypeStructs and
compiled on this machine's backend, never run: peak device memory = arguments + outputs +
temporaries - aliased, from `compiled.memory_analysis()`. Parameters are passed in the compute
dtype (as `embed` casts them). For bfloat16 and float32, attention "xla" (dense) and
"chunked" (`--block_size`). On CPU the bfloat16 figure includes float32 copies of the weights
and matmul operands that XLA's CPU backend makes (it has no bfloat16 matmul; its buffer
assignment shows f32[24,16384,1024] and the like), so `bfloat16_accelerator_estimate_gib` is
half the float32 figure: the same program at two bytes a value.

`--run`: a tiny T5 encoder (2 layers, d_model 64, 4 heads x 16, random weights) embeds the
protein through `inference.embed_sequences` (auto: chunked above max_length) in float32 on
CPU; the time, and the largest difference between chunked and dense on the protein's first
`--dense_residues` residues (where dense still fits), are reported.

The protein: Swiss-Prot 2014_01 from Debian's metastudent-data (blastdbcmd from ncbi-blast+),
the longest entry; when those are not installed, the bundled sample's proteins concatenated to
that length (said so in the output: `protein_source`). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LENGTH = 35_213  # the longest protein of Swiss-Prot 2014_01 (/work/shared/ARCHITECTURE.md)
METASTUDENT = Path("/usr/share/metastudent-data/dataset_201401")
SAMPLE = REPO / "data" / "sample" / "uniprot_sample.fasta.gz"
GIB = 2**30


# ------------------------------------------------------------------------------ the protein


def longest_swissprot_protein() -> tuple[str, str, str] | None:
    """(accession, sequence, source) of the longest metastudent-data entry, or None."""
    database = METASTUDENT / "CCO" / "goasp.fasta"
    try:
        lines = subprocess.run(["blastdbcmd", "-db", str(database), "-entry", "all", "-outfmt", "%l %t %s"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    _, title, sequence = max((line.split() for line in lines if line.strip()), key=lambda item: int(item[0]))
    return title.split("|")[0], sequence, f"Swiss-Prot 2014_01 (Debian metastudent-data, {database.parent.name})"


def sample_concatenated(length: int) -> tuple[str, str, str]:
    """The bundled sample's proteins joined until `length` residues: a real composition, not
    a real protein (used only when metastudent-data is not installed)."""
    from prottrans_jax.fasta import read_fasta

    parts, total = [], 0
    for record in read_fasta(str(SAMPLE)):
        parts.append(record.sequence)
        total += len(record.sequence)
        if total >= length:
            break
    return "sample_concatenated", "".join(parts)[:length], f"{SAMPLE.name} concatenated (not a real protein)"


def the_protein() -> tuple[str, str, str]:
    found = longest_swissprot_protein()
    return found if found is not None else sample_concatenated(LENGTH)


# ------------------------------------------------------------------------------ memory


def xl_config(dtype: str, attention: str, block_size: int, feed_forward: str):
    from prottrans_jax.models.gin_utils import config_from_gin
    from prottrans_jax.models.t5 import T5Config

    return config_from_gin(T5Config, ["gin/models/t5/xl.gin"], [
        f"T5Config.dtype = '{dtype}'", f"T5Config.param_dtype = '{dtype}'", "T5Config.dropout_rate = 0.0",
        f"T5Config.feed_forward = '{feed_forward}'", f"T5Config.attention_implementation = '{attention}'",
        f"T5Config.attention_block_size = {block_size}"])


def compiled_memory(config, length: int) -> dict:
    """XLA's memory analysis of `embed`'s program for one row of `length` tokens."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from prottrans_jax import inference
    from prottrans_jax.models.encoder_decoder import T5Encoder
    from prottrans_jax.models.t5 import abstract_variables
    from prottrans_jax.vocab import prot_t5_vocabulary

    encoder = T5Encoder(config)
    params = nn.unbox(abstract_variables(config, encoder_only=True))["params"]
    params = {key: params[key] for key in encoder.param_keys}
    encode = inference._encode_fn(encoder, encoder.framing(prot_t5_vocabulary()))
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    start = time.perf_counter()
    compiled = encode.lower(params, tokens, lengths).compile()
    stats = compiled.memory_analysis()
    weights = sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(params))
    peak = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - \
        stats.alias_size_in_bytes
    return {"peak_gib": round(peak / GIB, 2), "weights_gib": round(weights / GIB, 2),
            "temp_gib": round(stats.temp_size_in_bytes / GIB, 2),
            "output_gib": round(stats.output_size_in_bytes / GIB, 2),
            "compile_seconds": round(time.perf_counter() - start, 1)}


def memory_report(args) -> dict:
    import jax

    from prottrans_jax import inference

    padded = inference.bucket_length(LENGTH + 1, 4 if jax.default_backend() == "cpu" else 2)  # + </s>
    report = {"residues": LENGTH, "padded_tokens": padded, "backend": jax.default_backend(),
              "model": f"ProtT5-XL-shaped encoder (gin/models/t5/xl.gin), feed_forward {args.feed_forward}",
              "block_size": args.block_size, "memory": {}}
    for dtype in args.dtypes.split(","):
        for attention in ("xla", "chunked"):
            config = xl_config(dtype, attention, args.block_size, args.feed_forward)
            report["memory"][f"{dtype}/{attention}"] = compiled_memory(config, padded)
            print(f"{dtype}/{attention}: {report['memory'][f'{dtype}/{attention}']}", file=sys.stderr)
    if "float32/chunked" in report["memory"] and jax.default_backend() == "cpu":
        # XLA's CPU backend has no bfloat16 matmul: it converts the bf16 weights (and matmul
        # operands) to float32 copies, which its bf16 figure counts and an accelerator's would
        # not. The float32 program is the same program at twice the bytes per value.
        report["bfloat16_accelerator_estimate_gib"] = round(report["memory"]["float32/chunked"]["peak_gib"] / 2, 2)
    return report


# ------------------------------------------------------------------------------ real run


def tiny_model(block_size: int):
    import jax
    import jax.numpy as jnp

    from prottrans_jax import families, inference
    from prottrans_jax.models.encoder_decoder import T5Encoder
    from prottrans_jax.models.t5 import T5, T5Config
    from prottrans_jax.vocab import prot_t5_vocabulary

    config = T5Config(d_model=64, num_heads=4, head_dim=16, d_ff=128, num_encoder_layers=2, num_decoder_layers=0,
                      dropout_rate=0.0, dtype="float32", attention_block_size=block_size)
    encoder = T5Encoder(config)
    variables = T5(config).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32), method=T5.encode)
    params = {key: variables["params"][key] for key in encoder.param_keys}
    return inference.InferenceModel(families.get("prot_t5"), encoder, params, prot_t5_vocabulary(),
                                    "tiny T5 encoder (2 layers, d_model 64, 4 heads x 16), random",
                                    inference.fingerprint(params), "float32")


def embed_one(model, protein, attention: str, max_length: int):
    import numpy as np

    from prottrans_jax import inference

    summary = {}
    start, cpu = time.perf_counter(), time.process_time()
    (done,) = list(inference.embed_sequences(model, [protein], max_length=max_length, summary=summary,
                                             attention=attention))
    summary["cpu_seconds"] = round(time.process_time() - cpu, 1)  # wall time means little on a busy machine
    return np.asarray(done.per_residue[0]), time.perf_counter() - start, summary


def run_report(args) -> dict:
    import numpy as np

    from prottrans_jax import inference
    from prottrans_jax.vocab import normalize_sequence

    accession, sequence, source = the_protein()
    protein = inference.Protein(accession, normalize_sequence(sequence))
    model = tiny_model(args.block_size)
    whole, seconds, summary = embed_one(model, protein, "auto", max_length=1000)
    prefix = dataclasses.replace(protein, sequence=protein.sequence[:args.dense_residues])
    chunked, chunked_seconds, _ = embed_one(model, prefix, "chunked", max_length=1000)
    dense, dense_seconds, _ = embed_one(model, prefix, "xla", max_length=1000)
    return {"protein": accession, "protein_source": source, "residues": len(protein.sequence),
            "model": model.name, "block_size": args.block_size,
            "attention": {k: summary[k] for k in ("attention", "attention_short", "attention_long")},
            "whole_seconds": round(seconds, 1), "whole_cpu_seconds": summary["cpu_seconds"],
            "whole_shape": list(whole.shape),
            "whole_finite": bool(np.isfinite(whole).all()),
            "dense_check_residues": len(prefix.sequence), "chunked_seconds": round(chunked_seconds, 1),
            "dense_seconds": round(dense_seconds, 1),
            "max_abs_diff_chunked_vs_dense": float(np.abs(chunked - dense).max()),
            "max_abs_value": float(np.abs(dense).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="a real CPU run with a tiny encoder")
    parser.add_argument("--block_size", type=int, default=512, help="chunked attention tile")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="memory mode: compute dtypes")
    parser.add_argument("--feed_forward", default="relu", choices=("relu", "gated-gelu"))
    parser.add_argument("--dense_residues", type=int, default=6000, help="--run: the dense comparison's prefix")
    args = parser.parse_args()
    os.chdir(REPO)  # gin includes are repository-relative
    report = run_report(args) if args.run else memory_report(args)
    report.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs", load=list(os.getloadavg()),
                  date=time.strftime("%Y-%m-%d"))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
